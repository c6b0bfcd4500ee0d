"""AppTest: the Datasets page (generate IOI pairs, run both directions, click a cell for the strip
plot, quadrants, stored in the history) and the History page (list, search, reopen by link,
compare, delete, bad links), with a history file in a temporary folder."""
import json

import numpy as np
import pytest

from app_helpers import chart_data, chart_spec, charts, click_chart, errors, no_exception, open_app, texts, wait_for_job
from patchcore.dataset_run import run_both
from patchcore.ioi import generate_ioi
from patchcore.engine import run_sweep
from patchcore.history import History
from patchcore.prompts import PromptPair
from tiny import tiny_model

DATASETS = "pages/4_Datasets.py"
HISTORY = "pages/5_History.py"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHCORE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PATCHCORE_HISTORY_DB", raising=False)
    monkeypatch.delenv("PATCHCORE_NO_HISTORY", raising=False)
    return tmp_path / "data"


def widget(items, label):
    (w,) = [x for x in items if x.label == label]
    return w


def open_page(path, **params):
    at = open_app(**params)
    at.switch_page(path).run()
    no_exception(at)
    return at


@pytest.mark.embedded
def test_datasets_page_runs_ioi_both_directions(data_dir, single_thread):
    at = open_page(DATASETS)
    assert at.title[0].value == "Datasets" and errors(at) == []
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs"] == "20"
    widget(at.number_input, "Number of pairs").set_value(2).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs"] == "2"
    assert int(metrics["Patches"].replace(",", "")) > 0
    assert any("not a single token" in i.value for i in at.info)  # SmolLM2 splits some IOI names
    widget(at.button, "Run dataset").click().run()
    wait_for_job(at, "dataset")
    no_exception(at)
    assert errors(at) == []
    assert any("Stored as run 1" in s.value for s in at.success)
    assert History().count() == 1 and History().list()[0].kind == "both"
    heat = [c for c in charts(at) if "mean of 2 pairs" in str(chart_spec(c).get("title", ""))]
    assert len(heat) == 2  # denoising and noising side by side
    data = chart_data(heat[0])
    assert {"low", "high", "certain", "n_pairs"} <= set(data.columns)
    assert (data["low"] <= data["normalized"] + 1e-9).all() and (data["normalized"] <= data["high"] + 1e-9).all()
    assert "S2" in chart_spec(heat[0])["layer"][0]["encoding"]["x"]["axis"]["labelExpr"]
    quad = [c for c in charts(at) if "Quadrants" in str(chart_spec(c).get("title", ""))]
    assert len(quad) == 1
    body = " ".join(texts(at))
    assert "Averaged over 2 generated IOI pairs" in body and "Needed and enough" in body
    # click S2 at layer 3: every pair's value there, for both directions
    s2 = list(chart_data(heat[0]).drop_duplicates("position")["token"]).index("S2")
    at = click_chart(at, heat[0], {"layer": 3, "position": s2})
    no_exception(at)
    strips = [c for c in charts(at) if "every pair (2)" in str(chart_spec(c).get("title", ""))]
    assert len(strips) == 2
    assert "S2 at layer 3" in str(chart_spec(strips[0])["title"])
    heads = [m.value.replace("\\", "") for m in at.markdown if m.value.startswith("**Selected cell")]
    assert heads == ["**Selected cell: S2 at layer 3**"] * 2  # one detail box per direction


@pytest.mark.embedded
def test_datasets_page_runs_the_resample_ablation_and_stores_it(data_dir, single_thread, embedded):
    """The ablation chosen on the Datasets page reaches the run: resample draws from the set's
    other pairs (the Patching page sends users here for it), the same numbers as run_dataset."""
    from patchcore.dataset_run import run_dataset
    from patchcore.datasets import for_sweep
    at = open_page(DATASETS)
    widget(at.number_input, "Number of pairs").set_value(4).run()
    at.selectbox(key="w_ds_sweep").select("mlp").run()
    at.radio(key="w_ds_directions").set_value("denoise").run()
    at.selectbox(key="w_ds_ablation").select("resample").run()
    assert at.query_params.get("ablation") in ("resample", ["resample"])   # the link keeps it
    widget(at.button, "Run dataset").click().run()
    wait_for_job(at, "dataset")
    no_exception(at)
    assert errors(at) == []
    from patchcore.results import result_from_json
    (info,) = History().list()
    rec = History().get(info.id)
    assert rec.settings["ablation"] == "resample"
    got = result_from_json(rec.result)
    want = run_dataset(embedded, for_sweep(generate_ioi(embedded.tokenizer, 4, seed=0), False, embedded.tokenizer),
                       "mlp", "denoise", "logit_diff", n_boot=1000, ablation="resample")
    assert got.ablation == want.ablation == "resample"
    np.testing.assert_allclose(got.values, want.values, atol=1e-4)
    # another ablation would give other numbers: the choice really reached the engine
    plain = run_dataset(embedded, for_sweep(generate_ioi(embedded.tokenizer, 4, seed=0), False, embedded.tokenizer),
                        "mlp", "denoise", "logit_diff", n_boot=1000)
    assert np.abs(plain.values - got.values).max() > 1e-3


def _seed_history(path):
    m = tiny_model("gpt2", seed=3)
    h = History(path)
    hostile = PromptPair("**bold** <b>tag</b> [link](http://x) John and Mary went to the store, Mary gave a ring to",
                         "**bold** <b>tag</b> [link](http://x) John and Mary went to the store, John gave a ring to",
                         " John", " Mary")
    single = h.save(run_sweep(m, hostile, "layer_pos"), source="cli")
    a = h.save(run_both(m, generate_ioi(m.tokenizer, 3, seed=0), "layer_pos", n_boot=200), source="dashboard")
    b = h.save(run_both(m, generate_ioi(m.tokenizer, 3, seed=1), "layer_pos", n_boot=200), source="dashboard")
    return h, single, a, b, hostile


def test_history_page_list_search_reopen_compare_delete(data_dir, single_thread):
    h, single, a, b, hostile = _seed_history(data_dir / "history.sqlite3")
    at = open_page(HISTORY)
    assert at.title[0].value == "History" and errors(at) == []
    table = at.dataframe[0].value
    assert list(table["id"]) == [b, a, single]
    # titles in words, with the metric (issue 16, point 13), and columns sized for their text
    assert table["title"].iloc[0].startswith("Residual stream, layer × position, both directions, "
                                             "logit difference – IOI ×3")
    widths = {k: v.get("width") for k, v in json.loads(at.dataframe[0].proto.columns).items()}
    assert widths["title"] == "large" and all(widths[c] for c in table.columns), widths
    widget(at.text_input, "Search runs").input("ioi seed 1").run()
    assert list(at.dataframe[0].value["id"]) == [b]
    widget(at.text_input, "Search runs").input("").run()

    # reopen run a by choosing it
    widget(at.selectbox, "Open run").set_value(a).run()
    no_exception(at)
    assert at.query_params["run"] == [str(a)] or at.query_params["run"] == str(a)
    assert at.subheader[0].value == f"Run {a}"
    heat = [c for c in charts(at) if "mean of 3 pairs" in str(chart_spec(c).get("title", ""))]
    assert len(heat) == 2
    stored = h.get(a).open()
    got = chart_data(heat[0]).sort_values(["layer", "position"])["normalized"].to_numpy()
    np.testing.assert_allclose(got, stored.denoise.normalized.reshape(-1), atol=1e-9)

    # compare with run b: a difference heatmap of A - B
    widget(at.selectbox, "Run B").set_value(b).run()
    no_exception(at)
    diff = [c for c in charts(at) if "Difference" in str(chart_spec(c).get("title", ""))]
    assert len(diff) == 1
    d = chart_data(diff[0]).sort_values(["layer", "position"])
    other = h.get(b).open()
    np.testing.assert_allclose(d["diff"].to_numpy(),
                               (stored.denoise.normalized - other.denoise.normalized).reshape(-1), atol=1e-9)
    # the single IOI-like pair (another length) is lined up with the dataset by role
    widget(at.selectbox, "Run B").set_value(single).run()
    no_exception(at)
    assert errors(at) == []
    assert any("matched by role" in i.value for i in at.info)
    diff = [c for c in charts(at) if "Difference" in str(chart_spec(c).get("title", ""))]
    d = chart_data(diff[0]).sort_values(["layer", "position"])
    from patchcore.compare import compare
    want = compare(stored, h.get(single).open(), direction="denoise").frame.sort_values(["layer", "position"])
    np.testing.assert_allclose(d["diff"].to_numpy(dtype=float), want["diff"].to_numpy(), atol=1e-9)
    # a run of another sweep cannot be compared: a message, not a traceback
    other_sweep = h.save(run_sweep(tiny_model("gpt2", seed=3), hostile, "head"), source="cli")
    at = open_page(HISTORY, run=str(a))
    widget(at.selectbox, "Run B").set_value(other_sweep).run()
    no_exception(at)
    assert any("different shapes" in e or "do not correspond" in e for e in errors(at))

    # delete needs a confirmation
    widget(at.button, "Delete run").click().run()
    widget(at.button, "Yes, delete it").click().run()
    no_exception(at)
    assert h.count() == 3 and a not in [r.id for r in h.list()]
    assert "run" not in at.query_params


def test_history_link_reopens_a_single_run_and_shows_prompts_as_text(data_dir, single_thread):
    h, single, a, b, hostile = _seed_history(data_dir / "history.sqlite3")
    at = open_page(HISTORY, run=str(single))
    assert errors(at) == []
    assert at.subheader[0].value == f"Run {single}"
    assert any(hostile.clean[:40] in t for t in texts(at))  # shown verbatim, as text
    assert not any("<b>tag</b>" in m.value or "**bold**" in m.value for m in at.markdown)
    heat = [c for c in charts(at) if "layer × position" in str(chart_spec(c).get("title", ""))]
    assert heat
    # a link to a run that does not exist: a warning, the page still works
    at = open_page(HISTORY, run="999")
    assert any("Run 999 does not exist" in w.value for w in at.warning)
    assert errors(at) == []


def test_history_page_empty(data_dir):
    at = open_page(HISTORY)
    assert errors(at) == []
    assert any("No stored runs yet" in i.value for i in at.info)
