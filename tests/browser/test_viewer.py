"""The result viewer in a real browser (issue 16): honest raw colours (point 1), a download right
after another (6), Back and links (9), the heatmap's marks and labels (11), exports with context
(12), no request to anyone else with the icons still drawn (15), and where the heads look."""
from __future__ import annotations

import re
import urllib.parse

import pytest

from browser_harness import CHART, NOISE, SHARED_CELL, SWEEP_S, UI_S, Session, parse_cell_label

pytestmark = [pytest.mark.browser, pytest.mark.timeout(3 * SWEEP_S)]

PAGES = ["/", "/Model", "/Prompts", "/Patching", "/Datasets", "/History", "/Guide"]
CAPITAL = {"clean": "The capital of France is the city of", "corrupted": "The capital of Italy is the city of",
           "answer": " Paris", "wrong": " Rome"}


def rgb(fill: str) -> tuple[int, int, int]:
    fill = fill.strip()
    if fill.startswith("#"):
        return tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(int(float(x)) for x in re.findall(r"[\d.]+", fill)[:3])


def rect_marks(s: Session) -> list[dict]:
    """Every heatmap cell with its drawn fill and outline."""
    rows = s.cells().evaluate_all(
        "els => els.map(e => [e.getAttribute('aria-label'), e.getAttribute('fill'), "
        "e.getAttribute('stroke'), e.getAttribute('stroke-width')])")
    return [{**parse_cell_label(a), "fill": rgb(f or "#000"), "stroke": st, "width": float(w or 0)}
            for a, f, st, w in rows]


def view_button(s: Session, name: str):
    """A choice of the 'Show' segmented control."""
    return s.main.locator('button[data-variant="segmented_control"]', has_text=name).first


def axis_labels(s: Session, scope=None) -> list[dict]:
    return (scope or s.page.locator(CHART).first).locator("g.role-axis-label text").evaluate_all(
        "els => els.map(e => ({text: e.textContent, fill: e.getAttribute('fill'), "
        "transform: e.getAttribute('transform') || ''}))")


# ------------------------------------------------------------------------------ point 1
def test_raw_values_are_coloured_around_the_unpatched_run(shared):
    s = shared.session
    logged = []
    s.page.on("console", lambda m: logged.append(m.text) if "domain" in m.text.lower() else None)
    view_button(s, "Raw metric").click()
    s.settle()
    s.wait_for_heatmap(UI_S)
    cells = rect_marks(s)
    # noising starts from the clean run: cells before the differing word leave it unchanged
    clean = cells[[c["position"] for c in cells].index(0)]["value"]
    extent = max(abs(c["value"] - clean) for c in cells)
    pale = [c for c in cells if abs(c["value"] - clean) <= 0.02 * extent]
    assert pale and all(min(c["fill"]) >= 215 for c in pale), \
        [c for c in pale if min(c["fill"]) < 215][:3]              # no change is white, not dark blue
    by_printed: dict = {}
    for c in cells:
        by_printed.setdefault(round(c["value"], 2), []).append(c["fill"])
    for value, fills in by_printed.items():                          # the same number, the same colour
        spread = max(max(f[i] for f in fills) - min(f[i] for f in fills) for i in range(3))
        assert spread <= 24, (value, fills)
    assert not logged, logged                                        # 'Scale domainMid exceeds …'
    view_button(s, "Normalised score").click()
    s.settle()


# ------------------------------------------------------------------------------ point 11
def test_the_heatmap_outlines_the_clicked_cell_and_labels_what_differs(shared):
    s = shared.session
    s.wait_for_heatmap(UI_S)
    cells = rect_marks(s)
    outlined = [(c["layer"], c["position"]) for c in cells if c["stroke"] and c["width"] > 0]
    assert outlined == [SHARED_CELL], outlined                       # the cell the link selected
    labels = axis_labels(s)
    texts = [lab["text"] for lab in labels]
    assert [str(i) for i in range(30)] == [t for t in texts if t.isdigit()]   # every layer
    (differs,) = [lab for lab in labels if "France" in lab["text"]]
    assert differs["text"] == "France / Italy" and rgb(differs["fill"]) == (0xb2, 0x18, 0x2b)
    assert "Patching" in s.page.url


# ------------------------------------------------------------------------------ points 6 and 12
def test_a_png_right_after_a_csv_downloads_and_exports_say_what_they_show(shared, server):
    s = shared.session
    files = []
    for name in ("CSV", "PNG", "SVG"):                               # one right after the other
        with s.page.expect_download(timeout=UI_S * 1000) as dl:
            s.main.get_by_role("button", name=name, exact=True).first.click()
        path = s.downloads / f"quick-{dl.value.suggested_filename}"
        dl.value.save_as(path)
        files.append(path)
    csv, png, svg = files
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = csv.read_text().splitlines()[0].split(",")
    assert {"model", "sweep", "direction", "metric", "clean", "corrupted"} <= set(header), header
    text = svg.read_text()
    assert "Model: SmolLM2-135M" in text and "The capital of France is the city of" in text
    assert "destroyed" in text                                       # the legend says what colour means
    assert "MediaFileStorageError" not in server.log_text()


# ------------------------------------------------------------------------------ point 9
def test_back_undoes_a_settings_change_and_links_carry_only_their_page(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Patching$")
    s.pick(NOISE)
    assert "direction=noise" in s.page.url
    hrefs = {name: s.nav_link(f"^{name}$").get_attribute("href") for name in
             ("Model", "Datasets", "History", "Patching")}
    for name in ("Model", "Datasets", "History"):
        assert "?" not in hrefs[name], hrefs                         # no Patching settings on them
    assert "direction=noise" in hrefs["Patching"]
    s.page.go_back()                                                 # the first press undoes the change
    s.settle()
    s.page.wait_for_function("() => !location.search.includes('direction')", timeout=UI_S * 1000)
    assert urllib.parse.urlsplit(s.page.url).path == "/Patching"
    assert s.main.get_by_role("radio", name="Denoise (clean → corrupted)").is_checked()
    s.page.go_back()                                                 # and the next one leaves the page
    s.page.wait_for_function("() => location.pathname === '/'", timeout=UI_S * 1000)
    s.settle()
    s.main.get_by_role("button", name="Run demo", exact=True).wait_for()
    s.assert_clean("after Back")


# ------------------------------------------------------------------------------ point 15
def test_no_request_leaves_the_server_and_the_icons_still_draw(server, browser, tmp_path):
    s = Session(browser, server, tmp_path)
    blocked = []

    def route(r):
        if s._is_local(r.request.url):
            r.continue_()
        else:                                                        # as offline: nothing else answers
            blocked.append(r.request.url)
            r.abort()
    s.context.route("**/*", route)
    try:
        for path in PAGES:
            s.goto(path)
            s.page.wait_for_timeout(500)
            fonts = s.page.evaluate("() => document.fonts.ready.then(() => [...document.fonts]"
                                    ".filter(f => f.family.includes('Material Symbols')).map(f => f.status))")
            assert "loaded" in fonts, (path, fonts)                  # the icons come from this server
            icon = s.sidebar.locator('[data-testid="stIconMaterial"]').first
            assert icon.bounding_box()["width"] < 40, path           # drawn as a glyph, not as its name
            favicon = s.page.evaluate("() => [...document.querySelectorAll(\"link[rel*='icon']\")].map(l => l.href)")
            assert all(f.startswith(("data:", server.url)) for f in favicon), favicon
        assert blocked == [] and s.external_requests == [], blocked + s.external_requests
        s.assert_clean("with every outside request blocked")
    finally:
        s.close()


# ------------------------------------------------------------------------------ beyond: attention
def test_where_the_heads_look_after_a_head_sweep(server, open_session):
    s = open_session(server)
    s.goto("/Patching?" + urllib.parse.urlencode({**CAPITAL, "sweep": "head"}))
    s.button("Run").click()
    s.wait_for_heatmap(SWEEP_S, min_cells=30 * 9)
    s.main.get_by_role("heading", name="Where the heads look").wait_for()
    s.settle()
    heads = s.page.locator(CHART).filter(has=s.page.locator('path[aria-label*="head"]')).first
    for lab in axis_labels(s, heads):
        assert "rotate(-90" not in lab["transform"] and "rotate(90" not in lab["transform"], lab
    attention = s.page.locator(f'{CHART} g.mark-rect path[aria-label*="attention"]')
    attention.first.wait_for(timeout=UI_S * 1000)
    assert attention.count() == 2 * 8 * 9 // 2                       # clean and corrupted, 8 tokens, causal
    text = s.main.inner_text()
    assert re.search(r"From position 7 \(' of'\), head \d+\.\d+ attends most to", text), text[-1500:]
    s.screenshot("attention")
    s.assert_clean("with the attention patterns")
