"""History page: runs made in the browser are still listed, and reopen with the same numbers,
after the server is restarted. (Runs last: it restarts the main server.)"""
from __future__ import annotations

import re

import pytest

from browser_harness import DATASET_PAIRS, QUADRANTS, SWEEP_S, UI_S, assert_same_cells, finish
from patchcore.sweeps import SWEEPS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(SWEEP_S + 300)]


def test_history_lists_runs_after_restart(demo, shared, dataset_run, server, open_session):
    # close the sessions that made the runs (checking them), then restart the server process
    finish(demo.session)
    finish(shared.session)
    finish(dataset_run.session)
    old_pid = server.proc.pid
    server.restart()
    assert server.proc.pid != old_pid

    s = open_session(server)
    s.goto("/")
    s.open_page("^History$")
    s.main.get_by_role("heading", name="History", exact=True).wait_for()
    text = s.main.inner_text()
    assert "No stored runs yet" not in text, (
        "the History page lists no runs after a restart, although this server ran a Patching sweep "
        "before it")
    m = re.search(r"(\d+) of (\d+) runs", text)
    assert m and int(m.group(2)) >= 1, text

    # reopen the Patching run (capital preset, noising): its heatmap has the numbers it had
    s.main.get_by_role("combobox", name="Open run").click()
    options = s.page.get_by_role("option").all_inner_texts()
    # titles are in words: "Residual stream, layer × position, noising, logit difference – <prompt>"
    wanted = [o for o in options if "noising" in o and SWEEPS["layer_pos"].title in o
              and ("capital" in o.lower() or "france" in o.lower())]
    assert wanted, f"no stored run looks like the Patching run (noise, layer_pos): {options}"
    s.page.get_by_role("option", name=wanted[0], exact=True).click()
    s.settle()
    s.wait_for_heatmap(SWEEP_S)
    assert_same_cells(s.cell_records(), shared.cells)
    s.assert_clean("on the History page")
    s.screenshot("history")

    # the 50-pair dataset run (both directions) reopens too: same means, quadrant view back
    s.main.get_by_role("combobox", name="Open run").click()
    options = s.page.get_by_role("option").all_inner_texts()
    wanted = [o for o in options if f"IOI ×{DATASET_PAIRS}" in o]
    assert wanted, f"the dataset run is not listed: {options}"
    s.page.get_by_role("option", name=wanted[0], exact=True).click()
    s.settle()
    s.main.get_by_role("heading", name=QUADRANTS).wait_for(timeout=UI_S * 1000)
    s.wait_for_heatmap(SWEEP_S, min_cells=len(dataset_run.cells))
    # three heatmaps share cell keys (denoise, noise, quadrants): compare every drawn cell's label
    assert sorted(c["label"] for c in s.cell_records()) == sorted(c["label"] for c in dataset_run.cells)
    s.assert_clean("after reopening the dataset run")
    assert not server.tracebacks(), server.tracebacks()
