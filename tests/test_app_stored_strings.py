"""AppTest: strings from a stored or imported run (model, device, dtype, tokens, source, metric)
are shown as text on every page that shows them, never as Markdown: a run file with an image
link in `model` must not make the browser fetch anything (issue #17, point 2)."""
import re

import pytest

from app_helpers import charts, click_chart, isolated_history, no_exception, open_app, plain, put_run  # noqa: F401
from patchcore import DEFAULT_PAIR, run_sweep
from patchcore.dataset_run import run_dataset
from patchcore.results import result_from_json
from patchcore.ioi import generate_ioi
from patchcore.history import History

EVIL = "http://evil.invalid"
HOSTILE = {
    "model": f'![m]({EVIL}/model.png) <img src="{EVIL}/model2.png"> [site]({EVIL}/) **bold**',
    "device": f"![d]({EVIL}/device.png)",
    "dtype": f"![t]({EVIL}/dtype.png)",
}
SOURCE = f"![s]({EVIL}/source.png)"
CREATED = f"![c]({EVIL}/created.png)"


def hostile_json(result) -> dict:
    d = result.to_json()
    d.update(HOSTILE, created=CREATED)
    if "tokens" in d:
        d["tokens"] = [f"![k{i}]({EVIL}/token{i}.png)" for i in range(len(d["tokens"]))]
    return d


@pytest.fixture(scope="module")
def runs(tiny):
    model = tiny("gpt2")
    single = hostile_json(run_sweep(model, DEFAULT_PAIR, "layer_pos"))
    dataset = hostile_json(run_dataset(model, generate_ioi(model.tokenizer, 2, seed=0), "layer", "denoise",
                                       n_boot=200))
    return {"single": single, "dataset": dataset}


def markdown_values(at) -> list[str]:
    """Everything the page hands to Streamlit's Markdown renderer (labels and values)."""
    out = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader"):
        out += [str(e.value) for e in at.get(kind)]
    for m in at.metric:
        out += [str(m.label), str(m.value)]
    return out


def unescaped_markup(text: str) -> list[str]:
    """Images, links or HTML that Markdown would render (an escaped character has a backslash)."""
    return re.findall(r"(?<!\\)!(?<!\\)\[|(?<!\\)\](?<!\\)\(|(?<!\\)<img", text)


def assert_all_text(at) -> str:
    shown = markdown_values(at)
    bad = [v for v in shown if unescaped_markup(v)]
    assert not bad, bad
    return "\n".join(plain(v) for v in shown)


def test_history_shows_a_stored_runs_strings_as_text(runs, isolated_history):
    run_id = History(isolated_history).save(runs["single"], source=SOURCE)
    at = open_app(run=str(run_id))
    at.switch_page("pages/5_History.py").run()
    no_exception(at)
    shown = assert_all_text(at)
    # shown literally: the reader sees the stored text, character for character
    for value in (*HOSTILE.values(), SOURCE, CREATED):
        assert value in shown, value
    # the cell detail's token (a metric value: Markdown too)
    click_chart(at, charts(at)[0], {"layer": 1, "position": 2})
    no_exception(at)
    shown = assert_all_text(at)
    assert f"![k2]({EVIL}/token2.png)".replace(" ", "␣") in shown


def test_history_shows_a_stored_dataset_runs_strings_as_text(runs, isolated_history):
    run_id = History(isolated_history).save(runs["dataset"], source=SOURCE)
    at = open_app(run=str(run_id))
    at.switch_page("pages/5_History.py").run()
    no_exception(at)
    shown = assert_all_text(at)
    for value in HOSTILE.values():
        assert value in shown, value


def test_patching_and_home_show_a_results_strings_as_text(runs):
    result = result_from_json(runs["single"])
    for page, slot in (("pages/3_Patching.py", "patch"), ("dashboard.py", "demo")):
        at = open_app()
        put_run(at, slot, result)
        at.switch_page(page).run()
        no_exception(at)
        shown = assert_all_text(at)
        assert HOSTILE["model"] in shown and HOSTILE["device"] in shown


def test_a_model_named_with_markup_is_shown_as_text():
    """A model name typed on the Model page (or set before) is text on every page's notices."""
    for page in ("pages/1_Model.py", "pages/2_Prompts.py", "pages/3_Patching.py", "pages/4_Datasets.py"):
        at = open_app()
        at.session_state["model"] = HOSTILE["model"]
        at.switch_page(page).run()
        no_exception(at)
        shown = assert_all_text(at) + " ".join(str(e.value) for e in at.sidebar.markdown)
        assert HOSTILE["model"] in shown, page
