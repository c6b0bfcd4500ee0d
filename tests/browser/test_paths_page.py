"""The Paths page in a real browser (issue 14's "done when"): pick `logits`, run the head sweep,
see the heatmap, its summary and the senders → receivers graph; the CSV holds the heatmap."""
from __future__ import annotations

import re

import pytest

from browser_harness import CHART, SWEEP_S, read_csv

pytestmark = pytest.mark.browser

N_LAYERS, N_HEADS = 30, 9


def test_paths_page_head_sweep_to_the_logits(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Paths$")
    s.main.get_by_role("heading", name="Paths", exact=True).wait_for()
    s.pick("The logits: the direct path")
    assert s.main.get_by_role("radio", name="All heads, one at a time", exact=True).is_checked()
    text = s.main.inner_text()
    assert "acts on the answer directly" in text          # what the choice means, in words
    assert re.search(r"Paths\s+270", text) and re.search(r"Forward rows\s+272", text), text   # cost first

    s.button("Run").click()
    s.wait_for_heatmap(SWEEP_S, min_cells=N_LAYERS * N_HEADS)
    s.main.get_by_role("heading", name="What this shows").wait_for()
    records = s.cell_records()
    assert {(r["layer"], r["head"]) for r in records} == {(l, h) for l in range(N_LAYERS) for h in range(N_HEADS)}
    heat = s.main.locator(CHART).filter(has_text="Path patching").first
    assert "logits" in heat.inner_text()
    text = s.main.inner_text()
    assert "• Path patching: each cell is one sender's effect through logits (the direct path" in text
    assert "• Heads that act on the answer directly: head 23.3" in text, text
    strongest = max(records, key=lambda r: r["value"])   # denoising: the highest logit difference restores most
    assert (strongest["layer"], strongest["head"]) == (23, 3)

    # the small graph: the strongest senders, one edge each to the logits
    graph = s.main.locator(CHART).filter(has_text="Senders → receivers").first
    graph.wait_for()
    edges = graph.locator('g.mark-rule line[aria-label*="sender"]')   # not the axis' rules
    assert edges.count() == 6, graph.inner_html()[:3000]
    assert all("receiver: logits" in a for a in edges.evaluate_all("es => es.map(e => e.getAttribute('aria-label'))"))
    assert graph.locator('g.mark-symbol path[aria-label*="node"]').count() == 7   # 6 senders + the logits
    assert "head 23.3" in graph.inner_text() and "logits" in graph.inner_text()

    # exports: the CSV holds the heatmap's cells and numbers
    csv = read_csv(s.download("CSV"))
    assert len(csv) == N_LAYERS * N_HEADS
    shown = {(r["layer"], r["head"]): r["value"] for r in records}
    assert max(abs(shown[(row.layer, row.head)] - row.value) for row in csv.itertuples()) < 6e-4
    s.assert_clean("after the path sweep")
    s.screenshot("paths")
