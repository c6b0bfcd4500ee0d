"""AppTest: the Circuit page (issue 15) – defaults and their cost, links, a run with progress, the
graph and curve it draws, clicks on nodes and edges, the K slider and faithfulness at any K, the
history, sending nodes to the hypothesis check, Cancel, and the one-line refusal of Gemma 2/3."""
from __future__ import annotations

import json

import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest

from app_helpers import (ROOT, TIMEOUT, chart_spec, charts, errors, isolated_history,  # noqa: F401
                         no_exception, plain, run_result, run_to_end, texts, wait_for_job)
from patchcore.circuit_charts import EDGE_SELECT, NODE_SELECT
from patchcore.history import History

pytestmark = pytest.mark.embedded
PAGE = "pages/7_Circuit.py"
QUICK = {"c_n": "2", "c_method": "eap", "c_points": "4", "c_check": "3"}   # seconds, not minutes


def open_circuit(**params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.switch_page(PAGE)
    return at.run()


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def graph_and_curve(at):
    """The graph and the curve, as the browser receives them."""
    found = [c for c in charts(at)]
    graph = [c for c in found if {p.get("name") for p in chart_spec(c).get("params", [])} >=
             {NODE_SELECT, EDGE_SELECT}]
    curve = [c for c in found if "Faithfulness" in json.dumps(chart_spec(c).get("title", ""))]
    assert len(graph) == 1 and len(curve) == 1, [chart_spec(c).get("title") for c in found]
    return graph[0], curve[0]


def rows(chart, field: str) -> list[dict]:
    """The rows of the chart's dataset that has `field` (edges: 'receiver'; nodes: 'what')."""
    for ds in chart.proto.datasets:
        df = convert_arrow_bytes_to_pandas_df(ds.data.data)
        if field in df.columns:
            return df.to_dict("records")
    raise AssertionError(f"no dataset with {field!r}")


def click(at: AppTest, selection: dict) -> AppTest:
    """What a click on the graph sends: its selection state, every other widget unchanged. (The
    browser sends both selections, the one not clicked as [{}].)"""
    (chart,) = [c for c in charts(at) if {p.get("name") for p in chart_spec(c).get("params", [])} >=
                {NODE_SELECT, EDGE_SELECT}]
    states = WidgetStates()
    states.widgets.extend(w for w in at._tree.get_widget_states().widgets if w.id != chart.proto.id)
    ws = states.widgets.add()
    ws.id = chart.proto.id
    ws.string_value = json.dumps({"selection": selection})
    return at._run(states)


def run_quick(**extra) -> AppTest:
    at = open_circuit(**QUICK, **extra)
    no_exception(at)
    run_to_end(at, "c_run", "circuit")
    return at


def test_defaults_explainer_and_estimate_before_running():
    at = open_circuit()
    no_exception(at)
    assert errors(at) == []
    assert at.radio(key="w_c_method").value == "eap-ig"
    assert at.number_input(key="w_c_steps").value == 5
    assert at.number_input(key="w_c_n").value == 8
    assert at.slider(key="w_c_k_run").value == 50
    m = metrics(at)
    assert m["Pairs"] == "8" and m["Edges scored"] == "70,651"
    assert m["Estimated time"].startswith("~") and m["Estimated time"].endswith(("s", "min"))
    md = " ".join(x.value for x in at.markdown)
    for words in ("**edge**", "**circuit**", "**Faithfulness**", "EAP-IG"):
        assert words in md, words
    assert not any(k.startswith("c_") for k in at.query_params)   # defaults stay out of the URL
    # the current pair instead of generated ones
    at.radio(key="w_c_pairs").set_value("pair").run()
    assert metrics(at)["Pairs"] == "1" and at.query_params["c_pairs"] == "pair"
    assert any("Mary gave a bottle of milk to" in t for t in texts(at))


def test_link_sets_the_settings_and_bad_values_fall_back_with_a_notice():
    at = open_circuit(c_method="eap", c_n="3", c_k="20", c_ablation="mean", c_steps="lots", c_pairs="nope",
                      c_sel="head:1.2;drop")
    no_exception(at)
    assert at.radio(key="w_c_method").value == "eap"
    assert at.number_input(key="w_c_n").value == 3 and at.slider(key="w_c_k_run").value == 20
    assert at.selectbox(key="w_c_ablation").value == "mean"
    warned = " ".join(plain(w.value) for w in at.warning)
    for key in ("c_steps", "c_pairs", "c_sel"):
        assert key in warned, warned
    assert dict(at.query_params) == {"c_method": "eap", "c_n": "3", "c_k": "20", "c_ablation": "mean"}
    assert metrics(at)["Pairs"] == "3"


@pytest.mark.timeout(1800)
def test_run_draws_graph_and_curve_clicks_k_slider_and_history():
    at = run_quick()
    run = run_result(at, "circuit")
    r = run.result
    assert (r.method, r.n_pairs, r.top_k, r.check_top) == ("eap", 2, 50, 3)
    graph, curve = graph_and_curve(at)
    edges = rows(graph, "receiver")
    assert len(edges) == 50 and [e["sender"] for e in edges] == r.sender[:50]
    marker = rows(curve, "text")[0]
    assert marker["edges"] == 50 and marker["text"] == f"K = 50: {r.faithfulness(50):.2f}"
    assert metrics(at)["Faithfulness of the top 50 edges"] == f"{r.faithfulness(50):.2f}"
    assert any(s.value.startswith("Stored as run") for s in at.success)
    assert any(t.startswith("Circuit discovery with EAP") for t in texts(at))

    # a click on a node: its numbers; on an edge: score and the exact check
    top_sender = r.sender[0]
    at = click(at, {NODE_SELECT: [{"name": top_sender}], EDGE_SELECT: [{}]})
    no_exception(at)
    assert at.session_state["c_sel"] == top_sender and at.query_params["c_sel"] == top_sender
    md = " ".join(plain(x.value) for x in at.markdown)
    assert f"Selected node: {top_sender}" in md
    assert int(metrics(at)["edges in the circuit"]) >= 1
    at = click(at, {NODE_SELECT: [{}], EDGE_SELECT: [{"rank": 1}]})
    md = " ".join(plain(x.value) for x in at.markdown)
    assert f"Selected edge: {r.sender[0]} → {r.receiver[0]}" in md
    m = metrics(at)
    assert m["score"] == f"{r.score[0]:+.3f}" and m["exact"] == f"{r.exact[0]:+.3f}"
    graph, _ = graph_and_curve(at)
    assert [e["rank"] for e in rows(graph, "receiver") if e.get("chosen")] == [1]

    # K slider: fewer edges drawn, K marked; a size off the curve is measured on request
    at.slider(key="w_c_k").set_value(10).run()
    no_exception(at)
    assert at.query_params["c_k"] == "10"
    graph, curve = graph_and_curve(at)
    assert len(rows(graph, "receiver")) == 10 and rows(curve, "text")[0]["edges"] == 10
    assert metrics(at)["Faithfulness of the top 10 edges"] == "not measured"
    at.button(key="c_measure_circuit").click().run()
    wait_for_job(at, "circuit_faith")
    no_exception(at)
    f10 = metrics(at)["Faithfulness of the top 10 edges"]
    assert f10 not in ("not measured", "—")
    _, curve = graph_and_curve(at)
    assert rows(curve, "text")[0]["text"] == f"K = 10: {f10}"
    assert any(p["source"] == "measured" and p["edges"] == 10 for p in rows(curve, "source"))

    # the History page opens the stored circuit with the same viewer
    (info,) = History().list("", limit=10)
    assert info.kind == "circuit"
    hist = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    hist.query_params["run"] = str(info.id)
    hist.switch_page("pages/5_History.py").run()
    no_exception(hist)
    assert errors(hist) == []
    graph, curve = graph_and_curve(hist)
    assert [e["sender"] for e in rows(graph, "receiver")] == r.sender[:50]


@pytest.mark.timeout(1800)
def test_send_nodes_to_the_hypothesis_check():
    at = run_quick()
    r = run_result(at, "circuit").result
    picker = at.multiselect(key=[w.key for w in at.multiselect if w.key.startswith("c_sites_circuit")][0])
    assert picker.value and all(s.startswith(("head:", "mlp:")) for s in picker.value)
    picker.set_value(picker.value[:2]).run()
    chosen = at.multiselect(key=[w.key for w in at.multiselect if w.key.startswith("c_sites_circuit")][0]).value
    at.button(key="c_send_circuit").click().run()
    no_exception(at)
    assert at.session_state["hypothesis_sites"] == ",".join(chosen)
    assert at.session_state["sites"] == ",".join(chosen)     # the check's own selection key
    assert at.query_params.get("sites") == ",".join(chosen)
    assert any(t.value == "Patching" for t in at.title), "the hypothesis check (Patching page) opens"
    assert r.n_edges > 0


def test_cancel_stops_a_run_with_a_message():
    at = open_circuit(c_n="8")
    at.button(key="c_run").click().run()
    at.button(key="cancel_circuit").click().run()
    wait_for_job(at, "circuit")
    no_exception(at)
    assert any("cancelled" in i.value for i in at.info)
    assert run_result(at, "circuit") is None


def test_gemma_is_refused_in_one_line(monkeypatch):
    import ui
    from tiny import tiny_model
    gemma = tiny_model("gemma2")
    monkeypatch.setattr(ui, "auto_model", lambda where=None: gemma)
    at = open_circuit()
    no_exception(at)
    (err,) = errors(at)
    assert "Gemma 2" in err and "\n" not in err and "Traceback" not in err
    assert at.button(key="c_run").disabled


def test_the_datasets_page_pairs_can_be_used():
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    at.switch_page("pages/4_Datasets.py").run()             # builds 20 IOI pairs by default
    no_exception(at)
    at.switch_page(PAGE).run()
    no_exception(at)
    radio = at.radio(key="w_c_pairs")
    assert "The IOI pairs built on the Datasets page (20 pairs)" in radio.options, radio.options
    radio.set_value("ds_ioi").run()
    no_exception(at)
    assert metrics(at)["Pairs"] == "20" and at.query_params["c_pairs"] == "ds_ioi"
    # a link naming them, opened in another session, falls back to generated pairs and says so
    other = open_circuit(c_pairs="ds_ioi")
    no_exception(other)
    assert any("another browser session" in i.value for i in other.info)
    assert metrics(other)["Pairs"] == "8"
