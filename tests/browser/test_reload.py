"""Runs survive a reload (issue 16, point 5): a reload or a second tab of the same browser finds
its run (progress, Cancel, result); Streamlit's Stop cancels; a closed tab's run is cancelled,
frees the model and is not stored."""
from __future__ import annotations

import re
import time
from urllib.parse import urlencode

import pytest

from browser_harness import SWEEP_S, UI_S

pytestmark = [pytest.mark.browser, pytest.mark.timeout(4 * SWEEP_S)]

# Heads x positions on a 36-token pair that differs at its first token (so no position is
# skipped as unchanged): 9,720 patches, minutes on 2 cores - long enough to reload, stop or
# leave mid-run. (The demo pair's 4,320 patches now take about 14 s, less than the grace
# period a closed tab's run gets.)
_TAIL = " after a long walk through the busy streets of the old town and a short rest by the quiet river,"
HEADS = "/Patching?" + urlencode({
    "sweep": "head_pos",
    "clean": "After John and Mary went to the store" + _TAIL + " Mary gave a bottle of milk to",
    "corrupted": "Before John and Mary went to the store" + _TAIL + " Mary gave a bottle of milk to"})
N_PATCHES = 30 * 36 * 9
CANCELLED = re.compile(r"^The run was cancelled")
GRACE_S = 15                           # ui.jobs.GRACE_S
STOP_CHECK_S = 3                       # ui.jobs.STOP_CHECK_S


def start(s, path: str = HEADS) -> None:
    s.goto(path)
    s.button("Run").click()
    s.main.get_by_role("button", name="Cancel", exact=True).wait_for()
    s.page.wait_for_timeout(1500)


def progress(s) -> str:
    bar = s.main.locator('[data-testid="stProgress"]')
    bar.wait_for(timeout=UI_S * 1000)
    return bar.inner_text()


def stored_runs(server, browser, tmp_path) -> int:
    from browser_harness import Session
    h = Session(browser, server, tmp_path)
    try:
        h.goto("/History")
        text = h.main.inner_text()
        if "No stored runs yet" in text:
            return 0
        return int(re.search(r"(\d+) of (\d+) runs", text).group(2))
    finally:
        h.close()


def test_a_reload_finds_its_run_and_cancel_still_works(server, open_session):
    s = open_session(server)
    start(s)
    before = progress(s)
    s.page.reload()                                    # a new Streamlit session, the same browser
    s.page.locator('[data-testid="stApp"]').wait_for()
    after = progress(s)
    assert re.search(rf"Patching: \d+ of {N_PATCHES} patches", after), after
    print(f"progress before the reload: {before!r}; after: {after!r}")
    s.main.get_by_role("button", name="Cancel", exact=True).click()
    s.main.get_by_text(CANCELLED).wait_for(timeout=SWEEP_S * 1000)
    s.settle()
    s.assert_clean("after cancelling a reloaded run")


def test_a_second_tab_and_a_reload_show_the_result(server, open_session):
    s = open_session(server)
    start(s, "/Patching?sweep=layer")                   # 30 patches: the run ends while we look
    tab = s.context.new_page()                          # a new tab of the same browser
    tab.goto(s.page.url)
    tab.locator('[data-testid="stMain"] [data-testid="stProgress"], '
                '[data-testid="stMain"] [data-testid="stVegaLiteChart"]').first.wait_for(timeout=UI_S * 1000)
    s.page.reload()
    s.wait_for_heatmap(SWEEP_S)
    assert s.main.get_by_role("heading", name="What this shows").count() == 1
    tab.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]').first.wait_for(timeout=SWEEP_S * 1000)
    tab.close()
    s.assert_clean("after a reload")


def test_streamlit_stop_cancels_the_run(server, open_session):
    s = open_session(server)
    start(s)
    s.page.get_by_role("button", name="Stop").first.click()
    # A rerun stops the running script too (Streamlit's fast reruns), so a stopped script counts
    # as Stop only if its session starts nothing new within ui.jobs.STOP_CHECK_S: wait past it
    s.page.wait_for_timeout((STOP_CHECK_S + 2) * 1000)
    deadline = time.monotonic() + SWEEP_S
    while True:   # the page is stopped: nothing redraws it until the next click
        s.page.wait_for_timeout(2000)
        s.main.get_by_role("radio", name="Noise (corrupted → clean)").check(force=True)
        s.settle(SWEEP_S)
        if s.main.get_by_text(CANCELLED).count():
            break
        assert time.monotonic() < deadline, s.main.inner_text()[-800:]
    assert "Stop button" in s.main.get_by_text(CANCELLED).inner_text()
    s.assert_clean("after Stop")


def test_a_closed_tab_frees_the_model_and_stores_nothing(server, open_session, browser, tmp_path):
    stored = stored_runs(server, browser, tmp_path)
    s = open_session(server)
    start(s)
    s.close()                                            # the browser goes away mid-run
    t0 = time.monotonic()
    other = open_session(server)                         # another user's quick run gets the model
    other.goto("/Patching?sweep=layer")
    other.button("Run").click()
    other.wait_for_heatmap(SWEEP_S)
    freed = time.monotonic() - t0
    print(f"a closed tab's run let the model go after {freed:.0f} s")
    assert freed < GRACE_S + 120, freed                  # the grace period, one batch, one small run
    assert stored_runs(server, browser, tmp_path) == stored + 1   # only the other user's run is stored
    other.assert_clean("after a closed tab")
