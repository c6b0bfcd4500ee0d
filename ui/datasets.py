"""Streamlit code shared by pages/4_Datasets.py and pages/5_History.py: dataset runs in the
background, and showing a stored or fresh dataset result (both directions, quadrants, strip plot).

Only widgets and layout here; every number comes from patchcore. User text (prompts, tokens,
file names, reasons) is shown with st.text / st.dataframe / md_escape, never as Markdown.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

import ui
from patchcore.charts import heatmap as mean_heatmap
from patchcore.dataset_charts import quadrant_heatmap, quadrant_scatter, strip_plot
from patchcore.dataset_run import run_both, run_dataset
from patchcore.results import BothResult, DatasetResult
from patchcore.dataset_summary import QUADRANTS, cell_label, dataset_summary, quadrant_summary, quadrants
from patchcore.stats import describe_interval

VIEWS = {"normalized": "Normalised score", "value": "Raw metric"}
DIRECTION_CHOICES = {"both": "Both (denoise + noise, with the quadrant view)",
                     "denoise": "Denoise only (clean → corrupted)", "noise": "Noise only (corrupted → clean)"}


@dataclass
class DatasetRun:
    """What a finished background run hands to the page."""
    result: object              # DatasetResult or BothResult
    run_id: int | None = None   # id in the run history (None: not stored)
    history_error: str | None = None


def start_dataset_job(slot: str, model, dataset, sweep: str, directions: str, metric: str, *,
                      n_boot: int, seed: int, length: int | None, total: int, settings: dict) -> ui.Job:
    """Run a dataset on a worker thread (progress + Cancel via ui.jobs' panel), then store it."""

    def work(**callbacks):
        kw = dict(n_boot=n_boot, seed=seed, length=length, **callbacks)
        if directions == "both":
            res = run_both(model, dataset, sweep, metric, **kw)
        else:
            res = run_dataset(model, dataset, sweep, directions, metric, **kw)
        run_id, note = ui.jobs.save_result(res, settings)
        return DatasetRun(res, run_id, None if run_id is not None else note or None)

    return ui.start_job(slot, total, work)


# --------------------------------------------------------------------------- showing results
def _cell_from_event(chart_key: str, axes: tuple, cell_key: str) -> None:
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("cell") or []
    try:
        st.session_state[cell_key] = tuple(int(points[0][a]) for a in axes)
    except (IndexError, KeyError, TypeError, ValueError):
        st.session_state[cell_key] = None


def _slice_controls(r: DatasetResult, slot: str, where) -> tuple:
    head = position = None
    if len(r.axes) == 3:
        with where:
            by = st.radio("Slice the heads by", ["head", "position"], horizontal=True, key=f"ds_slice_{slot}")
            if by == "head":
                head = st.selectbox("Head", range(r.n_heads), key=f"ds_head_{slot}")
            else:
                position = st.selectbox("Position", range(len(r.tokens)), key=f"ds_pos_{slot}",
                                        format_func=lambda p: f"{p}: {ui.show_token(str(r.tokens[p]))}")
    return head, position


def _heatmap(r: DatasetResult, view: str, head, position, slot: str, name: str, cell_key: str) -> None:
    chart_key = f"ds_chart_{slot}_{name}"
    st.altair_chart(mean_heatmap(r, view, head, position),
                    on_select=lambda: _cell_from_event(chart_key, r.axes, cell_key),
                    selection_mode="cell", key=chart_key)


def _cell_box(r: DatasetResult, idx: tuple, view: str, slot: str) -> None:
    t = tuple(idx)
    e, lo, hi = r.effect
    box = st.container(border=True)
    box.text(f"{r.direction}: {cell_label(r, t)}")
    rows = [("mean normalised score", describe_interval(float(r.normalized[t]), float(r.normalized_low[t]),
                                                         float(r.normalized_high[t]), False, r.level)),
            (f"mean {r.metric} (raw)", describe_interval(float(r.values[t]), float(r.ci_low[t]),
                                                         float(r.ci_high[t]), False, r.level)),
            ("effect", describe_interval(float(e[t]), float(lo[t]), float(hi[t]), True, r.level))]
    box.dataframe(pd.DataFrame(rows, columns=["", "value"]), hide_index=True, width="stretch")
    box.altair_chart(strip_plot(r, t, view), key=f"ds_strip_{slot}_{r.direction}")


def _valid_cell(r: DatasetResult, idx) -> bool:
    return idx is not None and len(idx) == len(r.values.shape) and all(
        0 <= i < n for i, n in zip(idx, r.values.shape))


def show_dataset_result(res, slot: str, run_id: int | None = None) -> None:
    """A DatasetResult or BothResult: notes, heatmaps of means (intervals on hover), the strip plot
    of the clicked cell, both directions side by side with quadrants, summary and downloads."""
    both = isinstance(res, BothResult)
    first: DatasetResult = res.denoise if both else res
    cell_key = f"ds_cell_{slot}"
    st.session_state.setdefault(cell_key, None)

    # a stored or imported run's strings are shown as text, never as Markdown (links, images)
    st.caption(f"{first.n_pairs} pairs · {ui.md_escape(first.model)} · sweep {ui.md_escape(first.sweep)} · "
               f"metric {ui.md_escape(first.metric)} · "
               + ("both directions" if both else ui.md_escape(first.direction))
               + (f" · stored as run {run_id}" if run_id else ""))
    seen = set()
    for w in (first.warnings + first.notes + ((res.noise.warnings) if both else [])):
        if w not in seen:
            seen.add(w)
            st.info(ui.md_escape(w), icon=":material/info:")
    if first.rejected:
        with st.expander(f"{len(first.rejected)} rows of the file were rejected"):
            st.dataframe(pd.DataFrame(first.rejected), hide_index=True, width="stretch")
    if first.sweep == "layer":
        st.info("Patching the whole residual stream at one layer restores everything after it, so "
                "values near 1 at every layer are expected here.", icon=":material/info:")

    controls = st.columns([2, 3])
    view = controls[0].segmented_control("Show", list(VIEWS), format_func=VIEWS.get, default="normalized",
                                         key=f"ds_view_{slot}") or "normalized"
    head, position = _slice_controls(first, slot, controls[1])
    st.caption("Each cell is the mean over pairs; hover for its 95% interval. Faded numbers: the "
               "interval includes “no effect”. Click a cell to see every pair's value (double-click clears).")

    idx = st.session_state.get(cell_key)
    if both:
        left, right = st.columns(2)
        with left:
            st.markdown("**Denoising** – is it *enough*? (clean copied into corrupted)")
            _heatmap(res.denoise, view, head, position, slot, "denoise", cell_key)
        with right:
            st.markdown("**Noising** – is it *needed*? (corrupted copied into clean)")
            _heatmap(res.noise, view, head, position, slot, "noise", cell_key)
        if _valid_cell(first, idx):
            a, b = st.columns(2)
            with a:
                _cell_box(res.denoise, idx, view, slot)
            with b:
                _cell_box(res.noise, idx, view, slot)
        else:
            st.caption("Click a cell in either heatmap to see every pair's value there.")
        st.subheader("Quadrants: needed, enough, both or neither")
        threshold = st.slider("Line between low and high", 0.1, 0.9, 0.5, 0.05, key=f"ds_thr_{slot}",
                              help="A component is 'enough' when restoring it alone brings back at least "
                                   "this share of the clean answer, and 'needed' when corrupting it "
                                   "destroys at least this share.")
        for k, text in QUADRANTS.items():
            st.text("• " + text)
        q1, q2 = st.columns([3, 2])
        with q1:
            st.altair_chart(quadrant_heatmap(res, threshold, head, position), key=f"ds_quad_{slot}")
        with q2:
            st.altair_chart(quadrant_scatter(res, threshold), key=f"ds_scatter_{slot}")
        for s in quadrant_summary(res, threshold):
            st.text("• " + s)
        qdf = quadrants(res, threshold)
        with st.expander("Every component, in words"):
            st.dataframe(qdf[["component", "quadrant", "sure", "enough", "enough_low", "enough_high",
                              "needed", "needed_low", "needed_high"]], hide_index=True, width="stretch")
    else:
        left, right = st.columns([3, 2])
        with left:
            _heatmap(first, view, head, position, slot, "single", cell_key)
        with right:
            if _valid_cell(first, idx):
                _cell_box(first, idx, view, slot)
            else:
                st.caption("Click a cell to see every pair's value there.")

    st.subheader("What this shows")
    for r in ([res.denoise, res.noise] if both else [first]):
        if both:
            st.markdown(f"**{'Denoising' if r.direction == 'denoise' else 'Noising'}**")
        for sentence in dataset_summary(r):
            st.text("• " + sentence)
    secs = res.seconds if both else first.seconds
    st.caption(f"{secs:.1f} s of patching on {ui.md_escape(first.device)} ({ui.md_escape(first.dtype)})")

    stem = f"patchcore_{first.sweep}_{'both' if both else first.direction}_{first.n_pairs}pairs"
    cols = st.columns(3)
    cols[0].download_button("JSON", json.dumps(res.to_json(), indent=1), f"{stem}.json", "application/json",
                            key=f"ds_dl_json_{slot}", icon=":material/download:")
    frame = (pd.concat([res.denoise.to_frame().assign(direction="denoise"),
                        res.noise.to_frame().assign(direction="noise")]) if both else first.to_frame())
    cols[1].download_button("CSV (means and intervals)", frame.to_csv(index=False), f"{stem}.csv", "text/csv",
                            key=f"ds_dl_csv_{slot}", icon=":material/download:")
    per_pair = _per_pair_frame(res)
    cols[2].download_button("CSV (every pair)", per_pair.to_csv(index=False), f"{stem}_pairs.csv", "text/csv",
                            key=f"ds_dl_pairs_{slot}", icon=":material/download:")

    # the hypothesis check: clicked cells become a selection, tested together (ui/hypothesis.py)
    from ui import hypothesis
    hypothesis.panel(res, slot, [f"ds_chart_{slot}_{name}" for name in ("denoise", "noise", "single")])


def _per_pair_frame(res) -> pd.DataFrame:
    parts = []
    for r in ([res.denoise, res.noise] if isinstance(res, BothResult) else [res]):
        n = r.per_pair.shape[0]
        idx = np.indices(r.values.shape).reshape(len(r.axes), -1).T
        for k in range(n):
            df = pd.DataFrame(idx, columns=list(r.axes))
            df.insert(0, "pair", k + 1)
            df.insert(0, "direction", r.direction)
            df["value"] = r.per_pair[k].reshape(-1)
            df["normalized"] = r.pair_normalized[k].reshape(-1)
            parts.append(df)
    return pd.concat(parts, ignore_index=True)
