"""One result viewer for every result: a single pair's sweep, a dataset's means with intervals,
or a dataset in both directions with its quadrants.

One code path draws notes, the view controls, the heatmap(s) with the clicked cell outlined,
the cell's detail, the plain-language summary, the downloads and the attention patterns; the
dataset parts (intervals, every pair's values, both directions, quadrants) are added where the
result has them (ui.datasets draws those). Noising is shown as the share of the clean
behaviour destroyed (1 − score) everywhere: chart, cell detail, summary and Guide agree.

A stored or imported run's strings are shown as text, never as Markdown (links, images).
"""
from __future__ import annotations

import json
import math

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from patchcore.charts import chart_png, chart_svg, heads_grid, heatmap, strongest_head
from patchcore.dataset_summary import cell_label, dataset_summary
from patchcore.results import BothResult, DatasetResult
from patchcore.sites import get_direction
from patchcore.summary import cell_name, meaning, summarize
from patchcore.sweeps import SWEEPS, get_sweep
from ui import datasets as uid
from ui import patterns as ui_patterns
from ui.state import VIEWS, bind, selected_cell
from ui.text import md_escape, metric_md, show_error, show_token

SLICES = {"head": "One head", "position": "One position", "grid": "Every head (small multiples)"}
COLOURS = {True: "Red: the patch restores the clean behaviour (1 = all of it); blue: it pushes "
                 "further towards the wrong answer.",
           False: "Red: corrupting this destroys the clean behaviour (1 = all of it, so the cells "
                  "the model needs stand out); blue: corrupting it makes the clean answer stronger."}


def parts(result) -> list:
    """The results a viewer draws: both directions of a BothResult, else the result itself."""
    return [result.denoise, result.noise] if isinstance(result, BothResult) else [result]


def _cell_from_event(result, chart_key: str, cell_key: str) -> None:
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("cell") or []
    try:
        st.session_state[cell_key] = ",".join(str(int(points[0][a])) for a in result.axes)
    except (IndexError, KeyError, TypeError, ValueError):
        st.session_state[cell_key] = ""


def identity(r) -> tuple:
    """The same for the same result, also when it is read again (History opens a stored run anew
    on every rerun): a new result opens on its strongest head, the same one keeps the choice."""
    return (r.model, r.sweep, r.direction, r.metric, r.seconds, r.values.shape,
            float(np.nansum(np.nan_to_num(r.values))))


def _valid(r, idx) -> bool:
    return idx is not None and len(idx) == len(r.values.shape) and all(
        0 <= i < n for i, n in zip(idx, r.values.shape))


# ------------------------------------------------------------------------------ notes
def _notes(result, rs: list) -> set[str]:
    """Each caveat, warning and note once, above the chart; returns what was shown, so the
    summary does not say it again."""
    first = rs[0]
    shown: set[str] = set()
    if first.method == "atp":
        st.info("Fast preview: these values are estimates by attribution patching (a first-order "
                "approximation from one backward pass), not exact patching. Press Run for exact values.",
                icon=":material/bolt:")
    caveat = get_sweep(first.sweep).caveat if first.sweep in SWEEPS else ""
    if caveat:
        st.info(caveat, icon=":material/info:")
        shown.add("Caveat: " + caveat[0].lower() + caveat[1:])
    for r in rs:
        for w in list(r.warnings) + list(getattr(r, "notes", [])):
            if w not in shown:
                shown.add(w)
                (st.warning if w in r.warnings else st.info)(
                    md_escape(w), icon=":material/warning:" if w in r.warnings else ":material/info:")
    return shown


# ------------------------------------------------------------------------------ controls
def _controls(first, slot: str, cell_key: str) -> tuple[str, int | None, int | None, bool]:
    """(view, head, position, grid) from the view toggle and, for three axes, the slice."""
    controls = st.columns([2, 3])
    view = controls[0].segmented_control(
        "Show", list(VIEWS), format_func=VIEWS.get, **bind(f"w_view_{slot}", "view"),
        help="Normalised: the share of the clean behaviour a patch restored (denoising) or destroyed "
             f"(noising). Raw: the {metric_md(first.metric)} itself after each patch.") or "normalized"
    if len(first.axes) != 3:
        return view, None, None, False
    ss = st.session_state
    idx = selected_cell(cell_key)
    axis = first.axes[2]
    if ss.get(f"_viewer_{slot}") != identity(first):   # a new result opens on its strongest head
        ss[f"_viewer_{slot}"] = identity(first)
        ss[f"w_head_{slot}"] = idx[2] if _valid(first, idx) else strongest_head(first)
    with controls[1]:
        by = st.radio("Show the heads", list(SLICES), format_func=SLICES.get, horizontal=True,
                      key=f"w_slice_{slot}",
                      help="A layer × position × head result has three axes: one head at a time "
                           "(it opens on the strongest), one position (layer × head), or every head "
                           "side by side.")
        if by == "head":
            n = first.values.shape[2]
            head = st.selectbox("Key/value head" if axis == "kv_head" else "Head", range(n),
                                key=f"w_head_{slot}")
            return view, head, None, False
        if by == "position":
            position = st.selectbox("Position", range(len(first.tokens)), key=f"w_pos_{slot}",
                                    format_func=lambda p: f"{p}: {show_token(str(first.tokens[p]))}")
            return view, None, position, False
    return view, None, None, True


# ------------------------------------------------------------------------------ the cell
def cell_detail(r, idx: tuple, view: str, slot: str) -> None:
    """One cell: where it is, its raw value, its score and the share restored or destroyed (the
    number the chart shows), and what that means in words; for a dataset, its intervals and
    every pair's value."""
    if not _valid(r, idx):
        st.info(f"The selected cell ({', '.join(map(str, idx))}) is not part of this result. "
                "Click a cell in the heatmap to see its details.")
        return
    d = get_direction(r.direction)
    dataset = isinstance(r, DatasetResult)
    raw, score = float(r.values[idx]), float(r.normalized[idx])
    items = [("layer", str(idx[r.axes.index("layer")]))]
    if "position" in r.axes:
        pos = idx[r.axes.index("position")]
        tok = show_token(str(r.tokens[pos]))
        other = list(getattr(r, "corrupted_tokens", None) or [])
        if pos in (getattr(r, "diff_positions", None) or []) and pos < len(other):
            tok += " / " + show_token(str(other[pos]))
        # a metric's value is Markdown: a token (an imported run's, too) is escaped to show as text
        items += [("position", str(pos)), ("role" if getattr(r, "aligned_by", "") == "role" else "token",
                                           md_escape(tok))]
    for axis in ("head", "kv_head"):
        if axis in r.axes:
            items.append((axis.replace("_", "/") if axis == "kv_head" else axis, str(idx[r.axes.index(axis)])))
    mean = "mean " if dataset else ""
    items += [(f"{mean}raw {metric_md(r.metric)}", f"{raw:.4f}"),
              (f"{mean}normalised score", "—" if not math.isfinite(score) else f"{score:.3f}"),
              ("destroyed (1 − score)" if not d.restores else "restored",
               "—" if not math.isfinite(score) else f"{d.effect(score):.3f}")]
    with st.container(border=True):
        name = cell_label(r, idx) if dataset else cell_name(r, idx)
        st.markdown("**Selected cell: " + md_escape(name) + "**")
        for col, (label, value) in zip(st.columns(len(items)), items):
            col.metric(label, value)
        st.text(meaning(r, score))
        if dataset:
            uid.cell_intervals(r, idx, view, slot)
        else:
            st.caption(f"Unpatched: clean {r.clean_metric:.4f}, corrupted {r.corrupted_metric:.4f}. "
                       "Double-click the heatmap to clear the selection.")


# ------------------------------------------------------------------------------ exports
def export_frame(result) -> pd.DataFrame:
    """The CSV: one row per cell (and direction), with what the numbers are about."""
    frames = []
    for r in parts(result):
        df = r.to_frame()
        ctx = {"model": r.model, "sweep": r.sweep, "direction": r.direction, "metric": r.metric,
               "ablation": r.ablation}
        if not isinstance(r, DatasetResult):
            ctx.update(clean=r.pair.clean, corrupted=r.pair.corrupted, answer=r.pair.answer,
                       wrong=r.pair.wrong)
        frames.append(df.assign(**{k: v for k, v in ctx.items() if k not in df.columns}))
    return pd.concat(frames, ignore_index=True)


def _downloads(result, chart, slot: str) -> None:
    first = parts(result)[0]
    dataset = isinstance(first, DatasetResult)
    both = isinstance(result, BothResult)
    what = "both" if both else first.direction
    stem = f"patchcore_{first.sweep}_{what}_{first.metric}" + (f"_{first.n_pairs}pairs" if dataset else "")
    # on_click="ignore": a download does not rerun the page, so the other buttons' files stay
    # valid (a rerun replaced them, and a PNG clicked right after a CSV was 'not found')
    kw = {"on_click": "ignore", "icon": ":material/download:"}
    buttons = [("CSV (means and intervals)" if dataset else "CSV", lambda: export_frame(result).to_csv(index=False),
                f"{stem}.csv", "text/csv", "csv"),
               ("JSON", lambda: json.dumps(result.to_json(), indent=1), f"{stem}.json", "application/json", "json"),
               ("PNG", lambda: chart_png(chart), f"{stem}.png", "image/png", "png"),
               ("SVG", lambda: chart_svg(chart), f"{stem}.svg", "image/svg+xml", "svg")]
    if dataset:
        buttons.insert(1, ("CSV (every pair)", lambda: uid.per_pair_frame(result).to_csv(index=False),
                           f"{stem}_pairs.csv", "text/csv", "pairs"))
    for col, (label, data, name, mime, key) in zip(st.columns(len(buttons)), buttons):
        col.download_button(label, data, name, mime, key=f"dl_{key}_{slot}", **kw)


# ------------------------------------------------------------------------------ the viewer
def show_result(result, slot: str, cell_key: str = "cell", run_id: int | None = None, model=None) -> None:
    """Every result, one way: notes, the heatmap(s) with the clicked cell, its detail, the
    summary, downloads and (for heads) attention patterns.

    `cell_key` holds the selected cell as "layer,position[,head]" ("cell" is the one in the URL).
    `model`: the loaded model, for attention patterns (None: the session's, if loaded)."""
    rs = parts(result)
    first = rs[0]
    both, dataset = isinstance(result, BothResult), isinstance(first, DatasetResult)
    if dataset:
        st.caption(f"{first.n_pairs} pairs · {md_escape(first.model)} · "
                   f"{md_escape(SWEEPS[first.sweep].title if first.sweep in SWEEPS else first.sweep)} · "
                   f"{metric_md(first.metric)} · "
                   + ("both directions" if both else "denoising" if first.direction == "denoise" else "noising")
                   + (f" · stored as run {run_id}" if run_id else ""))
    shown = _notes(result, rs)
    if dataset and first.rejected:
        with st.expander(f"{len(first.rejected)} rows of the file were rejected"):
            st.dataframe(pd.DataFrame(first.rejected), hide_index=True, width="stretch")

    view, head, position, grid = _controls(first, slot, cell_key)
    idx = selected_cell(cell_key)
    if dataset:
        st.caption("Each cell is the mean over pairs; hover for its 95% interval. Faded numbers: the "
                   "interval includes “no effect”. Click a cell to see every pair's value (double-click clears).")
    charts = []
    columns = st.columns(2) if both else [st.container()]
    for r, col in zip(rs, columns):
        with col:
            if both:
                st.markdown("**Denoising** – is it *enough*? (clean copied into corrupted)"
                            if r.direction == "denoise" else
                            "**Noising** – is it *needed*? (corrupted copied into clean)")
            picked = dict(zip(r.axes, idx)) if _valid(r, idx) else None
            try:
                chart = heads_grid(r, view, picked) if grid else \
                    heatmap(r, value=view, head=head, position=position, selected=picked)
                chart.to_dict()  # full validation of what is actually drawn
            except Exception as exc:  # noqa: BLE001 - the rest of the result stays readable
                show_error(exc)
                return
            charts.append(chart)
            key = f"chart_{slot}" + (f"_{r.direction}" if both else "")
            st.altair_chart(chart, on_select=lambda r=r, key=key: _cell_from_event(r, key, cell_key),
                            selection_mode="cell", key=key)
    st.caption(" ".join(dict.fromkeys(COLOURS[get_direction(r.direction).restores] for r in rs)) +
               (" Raw view: colours are centred on the unpatched run the patch starts from."
                if view == "value" else "") + " Hover a cell for its numbers; click it for its meaning.")

    if _valid(first, idx):
        for r, col in zip(rs, st.columns(2) if both else [st.container()]):
            with col:
                cell_detail(r, idx, view, slot)
    elif idx is not None:
        cell_detail(first, idx, view, slot)
    if both:
        uid.quadrant_section(result, slot, head, position)

    st.subheader("What this shows")
    for r in rs:
        if both:
            st.markdown(f"**{'Denoising' if r.direction == 'denoise' else 'Noising'}**")
        for sentence in (dataset_summary(r) if dataset else summarize(r)):
            if sentence not in shown:
                st.text("• " + sentence)
    seconds = result.seconds if both else first.seconds
    st.caption((f"{first.n_patches} patches · {first.forward_rows} forward rows · " if not dataset else "")
               + f"{seconds:.1f} s on {md_escape(first.device)} ({md_escape(first.dtype)}) · "
               f"{md_escape(first.model)}")
    export = charts[0] if len(charts) == 1 else alt.hconcat(*[   # both directions side by side
        heatmap(r, value=view, head=head, position=position, selectable=False, fit_width=False)
        for r in rs]).resolve_scale(color="independent")
    _downloads(result, export, slot)
    ui_patterns.panel(result, slot, idx if _valid(first, idx) else None, model)

    # the hypothesis check: clicked cells become a selection, tested together (ui/hypothesis.py)
    from ui import hypothesis
    hypothesis.panel(result, slot, [f"chart_{slot}" + (f"_{r.direction}" if both else "") for r in rs])
