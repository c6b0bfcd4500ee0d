"""Issue 15 in a real browser: the Circuit page runs circuit discovery on the default dataset (8
IOI pairs, EAP-IG with 5 steps, K = 50), draws the graph and the faithfulness curve, the K slider
redraws both, and a click on a node opens its numbers."""
from __future__ import annotations

import re
import time
import urllib.parse

import pytest

from browser_harness import CHART, SWEEP_S, UI_S, PlaywrightTimeout
from patchcore.circuit_faith import log_grid

pytestmark = [pytest.mark.browser, pytest.mark.timeout(SWEEP_S + 300)]

NODES = f'{CHART} svg g.mark-symbol path[aria-label*="node: "]'
EDGES = f'{CHART} svg g.mark-rule [aria-label*="; rank: "]'
CURVE = f'{CHART} svg g.mark-symbol path[aria-label*="from: run"]'
K_RULE = f'{CHART} svg g.mark-rule [aria-label*="K: "]'
K_LABEL = "Circuit size K (the strongest edges)"


def labels(s, selector: str) -> list[str]:
    return s.page.locator(selector).evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")


def wait_count(s, selector: str, want: int, timeout: float = UI_S) -> None:
    deadline = time.monotonic() + timeout
    while s.page.locator(selector).count() != want:
        assert time.monotonic() < deadline, f"{selector}: {s.page.locator(selector).count()} drawn, want {want}"
        s.page.wait_for_timeout(250)


def slider(s, label: str):
    return s.main.locator(f'input[type="range"][aria-label="{label}"]')


def set_slider(s, label: str, value: int) -> None:
    """Move a Streamlit slider with the keyboard, as a user can, until it shows `value`."""
    thumb = slider(s, label)
    thumb.focus()
    for _ in range(200):
        now = int(thumb.input_value())
        if now == value:
            break
        thumb.press("ArrowLeft" if now > value else "ArrowRight")
    s.settle()
    assert int(slider(s, label).input_value()) == value


def test_circuit_page_draws_graph_and_curve(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Circuit$")
    s.main.get_by_role("heading", name="Circuit", exact=True).wait_for()
    text = s.main.inner_text()
    assert "What is a circuit, an edge, faithfulness?" in text
    s.main.get_by_text("Estimated time").wait_for(timeout=UI_S * 1000)     # the model loads first
    assert re.search(r"Pairs\s+8", s.main.inner_text())
    assert slider(s, K_LABEL).input_value() == "50"

    t0 = time.monotonic()
    s.button("Find the circuit").click()
    try:
        s.page.locator(NODES).first.wait_for(timeout=SWEEP_S * 1000)
    except PlaywrightTimeout:
        pytest.fail(f"no circuit graph within {SWEEP_S:.0f} s:\n{s.main.inner_text()[-1500:]}\n"
                    f"{s.error_boxes()}\n{s.server.log_tail(30)}", pytrace=False)
    s.settle(SWEEP_S)
    print(f"circuit on 8 IOI pairs (EAP-IG, 5 steps): {time.monotonic() - t0:.0f} s from click to graph")

    # the graph: 50 edges between nodes placed by layer, input and logits among them
    wait_count(s, EDGES, 50)
    nodes = labels(s, NODES)
    names = [re.search(r"node: ([^;]+)", a).group(1) for a in nodes]
    assert "logits" in names and any(n.startswith("head:") for n in names), names
    edge = labels(s, EDGES)[0]
    assert re.search(r"rank: 1; from: \S+; to: \S+; score: [+\u2212-]\d", edge), edge
    # the curve: its points, and K marked at 50 with the faithfulness the page states
    points = labels(s, CURVE)
    assert len(points) >= 5, points
    assert labels(s, K_RULE) and "K: 50;" in labels(s, K_RULE)[0], labels(s, K_RULE)
    text = s.main.inner_text()
    m = re.search(r"Faithfulness of the top 50 edges\s+(-?\d+\.\d\d)", text)
    assert m, text[:2000]
    assert "Stored as run" in text and "What this shows" in text
    s.assert_clean("after the circuit run")

    # the K slider redraws both charts; its value goes into the address bar. The next size down
    # on the curve (the run measured it) shows its faithfulness at once
    k = max(x for x in log_grid(70_651, 16, [50]) if x < 50)
    set_slider(s, K_LABEL, k)
    wait_count(s, EDGES, k)
    assert f"K: {k};" in labels(s, K_RULE)[0], labels(s, K_RULE)
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(s.page.url).query).get("c_k") == [str(k)]
    assert re.search(rf"Faithfulness of the top {k} edges\s+-?\d+\.\d\d", s.main.inner_text())

    # a click on an edge opens its score (and the exact value where it was checked)
    s.page.mouse.move(0, 0)
    for i in range(10):
        edge = s.page.locator(EDGES).nth(i)
        edge.evaluate("e => e.scrollIntoView({block: 'center', inline: 'center'})")
        b = edge.bounding_box()
        x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
        on_top = s.page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.getAttribute('aria-label') || ''", [x, y])
        if "; rank: " in on_top:       # the middle of this edge is not under a node or another edge
            break
    rank = re.search(r"; rank: (\d+); from: (\S+); to: (\S+);", on_top)
    assert rank, on_top
    s.page.mouse.click(x, y)
    s.page.get_by_text(f"Selected edge: {rank.group(2)} → {rank.group(3)}").wait_for(timeout=UI_S * 1000)
    s.settle()
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(s.page.url).query).get("c_sel") == [f"edge:{rank.group(1)}"]

    # a click on a head opens its numbers
    target = next(a for a in labels(s, NODES) if re.search(r"node: head:\d+\.\d+;", a))
    name = re.search(r"node: ([^;]+)", target).group(1)
    node = s.page.locator(f'{NODES}[aria-label*="node: {name};"]').first
    node.evaluate("e => e.scrollIntoView({block: 'center', inline: 'center'})")
    box = node.bounding_box()
    assert box and box["width"] > 2, box
    s.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    s.page.get_by_text(f"Selected node: {name}").wait_for(timeout=UI_S * 1000)
    s.settle()
    detail = s.main.inner_text()
    assert "edges in the circuit" in detail and "|score| out" in detail
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(s.page.url).query).get("c_sel") == [name]
    s.assert_clean("after clicking an edge and a node")
    s.screenshot("circuit")


QUICK_LINK = "/Circuit?c_n=2&c_method=eap&c_points=4&c_check=2&c_k=12"


def edge_table(s) -> list[str]:
    """rank, from, to and score (3 decimals) of every drawn edge."""
    return sorted(re.search(r"rank: .*?score: \S+", a).group(0) for a in labels(s, EDGES))


def run_from_link(s, link: str) -> list[str]:
    s.goto(link)
    s.main.get_by_text("Estimated time").wait_for(timeout=UI_S * 1000)
    assert s.main.get_by_role("radio", name="EAP (one gradient)").is_checked()
    assert slider(s, K_LABEL).input_value() == "12"
    assert re.search(r"Pairs\s+2", s.main.inner_text())
    s.button("Find the circuit").click()
    s.page.locator(NODES).first.wait_for(timeout=SWEEP_S * 1000)
    s.settle(SWEEP_S)
    wait_count(s, EDGES, 12)
    return edge_table(s)


@pytest.mark.timeout(2 * SWEEP_S + 300)
def test_circuit_link_reproduces_on_a_fresh_server(server, server_factory, open_session):
    """The address bar holds the circuit's settings: opened on a freshly started server, one click
    draws the same circuit (same edges, same scores to 3 decimals)."""
    first = run_from_link(open_session(server), QUICK_LINK)
    fresh = server_factory("circuit-fresh")
    s = open_session(fresh)
    assert run_from_link(s, QUICK_LINK) == first
    s.assert_clean("on the fresh server")
    assert not fresh.tracebacks(), fresh.tracebacks()
