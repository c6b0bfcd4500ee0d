"""The hypothesis check in a real browser (issue 12's "done when"): on the demo pair's head
heatmap select three heads by clicking them, press "Test these together" and read both scores."""
from __future__ import annotations

import re
import urllib.parse

import pytest

from browser_harness import SWEEP_S, UI_S, click_cell
from patchcore.history import History

pytestmark = pytest.mark.browser

HEADS = "Attention heads, layer × head"
N_LAYERS, N_HEADS = 30, 9
TAGS = '[data-testid="stMultiSelect"] [data-tag]'


def chips(s) -> list[str]:
    """The selection's chips (the multiselect's tags, each with a remove button), in order."""
    return s.main.locator(TAGS).evaluate_all("es => es.map(e => e.getAttribute('aria-label'))")


def metric_value(s, label: str) -> str:
    m = s.main.locator('[data-testid="stMetric"]').filter(has_text=label).first
    m.wait_for(timeout=UI_S * 1000)
    return m.locator('[data-testid="stMetricValue"]').inner_text().strip()


def pct(text: str) -> float:
    return float(text.replace("−", "-").rstrip("%"))


def test_select_three_heads_and_test_them_together(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Patching$")
    s.choose("What to patch", HEADS)
    s.button("Run").click()
    s.wait_for_heatmap(SWEEP_S, min_cells=N_LAYERS * N_HEADS)
    records = s.cell_records()
    assert len(records) == N_LAYERS * N_HEADS
    # the three heads that restore most on their own (denoising: the highest raw logit difference)
    top = sorted(records, key=lambda r: -r["value"])[:3]
    picked = [f"head:{r['layer']}.{r['head']}" for r in top]
    for n, r in enumerate(top, 1):
        click_cell(s, layer=r["layer"], head=r["head"])
        s.page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length >= n",
                                 arg=[TAGS, n], timeout=UI_S * 1000)
        s.settle()
    assert chips(s) == picked
    for site in picked:   # each chip can be removed
        assert s.main.get_by_role("button", name=f"Remove {site}", exact=True).count() == 1
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(s.page.url).query)
    assert query["sites"] == [",".join(picked)] and query["sweep"] == ["head"]

    s.button("Test these together").click()
    enough, needed = metric_value(s, "Enough?"), metric_value(s, "Needed?")
    s.settle()
    text = s.main.inner_text()
    # README: on the demo pair the three strongest heads bring back 105 % together and corrupting
    # them leaves 12 %: enough, and needed
    assert pct(enough) == pytest.approx(105, abs=3) and pct(needed) == pytest.approx(12, abs=3), (enough, needed)
    assert re.search(rf"Together they bring back {re.escape(enough)} of the clean behaviour: they are enough", text)
    assert re.search(rf"Corrupting them leaves {re.escape(needed)} of the clean behaviour", text)
    assert "In short: these 3 sites are enough on their own" in text
    rest = metric_value(s, "The rest without them")
    # the page's numbers are the stored runs' (the server's history), one run per question
    history = History(server.extra_env["PATCHCORE_HISTORY_DB"])   # shared by this run's browser tests
    records = [history.get(r.id) for r in sorted(history.list(kind="patch"), key=lambda r: r.id)]
    ours = [r for r in records if r.settings.get("page") == "hypothesis" and r.settings.get("sites") == picked]
    stored = {r.settings["check"]: r.open() for r in ours[-3:]}
    assert set(stored) == {"sufficiency", "necessity", "complement"}
    for name, shown in (("sufficiency", enough), ("necessity", needed), ("complement", rest)):
        assert stored[name].sites == picked
        assert pct(shown) == pytest.approx(stored[name].normalized * 100, abs=0.51), name
    s.assert_clean("after testing three heads together")
    s.screenshot("hypothesis")

    # the selection goes to the Paths page as senders
    s.button("Send to the Paths page as senders").click()
    s.page.wait_for_function("() => window.location.pathname.endsWith('/Paths')", timeout=UI_S * 1000)
    s.settle()
    assert s.main.get_by_role("textbox", name="Senders", exact=True).input_value() == ",".join(picked)
    s.assert_clean("on the Paths page with the selection as senders")
