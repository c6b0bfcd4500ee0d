"""AppTest: the Paths page – senders and receivers in plain words, kept in the URL; the cost
before a run; Run with progress and Cancel; the heatmap with its summary, the senders →
receivers graph and downloads; a group of senders; a dataset; the history."""
import json

import numpy as np
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from app_helpers import (ROOT, TIMEOUT, chart_spec, charts, errors, isolated_history,  # noqa: F401
                         no_exception, plain, run_job, run_result, run_to_end, texts, wait_for_job)
from patchcore import DEFAULT_PAIR
from patchcore.history import History
from patchcore.path_report import path_story
from patchcore.paths import run_path
from patchcore.summary import num, patch_summary

pytestmark = pytest.mark.embedded
PATHS = "pages/6_Paths.py"


def open_paths(**params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.switch_page(PATHS).run()
    no_exception(at)
    return at


def frames(chart) -> list:
    """Every data table of a (layered) chart, as the browser receives them."""
    return [convert_arrow_bytes_to_pandas_df(ds.data.data) for ds in chart.proto.datasets]


def graph_table(at, column: str):
    """The graph's edges (column 'receiver') or nodes (column 'role'), as records."""
    (graph,) = titled(at, "Senders → receivers")
    return next(f for f in frames(graph) if column in f.columns).to_dict("records")


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def titled(at, words: str) -> list:
    return [c for c in charts(at) if words in json.dumps(chart_spec(c).get("title", ""), ensure_ascii=False)]


@pytest.mark.timeout(1800)
def test_the_head_sweep_to_the_logits_shows_who_acts_directly(embedded):
    at = open_paths()
    assert at.radio(key="w_paths_smode").value == "heads" and at.radio(key="w_paths_rmode").value == "logits"
    assert metrics(at) | {"Estimated time": ""} == {"Paths": "270", "Pairs": "1", "Forward rows": "272",
                                                    "Estimated time": ""}
    assert any("acts on the answer directly" in c.value for c in at.caption)   # what the choice means
    run_to_end(at, "run_paths", "paths")
    result = run_result(at, "paths")
    want = run_path(embedded, DEFAULT_PAIR, "head:*", "logits")
    np.testing.assert_allclose(result.values, want.values, atol=1e-4)
    assert result.path == {"senders": "head:*", "receivers": ["logits"]}
    (heat,) = titled(at, "Path patching")
    assert "Path patching, attention heads → logits" in json.dumps(chart_spec(heat)["title"], ensure_ascii=False)
    story = path_story(result)
    assert story.startswith("Heads that act on the answer directly: head 23.3")
    assert "• " + story in texts(at)
    edges = graph_table(at, "receiver")
    assert len(edges) == 6 and {e["receiver"] for e in edges} == {"logits"}
    assert edges[0]["sender"] == "head:23.3" and edges[0]["width"] == pytest.approx(abs(want.normalized[23, 3]))
    assert {b.label for b in at.get("download_button")} >= {"CSV", "JSON", "PNG", "SVG", "Graph PNG", "Graph SVG"}
    at.slider(key="w_paths_top").set_value(3).run()
    assert len(graph_table(at, "receiver")) == 3
    (rec,) = History().list()
    stored = History().get(rec.id)
    assert rec.kind == "single" and stored.settings["senders"] == "head:*" and stored.settings["page"] == "paths"
    assert stored.open().path == result.path


def test_settings_live_in_the_url_and_a_link_sets_them():
    at = open_paths(senders="mlp:*", receivers="head:20.0:q", direction="noise", ablation="zero")
    assert at.radio(key="w_paths_smode").value == "mlps"
    assert at.radio(key="w_paths_rmode").value == "inputs" and at.text_input(key="w_paths_rlist").value == "head:20.0:q"
    assert at.radio(key="w_paths_direction").value == "noise" and at.selectbox(key="w_paths_ablation").value == "zero"
    assert metrics(at)["Paths"] == "30" and metrics(at)["Forward rows"] == str(2 + 30 * 2)
    assert any("off the distribution" in w.value for w in at.warning)   # the ablation's caveat
    at.radio(key="w_paths_smode").set_value("layer").run()
    at.number_input(key="w_paths_layer").set_value(12).run()
    assert at.query_params["senders"] == "head:12.*" and metrics(at)["Paths"] == "9"
    at.radio(key="w_paths_rmode").set_value("logits").run()
    assert "receivers" not in at.query_params and metrics(at)["Forward rows"] == str(2 + 9)
    at.radio(key="w_paths_rmode").set_value("inputs").run()
    at.text_input(key="w_paths_rlist").input("head:20.0, mlp:25").run()
    assert at.query_params["receivers"] == "head:20.0, mlp:25"
    assert metrics(at)["Forward rows"] == str(2 + 9 * 2)
    link = dict(at.query_params)
    again = open_paths(**link)   # another browser opens the link: the same settings
    assert again.radio(key="w_paths_smode").value == "layer" and again.number_input(key="w_paths_layer").value == 12
    assert metrics(again) == metrics(at) | {"Estimated time": metrics(again)["Estimated time"]}


def test_bad_senders_and_receivers_are_one_line():
    at = open_paths(senders="resid:3", receivers="head:1.2:x")
    assert at.radio(key="w_paths_smode").value == "heads" and at.radio(key="w_paths_rmode").value == "logits"
    notice = plain(at.warning[0].value)
    assert "'senders' = 'resid:3' was ignored ('resid:3': senders are heads or MLPs" in notice
    assert "'receivers' = 'head:1.2:x' was ignored" in notice
    at.radio(key="w_paths_smode").set_value("list").run()
    at.text_input(key="w_paths_slist").input("head:99.1").run()
    assert errors(at) == ["'head:99.1': layer 99 does not exist; this model has layers 0–29."]
    assert at.button(key="run_paths").disabled and at.text_input(key="w_paths_slist").value == "head:99.1"
    at.text_input(key="w_paths_slist").input("").run()
    assert errors(at) == ["Type at least one sender (e.g. head:9.6), or choose a sweep of senders."]
    at.text_input(key="w_paths_slist").input("head:23.3").run()
    at.radio(key="w_paths_rmode").set_value("inputs").run()
    at.text_input(key="w_paths_rlist").input("head:20.0:x").run()
    assert len(errors(at)) == 1 and errors(at)[0].startswith("'head:20.0:x': a head's inputs are q, k and v.")
    at.text_input(key="w_paths_rlist").input("head:20.0:q").run()
    at.selectbox(key="w_paths_ablation").select("resample").run()
    assert at.button(key="run_paths").disabled and "one pair has none" in errors(at)[0]


def test_a_group_of_senders_is_one_score_with_its_summary_and_graph(embedded):
    at = open_paths(senders="head:23.3,head:29.1", receivers="logits")
    assert at.radio(key="w_paths_smode").value == "list" and metrics(at)["Paths"] == "1"
    at.button(key="run_paths").click().run()
    wait_for_job(at, "paths")
    no_exception(at)
    assert errors(at) == []
    want = run_path(embedded, DEFAULT_PAIR, "head:23.3,head:29.1", "logits")
    assert metrics(at)["Normalised score"] == num(want.normalized, ".3f")
    for sentence in patch_summary(want):
        assert "• " + sentence in texts(at)
    assert texts(at)[1].startswith("• Path patching from head:23.3, head:29.1 (the direct path")
    nodes = graph_table(at, "role")
    assert [(n["id"], n["layer"]) for n in nodes] == [("head:23.3", 23), ("head:29.1", 29), ("logits", 30)]
    assert History().list()[0].kind == "patch"


@pytest.mark.timeout(1800)
def test_on_the_current_dataset(embedded, single_thread):
    at = open_paths()
    at.radio(key="w_paths_on").set_value("dataset").run()
    assert any("No dataset in this session yet" in i.value for i in at.info) and at.button(key="run_paths").disabled
    at.switch_page("pages/4_Datasets.py").run()
    at.number_input(key="w_ds_n").set_value(3).run()
    ds = at.session_state["_ds_ioi"]
    at.switch_page(PATHS).run()
    at.radio(key="w_paths_on").set_value("dataset").run()
    at.radio(key="w_paths_smode").set_value("mlps").run()
    assert metrics(at)["Pairs"] == "3" and metrics(at)["Paths"] == "30"
    at.button(key="run_paths").click().run()
    wait_for_job(at, "paths")
    no_exception(at)
    assert errors(at) == []
    result = run_result(at, "paths")
    want = run_path(embedded, ds, "mlp:*", "logits")
    assert result.n_pairs == 3
    np.testing.assert_allclose(result.values, want.values, atol=1e-4)
    np.testing.assert_allclose(result.normalized_low, want.normalized_low, atol=1e-6)
    assert any(plain(m.value).strip("*") == path_story(want) for m in at.markdown)
    assert titled(at, "mean of 3 pairs") and titled(at, "Senders → receivers")
    assert History().list()[0].kind == "dataset"


def test_a_model_named_with_markup_is_text_on_the_paths_page():
    from test_app_stored_strings import HOSTILE, assert_all_text
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    at.run()
    at.session_state["model"] = HOSTILE["model"]
    at.switch_page(PATHS).run()
    no_exception(at)
    assert HOSTILE["model"] in assert_all_text(at)
    assert not at.button(key="run_paths").disabled      # Run loads it (and says why it cannot)


def test_cancel_stops_a_path_run_and_the_model_stays_usable():
    at = open_paths()   # 270 paths in batches: Cancel acts between them
    at.button(key="run_paths").click().run()
    job = run_job(at, "paths")
    assert job.running and at.get("progress")
    at.button(key="cancel_paths").click().run()
    assert job.cancel.is_set()
    wait_for_job(at, "paths", timeout=300)
    no_exception(at)
    assert any("cancelled" in i.value for i in at.info)
    assert run_result(at, "paths") is None and not titled(at, "Path patching")
    assert History().list() == []       # nothing stored
    at.radio(key="w_paths_smode").set_value("mlps").run()   # and the next run works
    at.button(key="run_paths").click().run()
    wait_for_job(at, "paths")
    assert run_result(at, "paths").path["senders"] == "mlp:*"
