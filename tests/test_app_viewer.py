"""AppTest: the one result viewer (ui.results) for single-pair and dataset results – noising read
the same way in the chart, the cell, the summary and the Guide; heads × positions opening on the
strongest head with every head on request; the clicked cell in the chart; exports with context;
each note said once; where the heads look (issue 16, points 3, 10, 11, 12, 13 and the attention
view; issue 11: one viewer)."""
import json

import numpy as np
import pytest

from app_helpers import (chart_data, chart_spec, charts, click_chart, no_exception, open_app, put_run,
                         texts)
from patchcore import DEFAULT_PAIR, run_sweep
from patchcore.charts import strongest_head
from patchcore.dataset_run import run_both, run_dataset
from patchcore.ioi import generate_ioi
from patchcore.patterns import attention_patterns
from patchcore.presets import PRESETS
from patchcore.prompts import prepare_pair
from patchcore.summary import meaning, summarize

CAPITAL = PRESETS["capital"].pair


def show(result, page="pages/3_Patching.py", slot="patch", **params):
    at = open_app(**params)
    if slot == "dataset":   # the Datasets page's runs hand over the result and its run id
        from ui.datasets import DatasetRun
        result = DatasetRun(result)
    put_run(at, slot, result)
    at.switch_page(page).run()
    no_exception(at)
    return at


def detail(at) -> dict:
    return {m.label: m.value for m in at.metric}


def heat(at):
    return [c for c in charts(at) if "layer" in json.dumps(chart_spec(c).get("encoding", chart_spec(c).get("layer", "")))]


@pytest.fixture(scope="module")
def tiny_runs(tiny, single_thread_module):
    model = tiny("llama")
    ds = generate_ioi(model.tokenizer, 3, seed=0)
    return {"noise": run_sweep(model, DEFAULT_PAIR, "layer_pos", "noise"),
            "head_pos": run_sweep(model, DEFAULT_PAIR, "head_pos", "noise"),
            "dataset_noise": run_dataset(model, ds, "layer_pos", "noise", n_boot=200),
            "both": run_both(model, ds, "layer_pos", n_boot=200)}


# ------------------------------------------------------------------------- point 3: one convention
def test_noising_reads_the_same_in_the_chart_the_cell_the_summary_and_the_guide(tiny_runs):
    r = tiny_runs["noise"]
    at = show(r, direction="noise")
    (chart,) = charts(at)
    spec = chart_spec(chart)
    assert spec["layer"][0]["encoding"]["color"]["field"] == "damage"   # the share destroyed
    assert "destroyed" in spec["layer"][0]["encoding"]["color"]["title"]
    data = chart_data(chart)
    np.testing.assert_allclose(data["damage"], 1 - data["normalized"])
    top = data.loc[data["damage"].idxmax()]
    layer, pos = int(top["layer"]), int(top["position"])
    at = click_chart(at, chart, {"layer": layer, "position": pos})
    no_exception(at)
    cell = detail(at)
    # the cell says the number the chart shows, in the same words as the summary
    assert float(cell["destroyed (1 − score)"]) == pytest.approx(top["damage"], abs=1e-3)
    said = meaning(r, float(r.normalized[layer, pos]))
    assert said in texts(at) and said.startswith("Corrupting this destroys")
    assert f"{round(100 * top['damage']):.0f}%" in said
    summary = " ".join(t for t in texts(at) if t.startswith("• "))
    assert f"{top['damage']:.2f}" in summary and "destroy" in summary   # the strongest effect, same number
    assert "leaves" not in summary
    guide = open_app()
    guide.switch_page("pages/9_Guide.py").run()
    words = " ".join(m.value for m in guide.markdown)
    assert "share it\n*destroys*" in words or "*destroys*" in words
    assert "noising shows 1 minus" in words


def test_a_dataset_noising_cell_says_the_destroyed_share_the_chart_shows(tiny_runs):
    r = tiny_runs["dataset_noise"]
    at = show(r, "pages/4_Datasets.py", "dataset", **{"directions": "noise"})
    chart = next(c for c in charts(at) if chart_spec(c)["layer"][0]["encoding"]["color"]["field"] == "damage")
    data = chart_data(chart)
    top = data.loc[data["damage"].idxmax()]
    at = click_chart(at, chart, {"layer": int(top["layer"]), "position": int(top["position"])})
    no_exception(at)
    assert float(detail(at)["destroyed (1 − score)"]) == pytest.approx(top["damage"], abs=1e-3)
    table = " ".join(str(v) for df in at.dataframe for v in df.value.to_numpy().reshape(-1))
    assert "share destroyed" in table


# ------------------------------------------------------------------------- point 10
def test_heads_by_positions_opens_on_the_strongest_head_and_shows_every_head(tiny_runs):
    r = tiny_runs["head_pos"]
    strongest = strongest_head(r)
    assert strongest != 0   # this result would have opened on an empty head 0 before
    at = show(r, sweep="head_pos", direction="noise")
    data = chart_data(charts(at)[0])
    assert set(data["head"]) == {strongest}
    e = 1 - r.normalized
    assert np.nanmax(e[:, :, strongest]) == pytest.approx(np.nanmax(e))
    at.radio(key="w_slice_patch").set_value("grid").run()
    no_exception(at)
    spec = chart_spec(charts(at)[0])
    assert spec["facet"]["field"] == "head" and spec["columns"] == 3     # small multiples
    assert set(chart_data(charts(at)[0])["head"]) == set(range(r.n_heads))
    click_chart(at, charts(at)[0], {"layer": 1, "position": 4, "head": 2})
    assert detail(at)["head"] == "2" and at.query_params["cell"] == "1,4,2"


# ------------------------------------------------------------------------- point 11
def test_the_clicked_cell_is_outlined_in_the_chart(tiny_runs):
    r = tiny_runs["noise"]
    at = show(r, direction="noise")
    params = chart_spec(charts(at)[0])["params"]
    assert not params[0].get("value")
    at = click_chart(at, charts(at)[0], {"layer": 2, "position": 9})
    (param,) = chart_spec(charts(at)[0])["params"]
    assert param["value"] == [{"layer": 2, "position": 9}]                # drawn with an outline
    enc = chart_spec(charts(at)[0])["layer"][0]["encoding"]
    assert enc["strokeWidth"]["condition"]["param"] == param["name"]


# ------------------------------------------------------------------------- point 12
def test_exports_carry_their_context_and_datasets_have_png_and_svg(tiny_runs):
    from ui.results import export_frame
    r = tiny_runs["noise"]
    df = export_frame(r)
    for col, value in {"direction": "noise", "metric": "logit_diff", "model": r.model, "sweep": "layer_pos",
                       "clean": DEFAULT_PAIR.clean, "answer": DEFAULT_PAIR.answer}.items():
        assert (df[col] == value).all(), col
    both = export_frame(tiny_runs["both"])
    assert set(both["direction"]) == {"denoise", "noise"} and (both["metric"] == "logit_diff").all()
    at = show(r, direction="noise")
    spec = chart_spec(charts(at)[0])
    assert "Model: tiny-llama" in spec["title"]["subtitle"][-1]            # the PNG/SVG say what it is
    assert DEFAULT_PAIR.clean in " ".join(spec["title"]["subtitle"])
    at = show(tiny_runs["both"], "pages/4_Datasets.py", "dataset")
    labels = {b.label for b in at.get("download_button")}
    assert {"PNG", "SVG", "JSON", "CSV (means and intervals)", "CSV (every pair)"} <= labels


# ------------------------------------------------------------------------- point 13 (datasets)
def test_a_dataset_note_is_said_once(tiny_runs):
    r = tiny_runs["both"]
    note = "Left out 2 words that are not a single token for this model."
    r.denoise.notes.append(note)
    r.noise.notes.append(note)
    try:
        at = show(r, "pages/4_Datasets.py", "dataset")
        shown = [e.value for kind in ("text", "markdown", "info", "warning", "caption")
                 for e in at.get(kind) if note in str(e.value).replace("\\", "")]
        assert len(shown) == 1, shown
    finally:
        r.denoise.notes.remove(note)
        r.noise.notes.remove(note)


# ------------------------------------------------------------------------- issue 11: one viewer
def test_one_viewer_draws_single_and_dataset_results_alike(tiny_runs):
    single = show(tiny_runs["noise"], direction="noise")
    dataset = show(tiny_runs["dataset_noise"], "pages/4_Datasets.py", "dataset")
    for at in (single, dataset):
        assert at.button_group[0].value == "normalized"
        assert any(s.value == "What this shows" for s in at.subheader)
        assert {"PNG", "SVG", "JSON"} <= {b.label for b in at.get("download_button")}


# ------------------------------------------------------------------------- the attention view
@pytest.mark.embedded
def test_where_the_heads_look_for_a_head_result(embedded):
    r = run_sweep(embedded, CAPITAL, "head", "denoise")
    at = show(r, sweep="head", clean=CAPITAL.clean, corrupted=CAPITAL.corrupted, answer=CAPITAL.answer,
              wrong=CAPITAL.wrong)
    assert any(s.value == "Where the heads look" for s in at.subheader)
    patterns = [c for c in charts(at) if "prompt: head" in str(chart_spec(c).get("title", ""))]
    assert len(patterns) == 2                                              # clean and corrupted side by side
    e = r.normalized
    layer, head = np.unravel_index(int(np.nanargmax(e)), e.shape)          # opens on the strongest head
    assert at.selectbox(key="pat_layer_patch").value == layer and at.selectbox(key="pat_head_patch").value == head
    want = attention_patterns(embedded, prepare_pair(embedded.tokenizer, CAPITAL), int(layer))
    got = chart_data(patterns[0]).sort_values(["query", "key"])
    T = want.clean.shape[-1]
    np.testing.assert_allclose(got["p"], [want.clean[head, q, k] for q in range(T) for k in range(q + 1)],
                               atol=1e-6)
    assert any(t.startswith(f"From position {T - 1}") for t in texts(at))
    top = at.dataframe[-1].value
    assert len(top) == 5 and top["head"].iloc[0] == f"{layer}.{head}"
    # a clicked cell opens its head
    at = click_chart(at, heat(at)[0], {"layer": 3, "head": 4})
    assert at.selectbox(key="pat_layer_patch").value == 3 and at.selectbox(key="pat_head_patch").value == 4


def test_summaries_speak_plainly(tiny_runs):
    """Point 8: no code names in what a teacher reads."""
    for r in (tiny_runs["noise"], tiny_runs["head_pos"]):
        at = show(r, direction="noise", sweep=r.sweep)
        words = " ".join(texts(at)) + " ".join(str(chart_spec(c).get("title")) for c in charts(at))
        for jargon in ("logit_diff", "— denoise", "— noise", "prob is", "layer_pos", "head_pos"):
            assert jargon not in words, jargon
    for sentence in summarize(tiny_runs["noise"]):
        assert "logit_diff" not in sentence
