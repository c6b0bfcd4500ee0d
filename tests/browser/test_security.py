"""A dashboard served to other machines, visited with a real browser (issue #17):

- trust_remote_code: a cached hub repository whose config loads custom code (which would write a
  marker file) is loaded through the Model page of a server bound to a non-loopback address of
  this machine. The code never runs, and the page says how the operator can allow it.
- a stored run whose model, device, dtype, source and tokens hold Markdown images and HTML is
  reopened on the History page: all of it is shown as text, and the browser fetches nothing.
"""
from __future__ import annotations

import re

import pytest

from app_helpers import CUSTOM_REPO, custom_code_repo
from browser_harness import SWEEP_S, UI_S, non_loopback_address

pytestmark = pytest.mark.browser
OTHER = "Another hub id or a local path…"


@pytest.fixture(scope="module")
def public(server_factory, tmp_path_factory):
    """The dashboard bound to this machine's network address, with its own offline hub cache
    holding CUSTOM_REPO, its own run history, and no repository allowed to run code."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no network address other than loopback to serve on")
    root = tmp_path_factory.mktemp("public")
    marker = root / "remote-code-ran"
    custom_code_repo(root / "hf" / "hub", marker)
    history = root / "history.sqlite"
    server = server_factory("public", address=address, env={
        "HF_HOME": str(root / "hf"), "HF_HUB_CACHE": str(root / "hf" / "hub"), "HF_HUB_OFFLINE": "1",
        "PATCHCORE_TRUST_REMOTE_CODE": "", "PATCHCORE_HISTORY_DB": str(history)})
    assert not server.url.startswith("http://127."), server.url
    return server, marker, history


def test_visitors_cannot_run_a_repositorys_code(public, open_session):
    server, marker, _ = public
    s = open_session(server)
    s.goto("/")
    s.open_page("^Model$")
    s.pick(OTHER)
    box = s.main.get_by_role("textbox", name="Hub id, model folder or .gguf file")
    box.fill(CUSTOM_REPO)
    box.press("Enter")
    s.settle()
    s.main.get_by_text("Advanced", exact=True).click()
    trust = s.main.get_by_role("checkbox", name="Trust remote code")
    trust.wait_for(state="attached")
    if trust.is_enabled():  # what any visitor would do, if the page let them
        trust.check(force=True)
        s.settle()
    s.button("Load model").click()
    s.settle(SWEEP_S)
    s.page.wait_for_timeout(1000)
    assert not marker.exists(), "the repository's code ran in the server process"
    assert not trust.is_checked() and trust.is_disabled()
    text = s.main.inner_text()
    # what the operator can do, under the box and in the load's message
    assert "PATCHCORE_TRUST_REMOTE_CODE=owner/name" in text, text
    errors = s.error_boxes()
    assert len(errors) == 1 and "needs custom code" in errors[0], errors
    assert "PATCHCORE_TRUST_REMOTE_CODE" in errors[0] and "local cache" not in errors[0], errors
    assert "embedded" in s.sidebar.inner_text().lower()  # the session keeps its model
    assert not s.console_errors, s.console_errors
    s.close()  # its one error box is the expected message
    assert not marker.exists()
    assert not server.tracebacks(), server.tracebacks()


def test_a_stored_runs_strings_are_text_in_the_browser(public, open_session, tiny):
    from patchcore import DEFAULT_PAIR, run_sweep
    from patchcore.history import History

    server, _, history = public
    evil = "/evil"  # on the server itself: a request for it would reach the server's log
    result = run_sweep(tiny("gpt2"), DEFAULT_PAIR, "layer_pos").to_json()
    result.update(model=f'![m]({evil}/model.png) <img src="{evil}/model2.png"> [site]({evil}/site)',
                  device=f"![d]({evil}/device.png)", dtype=f"![t]({evil}/dtype.png)")
    result["tokens"] = [f"![k{i}]({evil}/token{i}.png)" for i in range(len(result["tokens"]))]
    run_id = History(history).save(result, source=f"![s]({evil}/source.png)")

    s = open_session(server)
    requested = []
    s.page.on("request", lambda r: requested.append(r.url))
    s.goto(f"/History?run={run_id}")
    s.main.get_by_role("heading", name=f"Run {run_id}").wait_for(timeout=UI_S * 1000)
    s.wait_for_heatmap()
    s.page.wait_for_timeout(1500)
    assert not [u for u in requested if "/evil/" in u], requested
    injected = s.page.evaluate(
        "() => [...document.querySelectorAll('img, a')].map(e => e.outerHTML).filter(h => h.includes('/evil/'))")
    assert injected == [], injected
    text = s.main.inner_text()
    for shown in (result["model"], result["device"], result["dtype"], f"![s]({evil}/source.png)"):
        assert shown in text, (shown, text[:2000])
    # the cell detail shows a token as text too
    cell = s.cells().first
    cell.evaluate("e => e.scrollIntoView({block: 'center', inline: 'center'})")
    bb = cell.bounding_box()
    s.page.mouse.click(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2)
    s.page.get_by_text(re.compile(r"^Selected cell")).first.wait_for()
    s.settle()
    assert re.search(r"!\[k\d+\]\(/evil/token\d+\.png\)", s.main.inner_text())
    assert not [u for u in requested if "/evil/" in u], requested
    s.assert_clean("on the History page")
