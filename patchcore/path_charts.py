"""The small senders → receivers graph of a path-patching result (Altair).

Nodes sit in rows by layer (lowest layer at the bottom, the logits on top; only layers that
have a node get a row, evenly spaced), each sender in its own column; one edge from every shown sender to every receiver, its width the size of
the sender's effect on that path (|share of the clean behaviour restored or destroyed|),
red where it moves the answer towards the clean behaviour, blue where it works against it.

A sender sweep (head:*, mlp:*, head:L.*) shows its `top` strongest senders; a sender set
(one PatchSetResult) shows every sender with the set's combined effect.
"""
from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from .errors import SweepError
from .results import PatchSetResult
from .sites import get_direction, parse_site
from .sweeps import site_of

TOWARDS, AGAINST = "#b2182b", "#2166ac"   # the heatmap's red and blue
MAX_WIDTH = 12.0


def _label(site: str) -> str:
    """'head:9.6' -> 'head 9.6', 'q:9.6' -> 'q of 9.6', 'mlp:4' -> 'MLP 4'."""
    s = parse_site(site)
    where = f"{s.layer}" + (f".{s.head}" if s.head >= 0 else "") + (f" @{s.pos}" if s.pos >= 0 else "")
    name = s.component.name
    if name in ("q", "k", "v"):
        return f"{name} of {where}"
    return f"{'MLP' if name == 'mlp' else name} {where}"


def graph_frames(result, top: int = 6, n_layers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(nodes, edges) of the graph. nodes: id, label, role (sender | receiver), layer, x, y (the
    row: the layer's rank among the layers shown).
    edges: sender, receiver, effect (signed share), width (|effect|), x, y, x2, y2."""
    if isinstance(result, PatchSetResult):
        if result.receivers is None:
            raise SweepError("This result is not path patching: it has no receivers.")
        d = get_direction(result.direction)
        e = float(d.effect(result.normalized))
        senders = [(s, e) for s in result.sites]
        receivers = list(result.receivers)
    else:
        path = getattr(result, "path", None)
        if not path:
            raise SweepError("This result is not path patching: it has no senders and receivers.")
        eff = np.asarray(get_direction(result.direction).effect(result.normalized), dtype=float)
        flat = np.where(np.isfinite(eff), eff, 0.0)
        order = [i for i in np.argsort(-np.abs(flat).reshape(-1), kind="stable")
                 if np.isfinite(eff.reshape(-1)[i])][:max(1, int(top))]
        senders = [(str(site_of(result.sweep, np.unravel_index(i, eff.shape))), float(flat.reshape(-1)[i]))
                   for i in order]
        receivers = list(path["receivers"])
    layers_seen = [parse_site(s).layer for s, _ in senders] + \
        [parse_site(r).layer for r in receivers if r not in ("logits", "all")]
    top_layer = n_layers or getattr(result, "n_layers", None) or (max(layers_seen, default=0) + 1)

    nodes = [{"id": s, "label": _label(s), "role": "sender", "layer": parse_site(s).layer} for s, _ in senders]
    for r in receivers:
        if r in ("logits", "all"):
            label = "logits" if r == "logits" else "logits (every path)"
            nodes.append({"id": r, "label": label, "role": "receiver", "layer": top_layer})
        elif r not in [n["id"] for n in nodes]:
            nodes.append({"id": r, "label": _label(r), "role": "receiver", "layer": parse_site(r).layer})
    nodes = pd.DataFrame(nodes)
    rows = sorted(nodes["layer"].unique())   # one evenly spaced row per layer that has a node
    nodes["y"] = nodes["layer"].map({layer: float(i) for i, layer in enumerate(rows)})
    nodes["x"] = 0.0
    # senders each in their own column (lower layers to the left), so no edge runs through
    # another sender; receivers side by side within their layer, centred
    senders_at = nodes.index[nodes["role"] == "sender"]
    order = sorted(senders_at, key=lambda i: (nodes.at[i, "layer"], nodes.at[i, "id"]))
    for k, i in enumerate(order):
        nodes.at[i, "x"] = k - (len(order) - 1) / 2
    for layer, group in nodes[nodes["role"] == "receiver"].groupby("layer"):
        idx = list(group.index)
        nodes.loc[idx, "x"] = [i - (len(idx) - 1) / 2 for i in range(len(idx))]
    at = nodes.set_index("id")
    edges = pd.DataFrame([{"sender": s, "receiver": r, "effect": e, "width": abs(e),
                           "sender_label": at.loc[s, "label"], "receiver_label": at.loc[r, "label"],
                           "x": at.loc[s, "x"], "y": at.loc[s, "y"], "x2": at.loc[r, "x"], "y2": at.loc[r, "y"],
                           "sign": "towards the clean answer" if e >= 0 else "against it"}
                          for s, e in senders for r in receivers],
                         columns=["sender", "receiver", "effect", "width", "sender_label", "receiver_label",
                                  "x", "y", "x2", "y2", "sign"])
    return nodes, edges


def path_graph(result, top: int = 6, n_layers: int | None = None, width: int = 420,
               height: int = 360) -> alt.LayerChart:
    """The senders → receivers graph (see the module docstring)."""
    nodes, edges = graph_frames(result, top, n_layers)
    biggest = float(edges["width"].max()) if len(edges) else 0.0
    xs = nodes["x"]
    x_scale = alt.Scale(domain=[float(xs.min()) - 1, float(xs.max()) + 1])
    rows = nodes.drop_duplicates("y").sort_values("y")
    labels = ["logits" if r.id in ("logits", "all") or (r.role == "receiver" and r.label.startswith("logits"))
              else f"layer {r.layer}" for r in rows.itertuples()]
    y_scale = alt.Scale(domain=[-0.5, len(rows) - 0.5], nice=False)
    y_axis = alt.Axis(title=None, values=list(range(len(rows))), labelExpr=f"{json.dumps(labels)}[datum.value]",
                      grid=True, gridDash=[2, 4])
    edge = alt.Chart(edges).mark_rule(opacity=0.75, strokeCap="round").encode(
        x=alt.X("x:Q", scale=x_scale, axis=None), y=alt.Y("y:Q", scale=y_scale, axis=y_axis),
        x2="x2:Q", y2="y2:Q",
        strokeWidth=alt.StrokeWidth("width:Q", legend=None,
                                    scale=alt.Scale(domain=[0, max(biggest, 1e-9)], range=[0, MAX_WIDTH])),
        color=alt.Color("sign:N", title="edge", scale=alt.Scale(
            domain=["towards the clean answer", "against it"], range=[TOWARDS, AGAINST]),
            legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("sender_label:N", title="sender"), alt.Tooltip("receiver_label:N", title="receiver"),
                 alt.Tooltip("effect:Q", title="effect (share of the clean behaviour)", format=".3f")])
    node = alt.Chart(nodes).mark_circle(size=160, opacity=1, stroke="#333", strokeWidth=1).encode(
        x=alt.X("x:Q", scale=x_scale, axis=None), y=alt.Y("y:Q", scale=y_scale, axis=y_axis),
        fill=alt.Fill("role:N", title="node", scale=alt.Scale(domain=["sender", "receiver"],
                                                                range=["#f4a582", "#92c5de"]),
                      legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("label:N", title="node"), alt.Tooltip("role:N"), alt.Tooltip("layer:Q")])
    text = alt.Chart(nodes).mark_text(dy=-13, fontSize=11).encode(
        x=alt.X("x:Q", scale=x_scale, axis=None), y=alt.Y("y:Q", scale=y_scale, axis=y_axis), text="label:N")
    kind = "sender set" if isinstance(result, PatchSetResult) else f"{len(edges['sender'].unique())} strongest senders"
    return alt.layer(edge, node, text).properties(
        width=width, height=height,
        title=alt.TitleParams("Senders → receivers", subtitle=[
            f"{kind}; edge width = size of the effect on that path"], anchor="start"))
