"""Altair charts of a circuit (CircuitResult): the graph of the top K edges and the faithfulness curve.

The graph is drawn in layers, top to bottom: `input` above layer 0, `logits` below the last
layer. Within a layer, attention heads sit at x = head index and the MLP beside them (x =
n_heads + 0.6, a little lower: it reads the residual stream after that layer's heads). A
head's q/k/v receivers are small ports just above it; k and v count key/value heads, so on a
grouped-query model their port sits above the middle of the query heads that read it, and thin
grey links join every port to its head(s). An edge is a line from its sender to its receiver,
its width by |score| and its colour by the score's sign (red: the edge pushes the metric up
when it carries the source run's value; blue: down).

Selections (for st.altair_chart(on_select=...)): clicking a node selects `node` (field
`name`), clicking an edge selects `edge` (field `rank`, 1 = the strongest edge).

Everything here is pure computation on a CircuitResult: the dashboard, exports and tests share it.
"""
from __future__ import annotations

import json
import math

import altair as alt
import numpy as np
import pandas as pd

from .circuit_result import CircuitResult, node_info

NODE_SELECT = "node"
EDGE_SELECT = "edge"
PORT_RISE = 0.32          # ports sit this far above their head (in layers)
PORT_SPREAD = 0.26        # k left and v right of the middle of their query heads
MLP_DX = 0.6              # the MLP's column: this far right of the last head
MLP_DROP = 0.45           # the MLP sits this far below its layer's heads
WIDTH_RANGE = (0.8, 7.0)  # edge stroke width in pixels, by |score|
KINDS = {"input": "input embeddings", "head": "attention head", "mlp": "MLP", "logits": "logits",
         "q": "query input of a head", "k": "key input of key/value head", "v": "value input of key/value head"}
SHAPES = {"input": "diamond", "logits": "diamond", "head": "circle", "mlp": "square",
          "q": "triangle-down", "k": "triangle-down", "v": "triangle-down"}


# --------------------------------------------------------------------------- layout
def centre_x(n_heads: int) -> float:
    """The x of `input` and `logits`: the middle of the heads, between two columns."""
    return (n_heads - 1) / 2 + (0.5 if n_heads % 2 else 0.0)


def node_position(info: dict, n_layers: int, n_heads: int, n_kv_heads: int) -> tuple[float, float]:
    """(x, y) of a node (node_info's dict); y grows downwards (input -1, logits n_layers + 0.5)."""
    kind, layer, head = info["kind"], info["layer"], info["head"]
    if kind == "input":
        return centre_x(n_heads), -1.0
    if kind == "logits":
        return centre_x(n_heads), n_layers + 0.5
    if kind == "head":
        return float(head), float(layer)
    if kind == "mlp":
        return n_heads - 1 + MLP_DX, layer + MLP_DROP
    if kind == "q":
        return float(head), layer - PORT_RISE
    group = n_heads // max(1, n_kv_heads)                 # k / v: key/value head `head`
    middle = head * group + (group - 1) / 2
    return middle + (-PORT_SPREAD if kind == "k" else PORT_SPREAD), layer - PORT_RISE


def node_label(info: dict) -> str:
    kind = info["kind"]
    if kind in ("input", "logits"):
        return kind
    if kind == "mlp":
        return f"MLP {info['layer']}"
    if kind == "head":
        return f"{info['layer']}.{info['head']}"
    return ""                                              # ports: the tooltip names them


def describe_node(info: dict) -> str:
    """Plain words for a node."""
    kind, layer, head = info["kind"], info["layer"], info["head"]
    if kind == "input":
        return "The input embeddings: the words of the prompt, before any layer."
    if kind == "logits":
        return "The logits: the final residual stream, from which the model picks its next word."
    if kind == "head":
        return f"Attention head {head} of layer {layer}: what it writes into the residual stream."
    if kind == "mlp":
        return f"The MLP of layer {layer}: it reads the residual stream and writes back into it."
    heads = ", ".join(info.get("heads", []))
    what = {"q": "query", "k": "key", "v": "value"}[kind]
    return (f"The {what} input of layer {layer}'s " + (f"head {head}" if kind == "q" else
            f"key/value head {head}") + f": what the residual stream feeds into it (read by {heads}).")


def graph_frames(result: CircuitResult, k: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(nodes, edges, links) of the top k edges, with coordinates.

    nodes: name, kind, layer, head, x, y, label, shape, what, edges (in the top k), score_in and
    score_out (sums of |score| of its edges in / out), sites (head:L.H / mlp:L it stands for).
    edges: rank (1 = strongest), sender, receiver, score, abs_score, exact (NaN unless checked),
    x, y, x2, y2. links: a port to each head that reads it (x, y, x2, y2)."""
    sub = result.top(k)
    L, H, KV = result.n_layers, result.n_heads, result.n_kv_heads
    pos = {n["name"]: node_position(n, L, H, KV) for n in sub.nodes}
    rows = []
    for i, e in enumerate(sub.edges):
        (x, y), (x2, y2) = pos[e["sender"]], pos[e["receiver"]]
        rows.append({"rank": i + 1, "sender": e["sender"], "receiver": e["receiver"],
                     "score": e["score"], "abs_score": abs(e["score"]), "exact": e.get("exact", np.nan),
                     "x": x, "y": y, "x2": x2, "y2": y2})
    edges = pd.DataFrame(rows, columns=["rank", "sender", "receiver", "score", "abs_score", "exact",
                                        "x", "y", "x2", "y2"])
    nodes, links = [], []
    for n in sub.nodes:
        name = n["name"]
        ins = edges[edges.receiver == name]
        outs = edges[edges.sender == name]
        x, y = pos[name]
        nodes.append({"name": name, "kind": n["kind"], "layer": n["layer"],
                      "head": -1 if n["head"] is None else n["head"], "x": x, "y": y,
                      "label": node_label(n), "shape": SHAPES[n["kind"]], "what": describe_node(n),
                      "edges": int(len(ins) + len(outs)), "score_in": float(ins.abs_score.sum()),
                      "score_out": float(outs.abs_score.sum()), "sites": ",".join(node_sites([name], H, KV))})
        for h in n.get("heads", []):
            hx, hy = node_position(node_info(h, L, H, KV), L, H, KV)
            links.append({"port": name, "head": h, "x": x, "y": y, "x2": hx, "y2": hy})
    return (pd.DataFrame(nodes, columns=["name", "kind", "layer", "head", "x", "y", "label", "shape",
                                         "what", "edges", "score_in", "score_out", "sites"]),
            edges, pd.DataFrame(links, columns=["port", "head", "x", "y", "x2", "y2"]))


def node_sites(names, n_heads: int, n_kv_heads: int) -> list[str]:
    """Sites (patchcore.sites notation) that nodes stand for, in order, without repeats: a head
    and its q port are head:L.H, a k/v port every query head that reads it, an MLP mlp:L;
    input and logits are no site."""
    out: dict = {}
    for name in names:
        info = node_info(name, 1, n_heads, n_kv_heads)
        if info["kind"] == "head":
            out[name] = None
        elif info["kind"] == "mlp":
            out[f"mlp:{info['layer']}"] = None
        elif info["kind"] in ("q", "k", "v"):
            out.update(dict.fromkeys(info["heads"]))
    return list(out)


# --------------------------------------------------------------------------- the graph chart
def colour_extent(edges: pd.DataFrame) -> float:
    """|score| at which an edge's colour is full: the 90th percentile of the drawn edges, so one
    very strong edge does not wash every other one out (stronger ones stay full red or blue)."""
    a = edges.abs_score.to_numpy(dtype=float) if len(edges) else np.zeros(0)
    a = a[np.isfinite(a)]
    m = float(np.quantile(a, 0.9)) if len(a) else 0.0
    return m if m > 0 else 1.0


def _score_scale(edges: pd.DataFrame) -> alt.Scale:
    m = colour_extent(edges)
    return alt.Scale(domain=[-m, 0, m], range=["#2166ac", "#c8c8c8", "#b2182b"], clamp=True)


def circuit_graph(result: CircuitResult, k: int, selected: str | None = None,
                  width: int = 640) -> alt.LayerChart:
    """The top k edges as a layered graph (see the module docstring); `selected` (a node name or
    'edge:RANK') is outlined."""
    nodes, edges, links = graph_frames(result, k)
    L, H = result.n_layers, result.n_heads
    height = int(max(320, 24 * (L + 2)))
    x_scale = alt.Scale(domain=[-0.8, H - 1 + MLP_DX + 0.8], nice=False, zero=False)
    y_scale = alt.Scale(domain=[-1.6, L + 1.0], reverse=True, nice=False, zero=False)
    x_axis = alt.Axis(title="attention head (MLP at the right)", values=list(range(H)), grid=False,
                      orient="top", labelFlush=False)
    y_axis = alt.Axis(title="layer", values=list(range(L)), grid=True, gridOpacity=0.25, labelFlush=False)
    X = lambda f="x": alt.X(f"{f}:Q", scale=x_scale, axis=x_axis)  # noqa: E731
    Y = lambda f="y": alt.Y(f"{f}:Q", scale=y_scale, axis=y_axis)  # noqa: E731
    sel_rank = int(selected.split(":", 1)[1]) if selected and selected.startswith("edge:") and \
        selected.split(":", 1)[1].isdigit() else -1
    sel_node = selected if selected and not selected.startswith("edge:") else ""

    base_edges = alt.Chart(edges.assign(chosen=edges["rank"] == sel_rank))
    top = float(edges.abs_score.max()) if len(edges) else 1.0
    width_scale = alt.Scale(type="sqrt", domain=[0, top if math.isfinite(top) and top > 0 else 1.0],
                            range=list(WIDTH_RANGE), zero=True)
    drawn = base_edges.mark_rule(strokeCap="round").encode(
        x=X(), y=Y(), x2="x2:Q", y2="y2:Q",
        color=alt.Color("score:Q", scale=_score_scale(edges), legend=alt.Legend(
            title="edge score", orient="bottom", direction="horizontal", gradientLength=220)),
        strokeWidth=alt.StrokeWidth("abs_score:Q", scale=width_scale, legend=None),
        opacity=alt.condition("datum.chosen", alt.value(1.0), alt.value(0.75)))
    outline = base_edges.transform_filter("datum.chosen").mark_rule(
        strokeCap="round", color="#f58518").encode(
        x=X(), y=Y(), x2="x2:Q", y2="y2:Q",
        strokeWidth=alt.StrokeWidth("abs_score:Q", scale=width_scale, legend=None))
    edge_pick = alt.selection_point(name=EDGE_SELECT, fields=["rank"], on="click", clear="dblclick")
    edge_tip = [alt.Tooltip("rank:Q", title="rank"), alt.Tooltip("sender:N", title="from"),
                alt.Tooltip("receiver:N", title="to"), alt.Tooltip("score:Q", title="score", format="+.3f"),
                alt.Tooltip("exact:Q", title="exact", format="+.3f")]
    hits = alt.Chart(edges).mark_rule(strokeWidth=9, opacity=0.001, color="black").encode(
        x=X(), y=Y(), x2="x2:Q", y2="y2:Q", tooltip=edge_tip).add_params(edge_pick)
    ports = alt.Chart(links).mark_rule(color="#9e9e9e", strokeDash=[2, 2], strokeWidth=0.8).encode(
        x=X(), y=Y(), x2="x2:Q", y2="y2:Q")

    node_pick = alt.selection_point(name=NODE_SELECT, fields=["name"], on="click", clear="dblclick")
    small = nodes.kind.isin(["q", "k", "v"])
    node_tip = [alt.Tooltip("name:N", title="node"), alt.Tooltip("what:N", title="what"),
                alt.Tooltip("edges:Q", title="edges in the circuit"),
                alt.Tooltip("score_in:Q", title="|score| in", format=".3f"),
                alt.Tooltip("score_out:Q", title="|score| out", format=".3f")]
    points = alt.Chart(nodes.assign(size=np.where(small, 45, 260), chosen=nodes.name == sel_node)).mark_point(
        filled=True, opacity=1.0).encode(
        x=X(), y=Y(),
        shape=alt.Shape("shape:N", scale=None),
        size=alt.Size("size:Q", scale=None),
        color=alt.condition("datum.chosen", alt.value("#f58518"), alt.value("#3b3b3b")),
        stroke=alt.value("white"), strokeWidth=alt.value(1.2),
        tooltip=node_tip).add_params(node_pick)
    labels = alt.Chart(nodes[~small]).mark_text(align="left", baseline="middle", dx=9, dy=3, fontSize=10,
                                             color="#333").encode(
        x=X(), y=Y(), text="label:N")
    title = alt.TitleParams(
        f"Circuit: the {len(edges):,} strongest of {result.n_edges:,} edges",
        subtitle=[f"{result.model} · {_method(result)} · {result.n_pairs} pair(s) · {result.direction}, "
                  f"{result.metric}, ablation {result.ablation}",
                  "width and colour: the edge's score (red raises the metric, blue lowers it)"],
        anchor="start")
    return alt.layer(drawn, outline, ports, hits, points, labels).properties(
        width=width, height=height, title=title).configure_view(stroke=None)


def _method(result: CircuitResult) -> str:
    return f"EAP-IG ({result.steps} steps)" if result.method == "eap-ig" else "EAP"


# --------------------------------------------------------------------------- faithfulness
def curve_frame(result: CircuitResult, extra: list | None = None) -> pd.DataFrame:
    """The curve's points (edges, faithfulness, metric, source 'run' | 'measured'), k ascending;
    `extra` points (circuit_faithfulness) join those of the run, the run's win on ties."""
    rows = {int(p["edges"]): {**p, "source": "run"} for p in result.curve}
    for p in extra or []:
        rows.setdefault(int(p["edges"]), {**p, "source": "measured"})
    df = pd.DataFrame([rows[k] for k in sorted(rows)], columns=["edges", "faithfulness", "metric", "source"])
    return df.astype({"edges": int, "faithfulness": float, "metric": float})


def faithfulness_at(result: CircuitResult, k: int, extra: list | None = None) -> float | None:
    """The faithfulness of the top k edges if the run (or a later measurement) has it, else None."""
    df = curve_frame(result, extra)
    hit = df[df.edges == int(k)]
    return float(hit.faithfulness.iloc[0]) if len(hit) else None


def faithfulness_bounds(result: CircuitResult, k: int, extra: list | None = None) -> tuple:
    """The measured points around k: ((k_lo, f_lo), (k_hi, f_hi)) (None at an end)."""
    df = curve_frame(result, extra)
    lo, hi = df[df.edges < k], df[df.edges > k]
    return (None if lo.empty else (int(lo.edges.iloc[-1]), float(lo.faithfulness.iloc[-1])),
            None if hi.empty else (int(hi.edges.iloc[0]), float(hi.faithfulness.iloc[0])))


def faithfulness_curve(result: CircuitResult, k: int, extra: list | None = None,
                       width: int = 520, height: int = 320) -> alt.LayerChart:
    """Faithfulness against circuit size (symlog x), 0 and 1 marked, a rule and label at K; points
    measured after the run (`extra`) in green."""
    df = curve_frame(result, extra)
    ticks = [v for v in (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000)
             if v <= result.n_edges]
    x = alt.X("edges:Q", scale=alt.Scale(type="symlog", domain=[0, max(1, result.n_edges)], nice=False),
              axis=alt.Axis(title="edges kept (the top K, log scale)", grid=False, values=ticks,
                            labelExpr="datum.value >= 1000 ? (datum.value / 1000) + 'k' : '' + datum.value"))
    y = alt.Y("faithfulness:Q", axis=alt.Axis(title="faithfulness", format=".1f"),
              scale=alt.Scale(domain=[min(-0.1, float(np.nanmin(df.faithfulness)) if df.faithfulness.notna().any()
                                          else 0), max(1.1, float(np.nanmax(df.faithfulness)) if
                                                       df.faithfulness.notna().any() else 1)]))
    tip = [alt.Tooltip("edges:Q", title="edges", format=","),
           alt.Tooltip("faithfulness:Q", title="faithfulness", format=".3f"),
           alt.Tooltip("metric:Q", title=result.metric, format="+.3f"),
           alt.Tooltip("source:N", title="from")]
    ends = pd.DataFrame({"faithfulness": [0.0, 1.0], "what": ["no edges (the base run)", "all edges (the source run)"]})
    ref = alt.Chart(ends).mark_rule(strokeDash=[4, 3], color="#9e9e9e").encode(y="faithfulness:Q")
    ref_text = alt.Chart(ends).mark_text(align="left", dy=-6, fontSize=10, color="#757575").encode(
        y="faithfulness:Q", x=alt.value(4), text="what:N")
    line = alt.Chart(df).mark_line(color="#4c78a8").encode(x=x, y=y)
    pts = alt.Chart(df).mark_point(filled=True, size=40).encode(
        x=x, y=y, tooltip=tip,
        color=alt.Color("source:N", scale=alt.Scale(domain=["run", "measured"], range=["#4c78a8", "#54a24b"]),
                        legend=None))
    f = faithfulness_at(result, k, extra)
    marker = pd.DataFrame({"edges": [int(k)], "faithfulness": [np.nan if f is None else f],
                           "text": [f"K = {int(k):,}" + ("" if f is None or not math.isfinite(f) else f": {f:.2f}")]})
    k_rule = alt.Chart(marker).mark_rule(color="#f58518", strokeWidth=2).encode(
        x=x, tooltip=[alt.Tooltip("edges:Q", title="K"), alt.Tooltip("faithfulness:Q", title="faithfulness", format=".3f")])
    k_text = alt.Chart(marker).mark_text(align="left", dx=4, y=8, color="#f58518", fontWeight="bold").encode(
        x=x, text="text:N")
    layers = [ref, ref_text, line, pts, k_rule, k_text]
    if f is not None and math.isfinite(f):
        layers.append(alt.Chart(marker).mark_point(shape="diamond", size=140, filled=True, color="#f58518").encode(
            x=x, y=y))
    return alt.layer(*layers).properties(
        width=width, height=height,
        title=alt.TitleParams("Faithfulness by circuit size",
                              subtitle="what the top K edges keep on their own: 0 = nothing, 1 = all",
                              anchor="start"))


# --------------------------------------------------------------------------- export
def graph_json(result: CircuitResult, k: int, extra: list | None = None) -> dict:
    """The drawn subgraph as a file: settings, nodes (with x, y and sites), edges, faithfulness."""
    nodes, edges, _ = graph_frames(result, k)
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    return {"kind": "circuit_graph", "model": result.model, "method": result.method, "steps": result.steps,
            "direction": result.direction, "metric": result.metric, "ablation": result.ablation,
            "n_pairs": result.n_pairs, "n_layers": result.n_layers, "n_heads": result.n_heads,
            "n_kv_heads": result.n_kv_heads, "n_edges_total": result.n_edges, "k": int(len(edges)),
            "faithfulness": clean(faithfulness_at(result, k, extra)),
            "nodes": [{c: clean(v) for c, v in r.items() if c not in ("shape", "label")}
                      for r in json.loads(nodes.to_json(orient="records"))],
            "edges": [{c: v for c, v in r.items() if v is not None}
                      for r in json.loads(edges.to_json(orient="records"))]}
