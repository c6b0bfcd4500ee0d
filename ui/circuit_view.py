"""Showing a circuit (CircuitResult) on the Circuit and History pages: the graph of the top K
edges with a K slider, the faithfulness curve with K marked, the clicked node or edge, sending
nodes to the hypothesis check, and the downloads. Every number comes from patchcore.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import streamlit as st

import ui
from patchcore.sites import get_direction
from patchcore.charts import chart_png, chart_svg
from patchcore.circuit_charts import (EDGE_SELECT, NODE_SELECT, circuit_graph, describe_node,
                                      faithfulness_at, faithfulness_bounds, faithfulness_curve,
                                      graph_frames, graph_json, node_sites)
from patchcore.circuit_result import node_info

MAX_K = 500                       # the slider's end: more edges do not read as a drawing
HYPOTHESIS_KEY = "hypothesis_sites"   # session state; the URL parameter is `sites`
HYPOTHESIS_PAGE = "pages/3_Patching.py"
SELECTION = re.compile(r"^(?:edge:\d{1,7}|input|logits|mlp:\d{1,4}|head:\d{1,4}\.\d{1,4}(?::[qkv])?)$")


def k_range(result) -> tuple[int, int]:
    """(largest K the slider offers, the result's own K clamped into it)."""
    top = max(1, min(MAX_K, result.n_edges))
    return top, max(1, min(int(result.top_k), top))


def result_key(result) -> tuple:
    """Tells one run from another in this session (extra faithfulness points are kept per run)."""
    return (result.model, result.method, result.steps, result.direction, result.metric,
            result.ablation, result.n_pairs, result.created, round(float(result.seconds), 6))


def extra_points(slot: str, result) -> list:
    return st.session_state.setdefault(f"_c_extra_{slot}", {}).get(result_key(result), [])


def _selection_from_event(chart_key: str, sel_key: str) -> None:
    """The clicked node ('head:9.6') or edge ('edge:RANK') into `sel_key` ('' when cleared)."""
    event = (st.session_state.get(chart_key) or {}).get("selection", {})
    # the browser sends both selections, the one not clicked as [{}]
    nodes = [p for p in event.get(NODE_SELECT) or [] if isinstance(p, dict) and p.get("name")]
    edges = [p for p in event.get(EDGE_SELECT) or [] if isinstance(p, dict) and "rank" in p]
    try:
        if nodes:
            st.session_state[sel_key] = str(nodes[0]["name"])
        elif edges:
            st.session_state[sel_key] = f"edge:{int(edges[0]['rank'])}"
        else:
            st.session_state[sel_key] = ""
    except (KeyError, TypeError, ValueError):
        st.session_state[sel_key] = ""


def _faithfulness_box(result, k: int, slot: str, model) -> None:
    extra = extra_points(slot, result)
    f = faithfulness_at(result, k, extra)
    if f is not None:
        st.metric(f"Faithfulness of the top {k:,} edges", "—" if not math.isfinite(f) else f"{f:.2f}",
                  help="How much of the behaviour these edges carry on their own, every other edge "
                       "ablated: 0 = as with no edges (the base run), 1 = as with all of them.")
        return
    lo, hi = faithfulness_bounds(result, k, extra)
    between = (f"between {lo[1]:.2f} ({lo[0]:,} edges) and {hi[1]:.2f} ({hi[0]:,} edges)"
               if lo and hi else "not measured")
    st.metric(f"Faithfulness of the top {k:,} edges", "not measured",
              help="The run measured the curve's points only. Measure this size to know it.")
    st.caption(f"The curve has no point at {k:,} edges; its neighbours are {between}. Green points on "
               "the curve were measured after the run.")
    job_slot = f"{slot}_faith"
    can = model is not None and getattr(model, "label", None) == result.model
    if st.button(f"Measure faithfulness at K = {k:,}", key=f"c_measure_{slot}", icon=":material/straighten:",
                 disabled=ui.job_running(job_slot) or not can,
                 help="Runs the circuit forwards of the top K edges on the run's own pairs: seconds."
                 if can else f"Load the model this circuit was found on ({result.model}) to measure it."):
        from patchcore.circuit_faith import circuit_faithfulness
        key = result_key(result)
        ui.start_job(job_slot, 1, lambda progress, cancel, on_wait: (key, circuit_faithfulness(
            model, result, [k], progress=progress, cancel=cancel, on_wait=on_wait)))
    ui.job_panel(job_slot)
    done = ui.result_for(job_slot)
    if done is not None:
        ui.clear(job_slot)   # its points are taken once
        key, points = done
        store = st.session_state.setdefault(f"_c_extra_{slot}", {})
        store[key] = [p for p in store.get(key, [])] + [p for p in points if 0 < p["edges"] < result.n_edges]
        st.rerun()


def _edge_rows(edges: pd.DataFrame) -> pd.DataFrame:
    return edges[["rank", "sender", "receiver", "score", "exact"]].rename(
        columns={"sender": "from", "receiver": "to"})


SCORE_HELP = ("Estimated change of the metric when only this edge carries the source run's value "
              "(EAP / EAP-IG).")
EXACT_HELP = ("The same change, measured by patching the edge alone (only for the edges checked "
              "exactly; empty otherwise).")
NUMBERS = {"score": st.column_config.NumberColumn("score", format="%+.3f", help=SCORE_HELP),
           "exact": st.column_config.NumberColumn("exact", format="%+.3f", help=EXACT_HELP)}


def _detail(result, selected: str, nodes: pd.DataFrame, edges: pd.DataFrame, slot: str) -> None:
    """The clicked node or edge: its numbers and what they mean."""
    if selected.startswith("edge:"):
        rank = int(selected.split(":")[1])
        row = edges[edges["rank"] == rank]
        if row.empty:
            st.info(f"Edge {rank} is not among the top {len(edges):,} edges shown. Move the slider up, "
                    "or click another edge.", icon=":material/info:")
            return
        e = row.iloc[0]
        with st.container(border=True):
            st.markdown(f"**Selected edge: {ui.md_escape(e.sender)} → {ui.md_escape(e.receiver)}**")
            c = st.columns(3)
            c[0].metric("rank", f"{rank:,}", help="1 = the strongest edge (largest |score|).")
            c[1].metric("score", f"{e.score:+.3f}", help=SCORE_HELP)
            c[2].metric("exact", "—" if not np.isfinite(e.exact) else f"{e.exact:+.3f}",
                        help=EXACT_HELP + ("" if np.isfinite(e.exact) else " This edge was not checked."))
            src = get_direction(result.direction).pick("clean", "corrupted")[0]
            st.text(f"If only this edge carried the {src} run's value, the {ui.metric_name(result.metric)} "
                    f"would change by about {e.score:+.3f} (clean {result.clean_metric:+.3f}, corrupted "
                    f"{result.corrupted_metric:+.3f}).")
            st.caption(describe_node(node_info(e.sender, result.n_layers, result.n_heads, result.n_kv_heads)) +
                       " → " + describe_node(node_info(e.receiver, result.n_layers, result.n_heads,
                                                       result.n_kv_heads)))
        return
    row = nodes[nodes["name"] == selected]
    if row.empty:
        st.info(f"{ui.md_escape(selected)} has no edge among the top {len(edges):,}. Move the slider up, or "
                "click another node.", icon=":material/info:")
        return
    n = row.iloc[0]
    mine = edges[(edges.sender == selected) | (edges.receiver == selected)]
    with st.container(border=True):
        st.markdown(f"**Selected node: {ui.md_escape(selected)}**")
        st.text(n.what)
        c = st.columns(3)
        c[0].metric("edges in the circuit", f"{int(n.edges)}")
        c[1].metric("|score| in", f"{n.score_in:.3f}", help="Sum of |score| of its edges from earlier nodes.")
        c[2].metric("|score| out", f"{n.score_out:.3f}", help="Sum of |score| of its edges to later nodes.")
        st.dataframe(_edge_rows(mine), hide_index=True, width="stretch", key=f"c_node_edges_{slot}",
                     column_config=NUMBERS)


def _send_to_hypothesis(result, nodes: pd.DataFrame, selected: str, slot: str) -> None:
    """Pick heads and MLPs of the circuit; the button hands them to the hypothesis check."""
    sites = node_sites(nodes["name"].tolist(), result.n_heads, result.n_kv_heads)
    if not sites:
        st.caption("No head or MLP is in this circuit: nothing to send to the hypothesis check.")
        return
    chosen = node_sites([selected], result.n_heads, result.n_kv_heads) if selected and \
        not selected.startswith("edge:") and selected in set(nodes["name"]) else []
    picked = st.multiselect(
        "Nodes for the hypothesis check", sites, default=[s for s in chosen if s in sites] or sites,
        key=f"c_sites_{slot}_{selected}_{len(nodes)}",
        help="Heads (head:L.H) and MLPs (mlp:L) of the circuit. A q/k/v port stands for the heads "
             "that read it. The hypothesis check patches them together.")
    if st.button("Send these nodes to the hypothesis check", key=f"c_send_{slot}", icon=":material/send:",
                 disabled=not picked):
        text = ",".join(picked)
        st.session_state[HYPOTHESIS_KEY] = text
        # the hypothesis check keeps its selection under the session key 'sites' (ui.state syncs
        # it with the URL), which a link's `sites` sets only on a session's first page
        st.session_state["sites"] = text
        st.switch_page(HYPOTHESIS_PAGE, query_params={"sites": text})


def show_circuit(result, slot: str, *, k_key: str | None = None, sel_key: str | None = None,
                 model=None, run_id: int | None = None) -> None:
    """The whole view of a circuit. `k_key` / `sel_key`: session keys holding K and the selection
    (the Circuit page passes its URL-backed ones; else this slot's own)."""
    top, own_k = k_range(result)
    k_key = k_key or f"c_k_{slot}"
    sel_key = sel_key or f"c_sel_{slot}"
    ss = st.session_state
    ss.setdefault(k_key, own_k)
    ss.setdefault(sel_key, "")
    if not 1 <= int(ss[k_key]) <= top:
        ss[k_key] = own_k

    method = f"EAP-IG ({result.steps} steps)" if result.method == "eap-ig" else "EAP"
    st.caption(f"{ui.md_escape(result.model)} · {method} · {result.n_pairs} pair(s) · "
               f"{ui.md_escape(result.direction)} · {ui.metric_name(result.metric)} · ablation "
               f"{ui.md_escape(result.ablation)} · {result.n_edges:,} edges scored"
               + (f" · stored as run {run_id}" if run_id else ""))
    for w in result.warnings:
        st.warning(ui.md_escape(w), icon=":material/warning:")

    k = st.slider("Circuit size K (the strongest edges)", 1, top, **ui.bind(f"w_{k_key}", k_key),
                  help="The graph draws the K edges with the largest |score|; the curve marks K.")
    k = int(k)
    nodes, edges, _ = graph_frames(result, k)
    selected = ss.get(sel_key) or ""

    left, right = st.columns([3, 2])
    with left:
        graph = circuit_graph(result, k, selected or None)
        chart_key = f"c_graph_{slot}"
        st.altair_chart(graph, on_select=lambda: _selection_from_event(chart_key, sel_key),
                        selection_mode=[NODE_SELECT, EDGE_SELECT], key=chart_key)
        st.caption("Layers run top to bottom (input above, logits below); heads sit by index, MLPs at the "
                   "right, small triangles are where a head reads its query, key and value. Hover for "
                   "numbers; click a node or an edge for details (double-click clears).")
    with right:
        _faithfulness_box(result, k, slot, model)
        curve = faithfulness_curve(result, k, extra_points(slot, result))
        st.altair_chart(curve, key=f"c_curve_{slot}")
        if selected:
            _detail(result, selected, nodes, edges, slot)
        else:
            st.caption("Click a node or an edge in the graph to see its numbers here.")
        _send_to_hypothesis(result, nodes, selected, slot)

    with st.expander(f"The top {k:,} edges as a table"):
        st.dataframe(_edge_rows(edges), hide_index=True, width="stretch", key=f"c_edges_{slot}",
                     column_config=NUMBERS)
    st.subheader("What this shows")
    for line in result.summary_lines():
        st.text(line)
    st.caption(f"{result.seconds:.1f} s on {ui.md_escape(result.device)} ({ui.md_escape(result.dtype)}): "
               + ", ".join(f"{name.replace('_seconds', '')} {v:.1f} s" for name, v in result.timings.items()
                           if isinstance(v, (int, float))))

    stem = f"patchcore_circuit_{result.method}_top{k}"
    cols = st.columns(5)
    cols[0].download_button("Graph JSON", json.dumps(graph_json(result, k, extra_points(slot, result)), indent=1),
                            f"{stem}_graph.json", "application/json", key=f"c_dl_graph_{slot}",
                            icon=":material/download:")
    cols[1].download_button("Graph SVG", lambda: chart_svg(graph), f"{stem}.svg", "image/svg+xml",
                            key=f"c_dl_svg_{slot}", icon=":material/image:")
    cols[2].download_button("Graph PNG", lambda: chart_png(graph), f"{stem}.png", "image/png",
                            key=f"c_dl_png_{slot}", icon=":material/image:")
    cols[3].download_button("Edges CSV", lambda: result.to_frame().to_csv(index=False),
                            f"patchcore_circuit_{result.method}_edges.csv", "text/csv",
                            key=f"c_dl_csv_{slot}", icon=":material/download:")
    cols[4].download_button("Run JSON", lambda: json.dumps(result.to_json()),
                            f"patchcore_circuit_{result.method}.json", "application/json",
                            key=f"c_dl_json_{slot}", icon=":material/download:")
