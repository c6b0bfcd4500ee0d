"""The circuit's charts (patchcore/circuit_charts.py): where nodes sit, that the graph draws the top
K edges between the right points, the faithfulness curve's K marker, the sites a node stands for,
the exported graph; and the circuit time estimate (patchcore/circuit_estimate.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from patchcore.circuit_charts import (EDGE_SELECT, NODE_SELECT, centre_x, circuit_graph, curve_frame,
                                      faithfulness_at, faithfulness_bounds, faithfulness_curve,
                                      graph_frames, graph_json, node_position, node_sites)
from patchcore.circuit_result import CircuitResult, node_info

L, H, KV = 3, 4, 2   # a grouped-query shape: key/value head G is read by query heads 2G, 2G+1
EDGES = [("input", "logits", 5.0), ("head:2.1", "logits", -4.0), ("mlp:0", "head:1.2:q", 3.0),
         ("head:0.3", "head:1.1:k", -2.0), ("mlp:0", "mlp:1", 1.5), ("head:1.2", "mlp:1", 1.0),
         ("input", "head:0.0:v", 0.5), ("head:0.1", "head:2.0:q", -0.25)]
CURVE = [(0, 0.0), (1, 0.3), (2, 0.45), (4, 0.7), (8, 1.0)]


def synthetic(top_k: int = 4, exact: dict | None = None) -> CircuitResult:
    """A result of a 3-layer, 4-head, 2-kv-head model with the edges above, strongest first."""
    ex = np.full(len(EDGES), np.nan)
    for i, v in (exact or {}).items():
        ex[i] = v
    return CircuitResult(
        model="tiny", method="eap-ig", steps=5, direction="denoise", metric="logit_diff",
        ablation="corrupted", n_pairs=2, n_layers=L, n_heads=H, n_kv_heads=KV, clean_metric=2.0,
        corrupted_metric=-1.0, sender=[e[0] for e in EDGES], receiver=[e[1] for e in EDGES],
        score=np.array([e[2] for e in EDGES]), exact=ex, top_k=top_k,
        curve=[{"edges": k, "faithfulness": f, "metric": -1 + 3 * f} for k, f in CURVE])


def pos(name: str) -> tuple[float, float]:
    return node_position(node_info(name, L, H, KV), L, H, KV)


# --------------------------------------------------------------------------- layout
def test_positions_layers_top_to_bottom_heads_by_index_mlp_beside():
    assert pos("input") == (1.5, -1.0) and pos("logits") == (1.5, L + 0.5)
    assert pos("head:1.2") == (2.0, 1.0) and pos("head:0.0") == (0.0, 0.0)
    x, y = pos("mlp:1")
    assert x > H - 1 and 1 < y < 2                     # right of the heads, below its layer's heads
    # every node of a layer sits between the layer above and the one below
    for layer in range(L):
        for name in (f"head:{layer}.3", f"mlp:{layer}", f"head:{layer}.1:q", f"head:{layer}.0:v"):
            assert layer - 1 < pos(name)[1] < layer + 1, name
    assert pos("input")[1] < min(pos(f"head:0.{h}:q")[1] for h in range(H))
    assert pos("logits")[1] > pos(f"mlp:{L - 1}")[1]


def test_ports_sit_above_the_heads_that_read_them():
    qx, qy = pos("head:1.2:q")
    assert qx == 2.0 and qy < 1.0                       # q: right above its own head
    kx, ky = pos("head:1.1:k")                          # kv head 1 = query heads 2 and 3
    vx, vy = pos("head:1.1:v")
    assert ky == vy == qy and kx < 2.5 < vx and 2 <= kx and vx <= 3
    # without grouped queries k and v flank their own head
    kx1, _ = node_position(node_info("head:0.2:k", 2, 4, 4), 2, 4, 4)
    vx1, _ = node_position(node_info("head:0.2:v", 2, 4, 4), 2, 4, 4)
    assert kx1 < 2 < vx1


@pytest.mark.parametrize("n_heads, want", [(4, 1.5), (9, 4.5), (12, 5.5), (1, 0.5)])
def test_input_and_logits_sit_between_two_head_columns(n_heads, want):
    assert centre_x(n_heads) == want


# --------------------------------------------------------------------------- the graph
@pytest.mark.parametrize("k", [1, 3, 5, len(EDGES)])
def test_graph_draws_the_top_k_edges_between_their_nodes(k):
    r = synthetic()
    nodes, edges, links = graph_frames(r, k)
    assert len(edges) == k and edges["rank"].tolist() == list(range(1, k + 1))
    assert edges.sender.tolist() == r.sender[:k] and edges.receiver.tolist() == r.receiver[:k]
    assert np.allclose(edges.score, r.score[:k])
    for e in edges.itertuples():
        assert (e.x, e.y) == pos(e.sender) and (e.x2, e.y2) == pos(e.receiver)
    assert set(nodes.name) == set(r.sender[:k]) | set(r.receiver[:k])
    for n in nodes.itertuples():
        assert (n.x, n.y) == pos(n.name)
        mine = edges[(edges.sender == n.name) | (edges.receiver == n.name)]
        assert n.edges == len(mine)
        assert math.isclose(n.score_out, edges[edges.sender == n.name].abs_score.sum())
    # every port is linked to each head that reads it
    for port in nodes[nodes.kind.isin(["q", "k", "v"])].name:
        heads = node_info(port, L, H, KV)["heads"]
        assert sorted(links[links.port == port]["head"]) == sorted(heads)


def test_graph_chart_layers_selections_and_highlight():
    r = synthetic(exact={0: 4.5})
    spec = circuit_graph(r, 4, selected="mlp:0").to_dict()
    assert {p["name"] for p in spec["params"]} == {NODE_SELECT, EDGE_SELECT}
    datasets = list(spec["datasets"].values())
    edge_rows = next(d for d in datasets if d and "receiver" in d[0])
    assert len(edge_rows) == 4
    node_rows = next(d for d in datasets if d and "what" in d[0] and "chosen" in d[0])
    assert [n["name"] for n in node_rows if n["chosen"]] == ["mlp:0"]
    # a selected edge is outlined: the rows carry it as chosen
    spec = circuit_graph(r, 4, selected="edge:2").to_dict()
    chosen = [d for d in spec["datasets"].values() if d and "chosen" in d[0] and "receiver" in d[0]]
    assert [e["rank"] for e in chosen[0] if e["chosen"]] == [2]
    assert "4 strongest of 8 edges" in json.dumps(spec["title"])


def test_colours_and_widths_follow_the_score():
    r = synthetic()
    layer = circuit_graph(r, 8).to_dict()["layer"][0]
    colour, width = layer["encoding"]["color"], layer["encoding"]["strokeWidth"]
    assert colour["field"] == "score" and width["field"] == "abs_score"
    lo, mid, hi = colour["scale"]["domain"]
    assert lo == -hi and mid == 0 and colour["scale"]["clamp"]
    assert colour["scale"]["range"][0] != colour["scale"]["range"][2]      # two signs, two colours
    assert width["scale"]["range"][0] < width["scale"]["range"][1]


def test_node_sites_for_the_hypothesis_check():
    assert node_sites(["input", "head:2.1", "mlp:0", "logits"], H, KV) == ["head:2.1", "mlp:0"]
    assert node_sites(["head:1.2:q", "head:1.2"], H, KV) == ["head:1.2"]              # no repeats
    assert node_sites(["head:1.1:k"], H, KV) == ["head:1.2", "head:1.3"]             # its query heads
    assert node_sites(["head:0.1:v"], 9, 3) == ["head:0.3", "head:0.4", "head:0.5"]


# --------------------------------------------------------------------------- faithfulness
def test_curve_marks_k_with_its_faithfulness():
    r = synthetic(top_k=4)
    spec = faithfulness_curve(r, 4).to_dict()
    rows = [d for d in spec["datasets"].values() if d and "text" in d[0]]
    assert rows and rows[0][0]["edges"] == 4 and rows[0][0]["text"] == "K = 4: 0.70"
    assert math.isclose(rows[0][0]["faithfulness"], 0.7)
    # the diamond at (K, faithfulness) is drawn only where it is known
    marks = [layer["mark"] for layer in spec["layer"]]
    assert any(isinstance(m, dict) and m.get("shape") == "diamond" for m in marks)
    spec = faithfulness_curve(r, 3).to_dict()
    rows = [d for d in spec["datasets"].values() if d and "text" in d[0]]
    assert rows[0][0]["text"] == "K = 3" and rows[0][0]["edges"] == 3
    assert not any(isinstance(layer["mark"], dict) and layer["mark"].get("shape") == "diamond"
                   for layer in spec["layer"])
    assert spec["layer"][2]["encoding"]["x"]["scale"]["type"] == "symlog"


def test_faithfulness_lookups_and_measured_points():
    r = synthetic()
    assert faithfulness_at(r, 2) == 0.45 and faithfulness_at(r, 3) is None
    assert faithfulness_bounds(r, 3) == ((2, 0.45), (4, 0.7))
    assert faithfulness_bounds(r, 0)[0] is None
    extra = [{"edges": 3, "faithfulness": 0.5, "metric": 0.5}, {"edges": 4, "faithfulness": 9.0, "metric": 0}]
    assert faithfulness_at(r, 3, extra) == 0.5
    assert faithfulness_at(r, 4, extra) == 0.7                  # the run's own point wins
    df = curve_frame(r, extra)
    assert df.edges.tolist() == [0, 1, 2, 3, 4, 8] and df.source.tolist().count("measured") == 1


def test_graph_json_export():
    r = synthetic(exact={1: -3.5})
    d = graph_json(r, 4)
    json.dumps(d, allow_nan=False)
    assert d["k"] == 4 and d["faithfulness"] == 0.7 and d["n_edges_total"] == len(EDGES)
    assert [e["rank"] for e in d["edges"]] == [1, 2, 3, 4]
    assert d["edges"][1]["exact"] == -3.5 and "exact" not in d["edges"][0]
    assert {n["name"] for n in d["nodes"]} == set(r.sender[:4]) | set(r.receiver[:4])
    assert next(n for n in d["nodes"] if n["name"] == "head:1.1:k")["sites"] == "head:1.2,head:1.3"


def test_svg_export_draws_nodes_and_edges():
    from patchcore.charts import chart_svg
    svg = chart_svg(circuit_graph(synthetic(), 5))
    assert svg.lstrip().startswith("<svg") and svg.count("<path") >= 5
    assert "Circuit: the 5 strongest" in svg


# --------------------------------------------------------------------------- estimate
def test_circuit_estimate_grows_with_the_work():
    from tiny import tiny_model
    from patchcore.circuit_estimate import circuit_units, estimate_circuit_seconds
    from patchcore.interventions import prepare_pairs
    import patchcore as pc
    m = tiny_model("llama")
    one = prepare_pairs(m, [pc.DEFAULT_PAIR])
    base = circuit_units(m, one, "eap-ig", 5, 0, 16, 50)
    assert base > 0
    assert circuit_units(m, one, "eap-ig", 10, 0, 16, 50) > base
    assert circuit_units(m, one, "eap", 5, 0, 16, 50) < base            # EAP: one gradient row
    assert circuit_units(m, one, "eap-ig", 5, 20, 16, 50) > base
    assert math.isclose(circuit_units(m, one * 3, "eap-ig", 5, 0, 16, 50), 3 * base)
    seconds, raw = estimate_circuit_seconds(m, one, "eap-ig", steps=5)
    assert seconds > 0 and raw > 0
