"""Streamlit code of the Paths page (pages/6_Paths.py): senders and receivers in plain words
(kept in the URL as `senders` and `receivers`, in patchcore.paths notation), the pair or
dataset to run on, the cost, the background run, and showing a path result – the heatmap
(ui.show_result / ui.datasets), the senders → receivers graph and downloads.

Only widgets and layout here: patchcore.paths runs, patchcore.path_report counts and words,
patchcore.path_charts draws.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import streamlit as st

from patchcore.ablations import DEFAULT_DRAWS, get_ablation
from patchcore.charts import chart_png, chart_svg
from patchcore.datasets import length_groups
from patchcore.engine import batch_rows
from patchcore.path_charts import path_graph
from patchcore.path_report import path_cost, path_story, sender_kind
from patchcore.paths import run_path
from patchcore.prompts import prepare_pair
from patchcore.results import DatasetResult, PatchSetResult
from patchcore.summary import num, patch_summary
from ui.hypothesis import selection, split_senders
from ui.jobs import save_result, start_job
from ui.text import md_escape, metric_md

SLOT = "paths"
SENDER_MODES = {"heads": "All heads, one at a time", "mlps": "All MLPs, one at a time",
                "layer": "The heads of one layer", "list": "These heads or MLPs together"}
SENDER_HELP = {
    "heads": "One path per head (layer × head heatmap): how much does each head's output change the "
             "answer along the chosen route?",
    "mlps": "One path per MLP (one column per layer).",
    "layer": "One path per head of the chosen layer.",
    "list": "The listed heads and MLPs as one group: one number for all of them together. Write them "
            "as head:LAYER.HEAD or mlp:LAYER, separated by commas.",
}
RECEIVER_MODES = {"logits": "The logits: the direct path",
                  "inputs": "Inputs of chosen heads or MLPs: through whom?",
                  "all": "Everything: all paths at once"}
RECEIVER_HELP = {
    "logits": "Only what the senders write straight into the final residual stream reaches the answer; "
              "every other head and MLP is frozen, so nothing can pass the change on. A strong cell is "
              "a component that acts on the answer directly (like IOI's name movers).",
    "inputs": "Only the inputs of these heads (their queries, keys or values) or MLPs receive the "
              "senders' change; everything else is frozen. A strong cell is a component that acts "
              "through them (like IOI's S-inhibition heads, through the name movers' queries). Write "
              "head:L.H:q, head:L.H:k, head:L.H:v, head:L.H (all three) or mlp:L.",
    "all": "Nothing is frozen: the senders' change reaches the answer by every route. This equals "
           "patching the senders themselves (the Patching page's head or MLP sweep).",
}


def _senders_mode(senders: str) -> tuple[str, int, str]:
    """(mode, layer, list text) of a senders string."""
    s = senders.strip()
    if s == "head:*":
        return "heads", 0, ""
    if s == "mlp:*":
        return "mlps", 0, ""
    if s.startswith("head:") and s.endswith(".*"):
        return "layer", int(s[5:-2]), ""
    return "list", 0, s


def _receivers_mode(receivers: str) -> tuple[str, str]:
    r = receivers.strip()
    return (r, "") if r in ("logits", "all") else ("inputs", r)


def _senders_changed() -> None:
    ss = st.session_state
    mode = ss["w_paths_smode"]
    if mode == "list":
        text = ss.get("w_paths_slist", "").strip()
        if not text and not ss.get("_paths_slist_typed"):   # prefill from the hypothesis selection
            text = ",".join(split_senders(selection())[0]) if selection() else ""
        ss["senders"] = text
    elif mode == "layer":
        ss["senders"] = f"head:{int(ss.get('w_paths_layer', 0))}.*"
    else:
        ss["senders"] = {"heads": "head:*", "mlps": "mlp:*"}[mode]


def _senders_typed() -> None:
    st.session_state["_paths_slist_typed"] = True
    st.session_state["senders"] = st.session_state.get("w_paths_slist", "").strip()


def _receivers_changed() -> None:
    ss = st.session_state
    mode = ss["w_paths_rmode"]
    ss["receivers"] = ss.get("w_paths_rlist", "").strip() if mode == "inputs" else mode


def choose_senders(model) -> str:
    """The senders widgets, kept in step with `senders` (a link or the hypothesis check may set it)."""
    ss = st.session_state
    mode, layer, text = _senders_mode(ss["senders"])
    ss["w_paths_smode"] = mode
    ss["w_paths_layer"] = layer
    if mode == "list":
        ss["w_paths_slist"] = text
    st.radio("Senders: whose effect?", list(SENDER_MODES), format_func=SENDER_MODES.get, key="w_paths_smode",
             on_change=_senders_changed,
             help="\n\n".join(f"**{SENDER_MODES[k]}**: {md_escape(v)}" for k, v in SENDER_HELP.items()))
    st.caption(SENDER_HELP[mode])
    if mode == "layer":
        top = model.components.n_layers - 1 if model is not None else 999
        st.number_input("Layer", 0, max(top, layer), key="w_paths_layer", on_change=_senders_changed,
                        help="The heads of this layer are the senders, one path each.")
    elif mode == "list":
        st.text_input("Senders", key="w_paths_slist", on_change=_senders_typed,
                      placeholder="e.g. head:9.6, head:10.0, mlp:9",
                      help="Heads and MLPs, separated by commas. “Send to the Paths page” under any heatmap "
                           "fills this from its selection.")
    return ss["senders"]


def choose_receivers() -> str:
    ss = st.session_state
    mode, text = _receivers_mode(ss["receivers"])
    ss["w_paths_rmode"] = mode
    if mode == "inputs":
        ss["w_paths_rlist"] = text
    st.radio("Receivers: along which route?", list(RECEIVER_MODES), format_func=RECEIVER_MODES.get,
             key="w_paths_rmode", on_change=_receivers_changed,
             help="\n\n".join(f"**{RECEIVER_MODES[k]}**: {md_escape(v)}" for k, v in RECEIVER_HELP.items()))
    st.caption(RECEIVER_HELP[mode])
    if mode == "inputs":
        st.text_input("Receivers", key="w_paths_rlist", on_change=_receivers_changed,
                      placeholder="e.g. head:9.6:q, head:9.9, mlp:10",
                      help="Inputs of heads (q, k, v, or all three) and MLPs, separated by commas.")
    return ss["receivers"]


def current_datasets() -> dict:
    """The datasets built on the Datasets page in this session: key -> (label, dataset)."""
    ss = st.session_state
    out = {}
    for key, label in (("_ds_ioi", "Generated IOI pairs"), ("_ds_upload", "Uploaded pairs")):
        ds = ss.get(key)
        if ds is not None and len(ds):
            out[key] = (f"{label} ({len(ds)})", ds)
    return out


def lengths_of(model, pairs) -> list[int]:
    """Each pair's token length (a PairDataset, or a list of PromptPairs)."""
    if hasattr(pairs, "items"):
        groups = length_groups(pairs, model.tokenizer)
        return [n for n, items in groups.items() for _ in items]
    return [prepare_pair(model.tokenizer, p).n_tokens for p in pairs]


def positions_problem(senders: str, receivers: str, lengths: list[int]) -> str | None:
    """Sites with @POSITION need pairs whose positions line up (one token length)."""
    if len(set(lengths)) <= 1 or "@" not in senders + receivers:
        return None
    return ("A sender or receiver names a position (@), but the pairs have different token lengths, so "
            "positions do not line up. Remove the @ or run on one pair.")


def ui_batch_size(model, cost: dict, lengths: list[int]) -> int:
    """Smaller batches than the engine's, so Cancel answers quickly."""
    rows = max(1, cost["paths"] * max(1, len(lengths)))
    return max(1, min(batch_rows(model, max(lengths)), max(8, math.ceil(rows / 8))))


def start(model, pairs, senders: str, receivers: str, direction: str, metric: str, ablation: str,
          lengths: list[int], cost: dict, settings: dict):
    """run_path on a worker thread (progress per group of pairs of one length, Cancel between
    batches), then store the result in the history."""
    bs = ui_batch_size(model, cost, lengths)
    notes: list = []
    draws = DEFAULT_DRAWS if get_ablation(ablation).needs_dataset else 1

    def work(progress, cancel, on_wait):
        result = run_path(model, pairs, senders, receivers, direction, metric, ablation=ablation, draws=draws,
                          batch_size=bs, progress=progress, cancel=cancel, on_wait=on_wait)
        notes.append(save_result(result, settings, {"seconds": result.seconds})[1])
        return result

    job = start_job(SLOT, len(set(lengths)), work)
    job.unit = "groups of pairs of one length" if len(set(lengths)) > 1 else "runs"
    job.notes = notes
    return job


def _graph(result, n_layers: int | None) -> None:
    st.subheader("Senders → receivers")
    top = 6
    if not isinstance(result, PatchSetResult):
        n = int(np.isfinite(result.normalized).sum())
        top = st.slider("Senders in the graph", 1, max(2, min(20, n)), min(6, max(1, n)), key="w_paths_top",
                        help="The strongest senders of the heatmap (by the size of their effect).")
    try:
        chart = path_graph(result, top=top, n_layers=n_layers)
        chart.to_dict()
    except Exception as exc:  # noqa: BLE001 - the rest of the result stays readable
        from ui.text import show_error
        show_error(exc)
        return
    st.altair_chart(chart, key="paths_graph")
    st.caption("Nodes sit at their layer (the logits on top). Edge width: how much of the clean behaviour "
               "moves along that path; red towards the clean answer, blue against it."
               + (" A group of senders shares one number: every edge carries the group's effect."
                  if isinstance(result, PatchSetResult) else ""))
    c = st.columns(4)
    c[0].download_button("Graph PNG", lambda: chart_png(chart), "patchcore_paths_graph.png", "image/png",
                         key="dl_paths_graph_png", icon=":material/image:")
    c[1].download_button("Graph SVG", lambda: chart_svg(chart), "patchcore_paths_graph.svg", "image/svg+xml",
                         key="dl_paths_graph_svg", icon=":material/image:")


def show_set(r: PatchSetResult, slot: str = SLOT) -> None:
    """Sites patched together or a group of senders (a PatchSetResult): its one score (with an
    interval on a dataset), the summary and downloads. Also what the History page can show."""
    st.subheader("What this shows")
    score = r.normalized
    c = st.columns(3)
    c[0].metric("Normalised score", "—" if not np.isfinite(score) else num(score, ".3f"),
                help="1 = clean behaviour, 0 = corrupted behaviour.")
    c[1].metric(f"Patched: {metric_md(r.metric)}", num(r.value, ".3f"))
    if r.n_pairs > 1 and np.isfinite(r.normalized_low):
        c[2].metric("95% interval", f"{num(r.normalized_low)} to {num(r.normalized_high)}")
    for sentence in patch_summary(r):
        st.text("• " + sentence)
    stem = f"patchcore_{'path' if r.receivers is not None else 'patch'}_{r.direction}_{r.metric}"
    frame = pd.DataFrame({"pair": np.arange(1, r.n_pairs + 1), "value": np.asarray(r.per_pair, dtype=float),
                          "normalized": r.pair_normalized, "clean": r.pair_clean, "corrupted": r.pair_corrupted})
    d = st.columns(4)
    d[0].download_button("CSV", frame.to_csv(index=False), f"{stem}.csv", "text/csv", key=f"dl_set_csv_{slot}",
                         icon=":material/download:")
    d[1].download_button("JSON", json.dumps(r.to_json(), indent=1), f"{stem}.json", "application/json",
                         key=f"dl_set_json_{slot}", icon=":material/download:")


def show(result, n_layers: int | None, run_id: int | None = None) -> None:
    """A path result: heatmap and summary (a sender sweep) or one score (a group), then the graph."""
    import ui
    if isinstance(result, PatchSetResult):
        show_set(result)
    elif isinstance(result, DatasetResult):
        story = path_story(result)
        if story:
            st.markdown("**" + md_escape(story) + "**")
        ui.show_result(result, SLOT, cell_key="paths_cell", run_id=run_id)
    else:
        ui.show_result(result, SLOT, cell_key="paths_cell")
    _graph(result, n_layers)


def describe_settings(result) -> tuple:
    """(senders, receivers, direction, metric, ablation) a result was computed with."""
    if isinstance(result, PatchSetResult):
        senders, receivers = ",".join(result.sites), list(result.receivers or [])
    else:
        senders, receivers = result.path["senders"], list(result.path["receivers"])
    return senders, receivers, result.direction, result.metric, result.ablation


__all__ = ["RECEIVER_HELP", "RECEIVER_MODES", "SENDER_HELP", "SENDER_MODES", "SLOT", "choose_receivers",
           "choose_senders", "current_datasets", "describe_settings", "lengths_of", "path_cost",
           "positions_problem", "sender_kind", "show", "show_set", "start"]
