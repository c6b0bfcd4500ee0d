"""Showing a result: heatmap, the clicked cell, the plain-language summary and downloads."""
from __future__ import annotations

import json
import math

import streamlit as st

from patchcore.charts import chart_png, chart_svg, heatmap
from patchcore.summary import cell_name, meaning, summarize
from ui.state import VIEWS, bind, selected_cell
from ui.text import md_escape, metric_md, show_error, show_token


def _cell_from_event(result, chart_key: str, cell_key: str) -> None:
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("cell") or []
    try:
        st.session_state[cell_key] = ",".join(str(int(points[0][a])) for a in result.axes)
    except (IndexError, KeyError, TypeError, ValueError):
        st.session_state[cell_key] = ""


def _heatmap(result, view: str, head, position):
    chart = heatmap(result, value=view, head=head, position=position)
    chart.to_dict()  # full validation of what is actually drawn
    return chart


def cell_detail(result, idx: tuple[int, ...]) -> None:
    """One cell: where it is, its raw and normalised value, and what that means in words."""
    shape = result.values.shape
    if len(idx) != len(shape) or any(i >= n for i, n in zip(idx, shape)):
        st.info(f"The selected cell ({', '.join(map(str, idx))}) is not part of this result. "
                "Click a cell in the heatmap to see its details.")
        return
    raw, score = float(result.values[idx]), float(result.normalized[idx])
    items = [("layer", str(idx[result.axes.index("layer")]))]
    if "position" in result.axes:
        pos = idx[result.axes.index("position")]
        # a metric's value is Markdown: a token (an imported run's, too) is escaped to show as text
        items += [("position", str(pos)), ("token", md_escape(show_token(result.tokens[pos])))]
    if "head" in result.axes:
        items.append(("head", str(idx[result.axes.index("head")])))
    items += [(f"raw {metric_md(result.metric)}", f"{raw:.4f}"),
              ("normalised score", "—" if not math.isfinite(score) else f"{score:.3f}")]
    with st.container(border=True):
        st.markdown("**Selected cell: " + md_escape(cell_name(result, idx)) + "**")
        for col, (label, value) in zip(st.columns(len(items)), items):
            col.metric(label, value)
        st.text(meaning(result, score))
        st.caption(f"Unpatched: clean {result.clean_metric:.4f}, corrupted {result.corrupted_metric:.4f}. "
                   "Double-click the heatmap to clear the selection.")


def show_result(result, slot: str, cell_key: str = "cell") -> None:
    """Warnings, heatmap with cell detail, plain-language summary and downloads.

    `cell_key` holds the selected cell as "layer,position[,head]" ("cell" is the one in the URL)."""
    if result.method == "atp":
        st.info("Fast preview: these values are estimates by attribution patching (a first-order "
                "approximation from one backward pass), not exact patching. Press Run for exact values.",
                icon=":material/bolt:")
    if result.sweep == "layer":
        st.info("Patching the whole residual stream at one layer restores everything after it, so "
                "values near 1 at every layer are expected here and say little. Use "
                "“Residual stream, layer × position” to see where the information sits.",
                icon=":material/info:")
    for w in result.warnings:
        st.warning(md_escape(w), icon=":material/warning:")

    controls = st.columns([2, 3])
    view = controls[0].segmented_control(
        "Show", list(VIEWS), format_func=VIEWS.get, **bind(f"w_view_{slot}", "view"),
        help="Normalised: 1 = clean behaviour, 0 = corrupted behaviour. "
             f"Raw: the {metric_md(result.metric)} itself after each patch.") or "normalized"
    head = position = None
    if len(result.axes) == 3:
        with controls[1]:
            by = st.radio("Slice the heads by", ["head", "position"], horizontal=True,
                          key=f"w_slice_{slot}",
                          help="A layer × position × head result has three axes; the heatmap "
                               "shows one head (layer × position) or one position (layer × head).")
            if by == "head":
                head = st.selectbox("Head", range(result.n_heads), key=f"w_head_{slot}")
            else:
                position = st.selectbox(
                    "Position", range(len(result.tokens)), key=f"w_pos_{slot}",
                    format_func=lambda p: f"{p}: {show_token(result.tokens[p])}")
    try:
        chart = _heatmap(result, view, head, position)
    except Exception as exc:  # noqa: BLE001 - the rest of the result stays readable
        show_error(exc)
        return
    chart_key = f"chart_{slot}"
    st.altair_chart(chart, on_select=lambda: _cell_from_event(result, chart_key, cell_key),
                    selection_mode="cell", key=chart_key)
    st.caption("Red: towards the clean behaviour; blue: away from it. Hover a cell for its numbers; "
               "click it for its meaning.")
    idx = selected_cell(cell_key)
    if idx is not None:
        cell_detail(result, idx)

    st.subheader("What this shows")
    for sentence in summarize(result):
        st.text("• " + sentence)
    # a stored or imported run's strings are shown as text, never as Markdown (links, images)
    st.caption(f"{result.n_patches} patches · {result.forward_rows} forward rows · "
               f"{result.seconds:.1f} s on {md_escape(result.device)} ({md_escape(result.dtype)}) · "
               f"{md_escape(result.model)}")

    stem = f"patchcore_{result.sweep}_{result.direction}_{result.metric}"
    cols = st.columns(4)
    cols[0].download_button("CSV", result.to_frame().to_csv(index=False), f"{stem}.csv",
                            "text/csv", key=f"dl_csv_{slot}", icon=":material/download:")
    cols[1].download_button("JSON", json.dumps(result.to_json(), indent=1), f"{stem}.json",
                            "application/json", key=f"dl_json_{slot}", icon=":material/download:")
    cols[2].download_button("PNG", lambda: chart_png(chart), f"{stem}.png", "image/png",
                            key=f"dl_png_{slot}", icon=":material/image:")
    cols[3].download_button("SVG", lambda: chart_svg(chart), f"{stem}.svg", "image/svg+xml",
                            key=f"dl_svg_{slot}", icon=":material/image:")

    # the hypothesis check: clicked cells become a selection, tested together (ui/hypothesis.py)
    from ui import hypothesis
    hypothesis.panel(result, slot, [chart_key])
