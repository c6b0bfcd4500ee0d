"""AppTest: running sweeps from the UI – Run demo, Cancel, the heatmap and its cell detail, results."""
import numpy as np
import pytest

from app_helpers import (chart_data, chart_spec, charts, click_chart, errors, isolated_history,  # noqa: F401
                         no_exception, open_app, plain, put_run, run_job, run_result, texts, wait_for_job)
from patchcore import DEFAULT_PAIR, PromptPair, run_sweep
from patchcore.attribution import agreement
from patchcore.history import History
from patchcore.models import EMBEDDED_LABEL
from patchcore.presets import PRESETS
from reference import Reference
from patchcore.summary import cell_name, meaning, summarize


def detail_rows(at) -> dict:
    """The selected cell's panel: a row of labelled numbers."""
    return {m.label: m.value for m in at.metric}


@pytest.mark.embedded
@pytest.mark.timeout(1800)  # one full layer × position sweep on the embedded model; slow on a busy CPU
def test_run_demo_chart_equals_the_engine_and_cells_explain_themselves(embedded):
    at = open_app()
    (demo,) = [b for b in at.button if b.label == "Run demo"]
    demo.click().run()
    no_exception(at)
    assert at.get("progress"), "a progress bar while the demo runs"
    assert any(b.label == "Cancel" for b in at.button)
    wait_for_job(at, "demo")
    no_exception(at)
    assert errors(at) == []

    result = run_result(at, "demo")  # what patchcore's run_sweep returned to the page
    assert (result.sweep, result.direction, result.metric, result.pair) == \
        ("layer_pos", "denoise", "logit_diff", DEFAULT_PAIR)
    assert result.model == EMBEDDED_LABEL and result.method == "exact"
    (chart,) = charts(at)
    data = chart_data(chart).sort_values(["layer", "position"])
    assert len(data) == result.values.size == 30 * 16
    np.testing.assert_allclose(data["value"].to_numpy(), result.values.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(data["normalized"].to_numpy(), result.normalized.reshape(-1), rtol=1e-6)
    assert list(data.drop_duplicates("position")["token"]) == result.tokens  # in order, repeats kept
    # and those numbers are right: an independent plain-PyTorch patch of a few cells (tests/reference.py)
    cells = [(0, 9, None), (14, 9, None), (14, 15, None), (29, 12, None)]
    ref = Reference(embedded.hf, embedded.tokenizer, DEFAULT_PAIR, "layer_pos", "denoise", cells=cells)
    clean, corrupted, values = ref.metric("logit_diff")
    assert (clean, corrupted) == pytest.approx((result.clean_metric, result.corrupted_metric), abs=1e-4)
    shown = data.set_index(["layer", "position"])["value"]
    np.testing.assert_allclose([shown[(l, p)] for l, p, _ in cells], values, atol=1e-3)
    spec = chart_spec(chart)
    rect = spec["layer"][0]["encoding"]
    assert rect["x"]["field"] == "position" and rect["y"]["field"] == "layer"
    assert rect["color"]["scale"]["domainMid"] == 0  # diverging, centred at 0
    assert "Mary" in rect["x"]["axis"]["labelExpr"]  # token text on the position axis
    # the plain-language summary, as text under the chart
    shown = texts(at)
    for sentence in summarize(result):
        assert "• " + sentence in shown
    assert {b.label for b in at.get("download_button")} == {"CSV", "JSON", "PNG", "SVG"}

    # click a cell: its detail, in words, beside the chart
    layer, pos = 20, result.tokens.index(" Mary", 8)  # the changed name
    click_chart(at, chart, {"layer": layer, "position": pos})
    no_exception(at)
    rows = detail_rows(at)
    # where the prompts differ, both prompts' tokens (clean / corrupted)
    assert rows["layer"] == str(layer) and rows["position"] == str(pos) and rows["token"] == "␣Mary / ␣John"
    assert float(rows["raw logit difference"]) == pytest.approx(result.values[layer, pos], abs=1e-4)
    assert float(rows["normalised score"]) == pytest.approx(result.normalized[layer, pos], abs=1e-3)
    assert meaning(result, float(result.normalized[layer, pos])) in texts(at)
    assert any(cell_name(result, (layer, pos)) in m.value.replace("\\", "") for m in at.markdown)
    assert "cell" not in at.query_params  # the demo does not change the shared experiment


@pytest.mark.embedded
def test_cancel_stops_the_run_and_leaves_the_model_usable():
    at = open_app("Patching")  # default: layer_pos, 480 patches in several batches
    for attempt in range(2):  # cancel twice: the first run must have released the model
        at.button(key="run_patch").click().run()
        no_exception(at)
        job = run_job(at, "patch")
        assert job.running and at.get("progress")
        at.button(key="cancel_patch").click().run()
        assert job.cancel.is_set()
        wait_for_job(at, "patch", timeout=300)
        no_exception(at)
        assert any("cancelled" in i.value for i in at.info)
        assert job.done < job.total  # stopped early
        assert charts(at) == [] and run_result(at, "patch") is None
        assert not at.button(key="run_patch").disabled


@pytest.mark.embedded
def test_patching_page_run_shows_the_result_and_records_it(isolated_history):
    """A short pair and the cheap whole-layer sweep: the Patching page end to end."""
    pair = PRESETS["capital"].pair
    at = open_app("Patching", sweep="layer", direction="noise", clean=pair.clean, corrupted=pair.corrupted,
                  answer=pair.answer, wrong=pair.wrong)
    at.button(key="run_patch").click().run()
    no_exception(at)
    wait_for_job(at, "patch")
    no_exception(at)
    assert errors(at) == []
    result = run_result(at, "patch")
    assert (result.sweep, result.direction, result.pair) == ("layer", "noise", pair)
    data = chart_data(charts(at)[0]).sort_values("layer")
    np.testing.assert_allclose(data["value"], result.values, rtol=1e-6)
    assert any("restores everything after it" in i.value for i in at.info)  # the whole-layer caveat
    (run,) = History(isolated_history).list()
    assert (run.source, run.sweep, run.direction, run.model) == ("dashboard", "layer", "noise", EMBEDDED_LABEL)
    assert any(f"run {run.id}" in c.value for c in at.caption)
    assert History(isolated_history).get(run.id).open().values.tolist() == result.values.tolist()


@pytest.mark.embedded
def test_fast_preview_shows_an_attribution_estimate(isolated_history, embedded):
    pair = PRESETS["capital"].pair
    at = open_app("Patching", sweep="attn_pos", clean=pair.clean, corrupted=pair.corrupted,
                  answer=pair.answer, wrong=pair.wrong)
    at.button(key="preview_patch").click().run()
    no_exception(at)
    wait_for_job(at, "patch")
    no_exception(at)
    result = run_result(at, "patch")
    assert result.method == "atp" and result.sweep == "attn_pos"
    assert any("Fast preview" in i.value for i in at.info)  # said to be an estimate
    data = chart_data(charts(at)[0]).sort_values(["layer", "position"])
    np.testing.assert_allclose(data["value"], result.values.reshape(-1), rtol=1e-6)
    assert History(isolated_history).list() == []  # previews are not stored as runs

    # one click checks the estimate's top 10 cells exactly: the numbers are run_sweep's
    at.button(key="atp_check_top").click().run()
    wait_for_job(at, "atp_check")
    no_exception(at)
    table = run_result(at, "atp_check")[1]
    exact = run_sweep(embedded, pair, "attn_pos", "denoise")
    assert len(table) == 10
    np.testing.assert_allclose(table["exact"], exact.values[table["layer"], table["position"]], atol=1e-4)
    np.testing.assert_allclose(table["atp"], result.values[table["layer"], table["position"]])
    assert any("run exactly" in c.value for c in at.caption)

    # after an exact Run of the same experiment, the agreement report sits under the chart
    at.button(key="run_patch").click().run()
    wait_for_job(at, "patch")
    no_exception(at)
    rep = agreement(result, run_result(at, "patch"), k=10)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Spearman ρ"] == f"{rep['spearman']:.2f}"
    assert metrics["Top-10 overlap"] == f"{rep['top_k_overlap']:.0%}"


# ----------------------------------------------------------------- results on a tiny model (fast)

@pytest.fixture(scope="module")
def tiny_results(tiny):
    """Real results of a tiny random Llama (shares the embedded tokenizer), for display tests."""
    model = tiny("llama")
    hostile = PromptPair("<b>Anna</b> **gave** [it](http://x.io) :red[to] $x$ Mary and",
                         "<b>John</b> **gave** [it](http://x.io) :red[to] $x$ Mary and", " John", " Mary")
    return {"head_pos": run_sweep(model, DEFAULT_PAIR, "head_pos"),
            "layer": run_sweep(model, DEFAULT_PAIR, "layer"),
            "hostile": run_sweep(model, hostile, "layer_pos")}


def show(result, **params):
    at = open_app(**params)
    put_run(at, "patch", result)
    at.switch_page("pages/3_Patching.py").run()
    no_exception(at)
    return at


def test_head_pos_pick_the_head_or_the_position(tiny_results):
    r = tiny_results["head_pos"]
    at = show(r, sweep="head_pos")
    data = chart_data(charts(at)[0])
    assert set(data["head"]) == {0} and len(data) == r.n_layers * len(r.tokens)
    at.selectbox(key="w_head_patch").select(2).run()
    data = chart_data(charts(at)[0]).sort_values(["layer", "position"])
    assert set(data["head"]) == {2}
    np.testing.assert_allclose(data["value"], r.values[:, :, 2].reshape(-1))
    at.radio(key="w_slice_patch").set_value("position").run()
    at.selectbox(key="w_pos_patch").select(5).run()
    chart = charts(at)[0]
    data = chart_data(chart).sort_values(["layer", "head"])
    assert set(data["position"]) == {5} and chart_spec(chart)["layer"][0]["encoding"]["x"]["field"] == "head"
    np.testing.assert_allclose(data["value"], r.values[:, 5, :].reshape(-1))
    click_chart(at, chart, {"layer": 1, "position": 5, "head": 3})
    rows = detail_rows(at)
    assert (rows["layer"], rows["position"], rows["head"]) == ("1", "5", "3")
    assert at.query_params["cell"] == "1,5,3"  # the selected cell goes into the link


def test_raw_normalised_toggle_and_selected_cell_from_the_link(tiny_results):
    r = tiny_results["head_pos"]
    at = show(r, sweep="head_pos", cell="2,3,0", view="raw")
    assert chart_spec(charts(at)[0])["layer"][0]["encoding"]["color"]["field"] == "value"
    rows = detail_rows(at)
    assert rows["layer"] == "2" and rows["position"] == "3" and rows["head"] == "0"
    assert float(rows["raw logit difference"]) == pytest.approx(r.values[2, 3, 0], abs=1e-4)
    at.button_group[0].set_value("normalized").run()
    assert chart_spec(charts(at)[0])["layer"][0]["encoding"]["color"]["field"] == "normalized"
    assert "view" not in at.query_params


def test_a_cell_outside_the_result_is_explained_not_crashed(tiny_results):
    at = show(tiny_results["layer"], sweep="layer", cell="99")
    assert any("is not part of this result" in i.value for i in at.info)


def said(at, words: str) -> int:
    """How many elements of the page say `words` (text, Markdown, notices, captions)."""
    return sum(words in str(getattr(e, "value", "")).replace("\\", "")
               for kind in ("text", "markdown", "info", "warning", "caption", "error") for e in at.get(kind))


def test_layer_sweep_caveat_and_result_warnings_are_said_once(tiny_results):
    """Issue 16, point 13: the whole-layer caveat was shown four times, a warning twice."""
    r = tiny_results["layer"]
    warning = "The clean and corrupted runs are very close, so normalised scores are unstable."
    r.warnings.append(warning)
    try:
        at = show(r, sweep="layer")
        assert said(at, "restores everything after it") == 1
        assert any("restores everything after it" in i.value for i in at.info)
        assert said(at, "normalised scores are unstable") == 1
        before = open_app("Patching", sweep="layer")   # before any run: said once too
        assert said(before, "restores everything after it") == 1
    finally:
        r.warnings.remove(warning)


def test_tokens_with_markup_are_shown_as_text(tiny_results):
    r = tiny_results["hostile"]
    at = show(r)
    shown = texts(at)
    for sentence in summarize(r):
        assert "• " + sentence in shown  # st.text: no Markdown, no HTML
    for el in list(at.markdown) + list(at.warning) + list(at.info) + list(at.caption):
        v = el.value
        assert "<b>" not in v and "](http" not in v and ":red[" not in v, v
    pos = r.tokens.index("<b>") if "<b>" in r.tokens else 0
    click_chart(at, charts(at)[0], {"layer": 0, "position": pos})
    token = detail_rows(at)["token"]  # a metric's value is Markdown: the token comes escaped
    assert plain(token) == r.tokens[pos].replace(" ", "␣")
    assert "<" not in r.tokens[pos] or "\\<" in token
