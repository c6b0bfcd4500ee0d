"""Two browser sessions running different sweeps at the same time on one server (one shared model,
one lock) each get exactly the numbers they got when they ran alone (issue 6)."""
from __future__ import annotations

import time

import pytest

from browser_harness import SWEEP_S, UI_S, assert_same_cells, assert_same_table, read_csv

pytestmark = [pytest.mark.browser, pytest.mark.timeout(3 * SWEEP_S)]


def test_two_sessions_at_once_get_their_own_numbers(demo, shared, server, open_session):
    # the references: each experiment run alone earlier on this server
    alone_demo, alone_shared = demo.csv, shared.csv

    a = open_session(server)      # session A: the landing page's demo (IOI, denoise, 480 patches)
    b = open_session(server)      # session B: the shared link (capital, noise, 240 patches)
    a.goto("/")
    b.goto(shared.link)
    a.page.get_by_role("button", name="Run demo", exact=True).click()
    b.button("Run").click()

    # both runs are in flight at the same moment (each shows its progress and a Cancel button)
    deadline = time.monotonic() + UI_S
    while True:
        running = [s.main.get_by_role("button", name="Cancel", exact=True).count() > 0 for s in (a, b)]
        if all(running):
            break
        assert time.monotonic() < deadline, f"the two runs never ran at the same time: {running}"
        time.sleep(0.2)

    b.wait_for_heatmap(SWEEP_S * 2)
    a.wait_for_heatmap(SWEEP_S * 2)
    got_demo = read_csv(a.download("CSV"))
    got_shared = read_csv(b.download("CSV"))
    diffs = (assert_same_table(got_demo, alone_demo), assert_same_table(got_shared, alone_shared))
    print("concurrent vs alone: largest differences %.2g (demo), %.2g (shared link)" % diffs)
    assert_same_cells(a.cell_records(), demo.cells)
    assert_same_cells(b.cell_records(), shared.cells)
    a.assert_clean("in session A")
    b.assert_clean("in session B")
    assert not server.tracebacks(), server.tracebacks()
