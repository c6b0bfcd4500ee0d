"""The dataset parts of the result viewer (ui.results): every pair's value at a cell with the
intervals, the quadrants of a run in both directions, the per-pair table; and dataset runs in
the background (stored in the history, their time taught to the estimate).

Only widgets and layout here; every number comes from patchcore. User text (prompts, tokens,
file names, reasons) is shown with st.text / st.dataframe / md_escape, never as Markdown.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from patchcore.dataset_charts import quadrant_heatmap, quadrant_scatter, strip_plot
from patchcore.dataset_run import estimate_dataset_seconds, run_both, run_dataset
from patchcore.dataset_summary import QUADRANTS, quadrant_summary, quadrants
from patchcore.results import BothResult, DatasetResult
from patchcore.sites import get_direction
from patchcore.stats import describe_interval
from ui import jobs

DIRECTION_CHOICES = {"both": "Both (denoise + noise, with the quadrant view)",
                     "denoise": "Denoise only (clean → corrupted)", "noise": "Noise only (corrupted → clean)"}


@dataclass
class DatasetRun:
    """What a finished background run hands to the page."""
    result: object              # DatasetResult or BothResult
    run_id: int | None = None   # id in the run history (None: not stored)
    history_error: str | None = None


def start_dataset_job(slot: str, model, dataset, sweep: str, directions: str, metric: str, *,
                      n_boot: int, seed: int, length: int | None, total: int, settings: dict,
                      ablation: str = "corrupted") -> jobs.Job:
    """Run a dataset on a worker thread (progress + Cancel via ui.jobs' panel), then store it
    (not when it was cancelled) and teach the estimate what it took (plain patches only: the
    estimate times those). `ablation`: what each patch writes (patchcore.ablations)."""

    def work(**callbacks):
        jobs.calibrated(callbacks["cancel"])
        kw = dict(n_boot=n_boot, seed=seed, length=length, ablation=ablation, **callbacks)
        if directions == "both":
            return run_both(model, dataset, sweep, metric, **kw)
        return run_dataset(model, dataset, sweep, directions, metric, **kw)

    def done(res, job) -> DatasetRun:
        run_id, note = jobs.save_result(res, settings)
        n_dirs = 2 if directions == "both" else 1
        if ablation == "corrupted":
            jobs.learn(model, "dataset", lambda: estimate_dataset_seconds(model, dataset, sweep, n_dirs, length),
                       job, res.seconds)
        return DatasetRun(res, run_id, None if run_id is not None else note or None)

    return jobs.start_job(slot, total, work, on_done=done)


# --------------------------------------------------------------------------- in the viewer
def cell_intervals(r: DatasetResult, idx: tuple, view: str, slot: str) -> None:
    """A dataset cell: its mean with the interval, raw and as the share restored or destroyed,
    and every pair's value (strip plot)."""
    t = tuple(idx)
    e, lo, hi = r.effect
    what = "share restored" if get_direction(r.direction).restores else "share destroyed (1 − score)"
    rows = [("mean normalised score", describe_interval(float(r.normalized[t]), float(r.normalized_low[t]),
                                                         float(r.normalized_high[t]), False, r.level)),
            (f"mean {r.metric} (raw)", describe_interval(float(r.values[t]), float(r.ci_low[t]),
                                                         float(r.ci_high[t]), False, r.level)),
            (what, describe_interval(float(e[t]), float(lo[t]), float(hi[t]), True, r.level))]
    st.dataframe(pd.DataFrame(rows, columns=["", "value"]), hide_index=True, width="stretch")
    st.altair_chart(strip_plot(r, t, view), key=f"strip_{slot}_{r.direction}")


def quadrant_section(res: BothResult, slot: str, head, position) -> None:
    """Needed (noising) against enough (denoising) for every component."""
    st.subheader("Quadrants: needed, enough, both or neither")
    threshold = st.slider("Line between low and high", 0.1, 0.9, 0.5, 0.05, key=f"ds_thr_{slot}",
                          help="A component is 'enough' when restoring it alone brings back at least "
                               "this share of the clean answer, and 'needed' when corrupting it "
                               "destroys at least this share.")
    for text in QUADRANTS.values():
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


def per_pair_frame(res) -> pd.DataFrame:
    """Every pair's value at every cell (the 'every pair' CSV)."""
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
            df["model"], df["sweep"], df["metric"] = r.model, r.sweep, r.metric
            parts.append(df)
    return pd.concat(parts, ignore_index=True)
