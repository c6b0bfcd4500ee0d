"""Every page renders in a real browser, shows what it is for, and gets a README screenshot."""
from __future__ import annotations

import re

import pytest

from browser_harness import CAPITAL, NOISE, detail_box

pytestmark = pytest.mark.browser


def test_model_page(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Model$")
    s.main.get_by_role("heading", name="Model", exact=True).wait_for()
    assert s.main.get_by_role("radio", name=re.compile("SmolLM2-135M")).is_checked()
    # the page draws top to bottom: wait for each widget before counting it
    for name in ("Device", "Precision (dtype)"):
        box = s.main.get_by_role("combobox", name=name)
        box.first.wait_for()
        assert box.count() == 1, name
    s.button("Load model").click()
    s.settle()
    # architecture facts of the embedded model, and the sidebar says what is loaded
    s.main.get_by_text(re.compile(r"Loaded in \d")).wait_for()
    side = s.sidebar.inner_text()
    assert "SmolLM2-135M" in side and "30 layers" in side and "9 heads" in side, side
    assert re.search(r"device\s+cpu", side) and re.search(r"dtype\s+float32", side), side
    s.assert_clean("on the Model page")
    s.screenshot("model")


def test_prompts_page(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Prompts$")
    s.main.get_by_role("heading", name="Baseline").wait_for()
    assert "Mary gave a bottle of milk to" in s.main.get_by_role("textbox", name="Clean prompt", exact=True).input_value()
    assert s.main.get_by_role("textbox", name="Answer (one token)", exact=True).input_value() == " John"
    text = s.main.inner_text()
    assert "Clean: 16 tokens · corrupted: 16 tokens · 1 position(s) differ" in text
    # the seed pair's unpatched logit differences (DESIGN.md: +5.14 and -3.83)
    assert "+5.137" in text and "-3.829" in text, text
    s.assert_clean("on the Prompts page")
    s.screenshot("prompts")

    # a preset replaces the four fields, and the token table follows
    s.choose("Start from", CAPITAL)
    assert s.main.get_by_role("textbox", name="Clean prompt", exact=True).input_value() == \
        "The capital of France is the city of"
    s.main.get_by_text(re.compile(r"Clean: 8 tokens · corrupted: 8 tokens")).wait_for()

    # a bad field gets its message beside it, and the user's text stays
    answer = s.main.get_by_role("textbox", name="Answer (one token)", exact=True)
    answer.fill(" Paris Paris")
    answer.press("Enter")
    s.settle()
    s.main.locator('[data-testid="stAlertContentError"]').first.wait_for()
    assert answer.input_value() == " Paris Paris"
    answer.fill(" Paris")
    answer.press("Enter")
    s.settle()
    assert s.main.locator('[data-testid="stAlertContentError"]').count() == 0
    s.assert_clean("after fixing the field")


def test_guide_page(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Guide$")
    s.main.get_by_role("heading", name="How to read the results").wait_for()
    text = s.main.inner_text().lower()
    for words in ("negative", "around 0", "denois", "nois", "band", "residual stream"):
        assert words in text, f"the Guide does not mention {words!r}"
    s.assert_clean("on the Guide page")
    s.screenshot("guide")


def test_datasets_page_renders(server, open_session):
    s = open_session(server)
    s.goto("/")
    s.open_page("^Datasets$")
    s.main.get_by_role("heading", name="Datasets").wait_for()
    s.button("Run dataset").first.wait_for()
    assert s.button("Run dataset").count() == 1
    s.assert_clean("on the Datasets page")  # its screenshot is taken after the dataset run


def test_patching_page_with_heatmap(shared):
    """The shared experiment's session: Patching page, capital preset, noising, a cell selected."""
    s = shared.session
    assert s.page.url.split("?")[0].endswith("/Patching")
    assert s.main.get_by_role("radio", name=NOISE).is_checked()
    assert "The capital of France is the city of" in s.main.inner_text()
    assert len(shared.cells) == 30 * 8
    assert shared.detail["fields"].get("token") == "␣France / ␣Italy", shared.detail  # both prompts' tokens
    assert shared.detail["fields"].get("layer") == "5", shared.detail
    # the cost is shown before running; the summary after
    text = s.main.inner_text()
    assert re.search(r"Patches\s+240", text), text
    s.main.get_by_role("heading", name="What this shows").wait_for()
    assert detail_box(s).is_visible()
    s.assert_clean("on the Patching page")
    s.screenshot("patching")
