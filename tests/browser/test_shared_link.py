"""A link copied from one browser, opened on a freshly started server, reproduces the experiment
after one click on Run."""
from __future__ import annotations

import urllib.parse

import pytest

from browser_harness import (NOISE, SHARED_CELL, SWEEP_S, assert_same_cells, assert_same_table,
                             cell_detail, read_csv)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(2 * SWEEP_S + 300)]


def test_shared_link_on_fresh_server(shared, server_factory, open_session):
    link = shared.link
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
    # the address bar holds the experiment (non-default values): the pair, direction, cell
    assert link.startswith("/Patching?"), link
    assert query.get("direction") == ["noise"], query
    assert query.get("clean") == ["The capital of France is the city of"], query
    assert query.get("answer") == [" Paris"] and query.get("wrong") == [" Rome"], query
    assert query.get("cell") == [f"{SHARED_CELL[0]},{SHARED_CELL[1]}"], query

    fresh = server_factory("fresh")  # a new process: nothing loaded, no session, no cache
    s = open_session(fresh)
    s.goto(link)
    # the experiment is back before anything runs ...
    assert s.main.get_by_role("radio", name=NOISE).is_checked()
    assert "The capital of France is the city of" in s.main.inner_text()
    assert s.cells().count() == 0
    # ... and one click on Run reproduces it
    s.button("Run").click()
    s.wait_for_heatmap(SWEEP_S)
    assert_same_cells(s.cell_records(), shared.cells)
    # the selected cell came with the link
    detail = cell_detail(s)
    assert detail["fields"].keys() == shared.detail["fields"].keys(), detail
    for name in ("layer", "position", "token"):
        assert detail["fields"][name] == shared.detail["fields"][name], detail
    diff = assert_same_table(read_csv(s.download("CSV")), shared.csv)
    print(f"shared link on a fresh server: largest difference {diff:.2g}")
    s.assert_clean("on the fresh server")
    assert not fresh.tracebacks(), fresh.tracebacks()
