"""Fixtures of the real-browser tests (the harness itself is in browser_harness.py).

Servers, the browser and the two slow experiments (the demo and a shared-link experiment) are
session-scoped: the model loads once per server and each sweep runs once per test session.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from browser_harness import (BOTH, CAPITAL, CHROMIUM_ARGS, DATASET_PAIRS, DATASET_S, NOISE, QUADRANTS,
                             SHARED_CELL, SWEEP_S, AppServer, Run, Session, cell_detail, click_cell,
                             finish, read_csv)


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory, chromium_path):
    """Start extra servers (e.g. a *fresh* one for shared links); all stopped at the end.

    Depends on `chromium_path` so a missing browser fails at once, before any server starts."""
    servers: list[AppServer] = []
    log_dir = tmp_path_factory.mktemp("streamlit-logs")

    def make(name: str, env: dict | None = None, address: str = "127.0.0.1") -> AppServer:
        # each server keeps its run history in its own file, never the user's ~/.cache one
        env = {"PATCHCORE_HISTORY_DB": str(log_dir / f"{name}-{len(servers)}-history.sqlite"), **(env or {})}
        s = AppServer(log_dir, name=f"{name}-{len(servers)}", env=env, address=address)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.stop()
    logged = [f"--- {s.name}:\n{t}" for s in servers for t in s.tracebacks(all_starts=True)]
    if logged:
        pytest.fail("the dashboard logged tracebacks:\n" + "\n".join(logged), pytrace=False)


@pytest.fixture(scope="session")
def server(server_factory) -> AppServer:
    """The main server, shared by the whole browser run so the model loads once.

    `server.restart()` keeps its environment, so its run history survives a restart."""
    return server_factory("main")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    exe = shutil.which("chromium")
    if not exe:
        pytest.fail("Debian's `chromium` is not on PATH. The real-browser tests need it: run "
                    "`make setup` (its browser-deps step installs it with apt-get). Do not use "
                    "`playwright install`.", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.fail("the `playwright` Python package is missing: run `make setup`", pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def open_session(browser, tmp_path):
    """Factory: `open_session(server)` -> Session. At the end every session must be clean."""
    sessions: list[Session] = []

    def make(server: AppServer) -> Session:
        s = Session(browser, server, tmp_path)
        sessions.append(s)
        return s

    yield make
    problems = []
    for s in sessions:
        if not s.closed:
            try:
                problems += s.error_boxes()
            except Exception:  # noqa: BLE001 - page already gone
                pass
        problems += s.console_errors
        s.close()
    if problems:
        pytest.fail("hidden failures in the browser:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def demo(browser, server, tmp_path_factory):
    """The landing page after one click on Run demo: the server's first run (model load included)."""
    s = Session(browser, server, tmp_path_factory.mktemp("demo"))
    s.goto("/")
    t0 = time.monotonic()
    s.page.get_by_role("button", name="Run demo", exact=True).click()
    s.wait_for_heatmap(SWEEP_S)
    s.main.get_by_role("heading", name="What this shows").wait_for()
    run = Run(s, time.monotonic() - t0)
    run.cells = s.cell_records()
    run.csv = read_csv(s.download("CSV"))
    yield run
    finish(s)


@pytest.fixture(scope="session")
def shared(browser, server, tmp_path_factory):
    """A non-default experiment built by clicking: Country → capital preset, noising, one cell
    selected. Its address bar is the link a user would share."""
    s = Session(browser, server, tmp_path_factory.mktemp("shared"))
    s.goto("/")
    s.open_page("^Prompts$")
    s.choose("Start from", CAPITAL)
    s.open_page("^Patching$")
    s.pick(NOISE)
    t0 = time.monotonic()
    s.button("Run").click()
    s.wait_for_heatmap(SWEEP_S)
    run = Run(s, time.monotonic() - t0)
    run.cells = s.cell_records()
    click_cell(s, layer=SHARED_CELL[0], position=SHARED_CELL[1])
    run.detail = cell_detail(s)
    run.link = s.path_and_query()
    run.csv = read_csv(s.download("CSV"))
    yield run
    finish(s)


@pytest.fixture(scope="session")
def dataset_run(browser, server, tmp_path_factory):
    """Issue 5's experiment: 50 generated IOI pairs, both directions, run from the Datasets page."""
    s = Session(browser, server, tmp_path_factory.mktemp("dataset"))
    s.goto("/")
    s.open_page("^Datasets$")
    n = s.main.get_by_role("spinbutton", name="Number of pairs")
    n.fill(str(DATASET_PAIRS))
    n.press("Enter")
    s.settle()
    s.pick(BOTH)
    t0 = time.monotonic()
    s.main.get_by_role("button", name="Run dataset", exact=True).click()
    s.main.get_by_role("heading", name=QUADRANTS).wait_for(timeout=DATASET_S * 1000)
    s.settle()
    run = Run(s, time.monotonic() - t0)
    run.cells = s.cell_records()
    run.csv = read_csv(s.download("CSV (means and intervals)"))
    yield run
    finish(s)


_ORDER = ["test_landing", "test_pages", "test_upload", "test_shared_link", "test_concurrent",
          "test_viewer", "test_reload", "test_dataset", "test_history_page"]


def pytest_collection_modifyitems(session, config, items):
    here = Path(__file__).parent

    def rank(item):
        p = Path(str(item.fspath))
        if p.parent != here:
            return -1  # not ours: keep in front, in pytest's order
        return _ORDER.index(p.stem) if p.stem in _ORDER else len(_ORDER)

    ours = [i for i in items if rank(i) >= 0]
    if ours:
        first = items.index(ours[0])
        rest = [i for i in items if rank(i) < 0]
        ours.sort(key=rank)  # stable: keeps the order inside each file
        items[:] = rest[:first] + ours + rest[first:]

