"""Altair heatmaps of a result (one pair or a dataset), shared by the dashboard, exports and the CLI.

One heatmap body for every result: layers down the side; token positions (labelled with
the tokens, in order, repeats kept; positions where the prompts differ marked), heads or
one column along the bottom. The view is one of

- "normalized": how much of the clean behaviour a patch moved, the same way round in both
  directions: restored (denoising: the normalised score) or destroyed (noising: 1 − score),
  so the cells that matter are the strong ones either way (sites.Direction.effect);
- "value": the raw metric, coloured around the unpatched target run's value.
"""
from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from .results import PatchResult
from .sites import get_direction

CELL_TEXT_LIMIT = 500  # draw numbers in cells only when there are few enough to read
# a chart stretched to its container fits its width only: its height stays the rows' height (a
# whole-chart fit squeezed the rows to make room for titles, labels and the legend)
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")
SELECT_NAME = "cell"
HEAD_AXES = ("head", "kv_head")


def chart_frame(r: PatchResult, head: int | None = None, position: int | None = None) -> pd.DataFrame:
    """The rows one chart shows: a 3-axis head_pos result is sliced by head or by position."""
    df = r.to_frame()
    if "head" in r.axes and "position" in r.axes:
        if position is not None:
            df = df[df["position"] == position]
        else:
            df = df[df["head"] == (0 if head is None else head)]
    return df.reset_index(drop=True)


def chart_axes(r: PatchResult, position: int | None = None) -> tuple[str, str]:
    """(x field, y field) of the heatmap."""
    if r.axes == ("layer",):
        return "column", "layer"
    if (len(r.axes) == 2 and r.axes[1] in HEAD_AXES) or (len(r.axes) == 3 and position is not None):
        return r.axes[-1], "layer"
    return "position", "layer"


def x_encoding(r, x: str, labels=None, small: bool = False) -> alt.X:
    """Token labels on positions (the differing ones in red, bold), heads upright; `small`: for
    small multiples (smaller labels, no axis title)."""
    if x == "position":
        shown = [str(t).strip() or repr(t) for t in (labels or r.tokens)]
        other = getattr(r, "corrupted_tokens", None) or []
        for p in getattr(r, "diff_positions", []) or []:      # both prompts' tokens where they differ
            if labels is None and p < len(other) and p < len(shown):
                shown[p] = f"{shown[p]} / {str(other[p]).strip() or repr(other[p])}"
        labels = json.dumps(shown)
        diff = json.dumps(sorted(int(p) for p in getattr(r, "diff_positions", []) or []))
        title = "role" if getattr(r, "aligned_by", "") == "role" else "token position"
        # the title sits on the axis, not the field: a cell's aria-label then reads 'position: 5'
        return alt.X("position:O", axis=alt.Axis(
            title=None if small else title + " (red: where the prompts differ)" if diff != "[]" else title,
            labelExpr=f"{labels}[datum.value]", labelAngle=-45, labelOverlap=False,
            labelFontSize=8 if small else 10,
            labelColor=alt.ExprRef(f"indexof({diff}, datum.value) >= 0 ? '#b2182b' : '#333'"),
            labelFontWeight=alt.ExprRef(f"indexof({diff}, datum.value) >= 0 ? 'bold' : 'normal'")))
    if x in HEAD_AXES:
        return alt.X(f"{x}:O", axis=alt.Axis(title="key/value head" if x == "kv_head" else "head",
                                             labelAngle=0))
    return alt.X("column:N", title=None, axis=alt.Axis(labelAngle=0))


def y_encoding(n_layers: int) -> alt.Y:
    """Every layer labelled (Vega-Lite would drop every other one on a tall chart)."""
    return alt.Y("layer:O", title="layer", sort="ascending",
                 axis=alt.Axis(values=list(range(n_layers)), labelOverlap=False))


def size(df: pd.DataFrame, x: str, width=None) -> dict:
    return {"width": width or max(160, min(900, 42 * df[x].nunique())),
            "height": max(120, min(900, 18 * df["layer"].nunique()))}


def _subtitle(r) -> list[str]:
    out = []
    n = getattr(r, "n_pairs", 1)
    if n > 1:
        out.append(f"Mean of {n} pairs; first pair: clean “{r.pair.clean}”")
    else:
        out.append(f"Clean: “{r.pair.clean}” → {r.pair.answer!r}")
        out.append(f"Corrupted: “{r.pair.corrupted}” → {r.pair.wrong!r}")
    out.append(f"Model: {r.model}" + (f" · ablation: {r.ablation}" if r.ablation != "corrupted" else ""))
    return out


def view_title(r, view: str) -> str:
    """What the colour shows, in words."""
    if view == "value":
        return f"{_metric_words(r.metric)} after the patch"
    d = get_direction(r.direction)
    return ("share of the clean behaviour restored" if d.restores else
            "share of the clean behaviour destroyed")


def _metric_words(metric: str) -> str:
    return {"logit_diff": "logit difference", "prob": "probability of the answer",
            "logprob": "log-probability of the answer"}.get(metric, metric)


def chart_title(r, head=None, position=None) -> str:
    from .sweeps import SWEEPS

    d = get_direction(r.direction)
    what = "clean activations copied into the corrupted run" if d.restores else \
        "corrupted activations copied into the clean run"
    t = f"{SWEEPS[r.sweep].title}: {what}"
    if getattr(r, "path", None):
        t = f"Path patching, {SWEEPS[r.sweep].title.split(',')[0].lower()} → " \
            f"{', '.join(r.path['receivers'])}: {what}"
    if getattr(r, "n_pairs", 1) > 1:
        t += f", mean of {r.n_pairs} pairs"
    if len(r.axes) == 3:
        t += f" — position {position} ({r.tokens[position]!r})" if position is not None \
            else f" — head {0 if head is None else head}"
    return t


def colour_field(r: PatchResult, value: str = "normalized") -> str:
    """The column a view colours by: the raw value, the restored share (denoising, the score)
    or the destroyed share (noising, 1 − score)."""
    if value == "value":
        return "value"
    return "normalized" if get_direction(r.direction).restores else "damage"


def _scale(r: PatchResult, df: pd.DataFrame, field: str) -> tuple[alt.Scale, float, float]:
    """(diverging scale, its midpoint, its half-width): raw values centred on the unpatched
    target run with a symmetric domain (small changes stay pale), shares centred at 0."""
    vals = df[field].to_numpy(dtype=float)
    vals = vals[np.isfinite(vals)]
    if field == "value":
        d = get_direction(r.direction)
        mid = float(d.target_metric(r.clean_metric, r.corrupted_metric))
        extent = (float(np.abs(vals - mid).max()) if vals.size else 1.0) or 1.0
    else:
        mid, extent = 0.0, max(float(np.abs(vals).max()) if vals.size else 1.0, 1.0)
    return (alt.Scale(scheme="redblue", reverse=True, domainMid=mid, domain=[mid - extent, mid + extent]),
            mid, extent)


def _tooltip(r: PatchResult, df: pd.DataFrame, field: str, dataset: bool) -> list:
    fields = [a for a in ("layer", "position") + HEAD_AXES if a in df.columns]
    tooltip = [alt.Tooltip(f"{a}:O") for a in fields]
    if "token" in df.columns:
        tooltip.insert(2, alt.Tooltip("token:N", title="role" if getattr(r, "aligned_by", "") == "role"
                                      else "token"))
    tooltip += [alt.Tooltip("value:Q", title=f"{_metric_words(r.metric)} (raw)", format=".3f"),
                alt.Tooltip("normalized:Q", title="normalised score", format=".3f")]
    if field == "damage":
        tooltip.append(alt.Tooltip("damage:Q", title="destroyed (1 − score)", format=".3f"))
    if dataset:
        tooltip += [alt.Tooltip("low:Q", title=f"{r.level:.0%} interval low", format=".3f"),
                    alt.Tooltip("high:Q", title=f"{r.level:.0%} interval high", format=".3f"),
                    alt.Tooltip("certain:N", title="effect"), alt.Tooltip("n_pairs:Q", title="pairs")]
    return tooltip


def _intervals(r: PatchResult, df: pd.DataFrame, field: str) -> pd.DataFrame:
    """A dataset's interval of what the cell shows, and whether it excludes 'no effect'."""
    d = get_direction(r.direction)
    lo, hi = ("ci_low", "ci_high") if field == "value" else ("normalized_low", "normalized_high")
    low, high = df[lo], df[hi]
    if field == "damage":
        low, high = 1.0 - df["normalized_high"], 1.0 - df["normalized_low"]
    nlo, nhi = df["normalized_low"], df["normalized_high"]
    zero = d.effect(0.0)   # the score of no effect (effect() is its own inverse)
    return df.assign(low=low, high=high, certain=np.where(
        ~(np.isfinite(nlo) & np.isfinite(nhi)), "no interval",
        np.where((nlo <= zero) & (nhi >= zero), "not clear (interval includes no effect)",
                 "clear effect")))


def _selection(fields: list, selected: dict | None):
    pick = [{k: int(v) for k, v in selected.items() if k in fields}] if selected else None
    return alt.selection_point(name=SELECT_NAME, fields=fields, on="click", clear="dblclick",
                               empty=False, value=pick)


def heatmap(r: PatchResult, value: str = "normalized", head: int | None = None,
            position: int | None = None, width: int | None = None, selectable: bool = True,
            selected: dict | None = None, fit_width: bool = True) -> alt.LayerChart:
    """The heatmap of a result (see the module docstring); `selected` outlines one cell.
    fit_width=False: no autosize of its own (a part of a concatenated chart)."""
    d = get_direction(r.direction)
    df = chart_frame(r, head, position)
    x, _ = chart_axes(r, position)
    if x == "column":
        df = df.assign(column="all positions")
    df = df.assign(damage=1.0 - df["normalized"])
    field = colour_field(r, value)
    scale, mid, extent = _scale(r, df, field)
    dataset = "normalized_low" in df.columns
    if dataset:
        df = _intervals(r, df, field)
    df = df.assign(shown=df[field].round(2))
    x_enc, y_enc = x_encoding(r, x), y_encoding(r.n_layers)
    fields = [a for a in ("layer", "position") + HEAD_AXES if a in df.columns]
    tooltip = _tooltip(r, df, field, dataset)
    base = alt.Chart(df)
    color = alt.Color(f"{field}:Q", title=view_title(r, value), scale=scale,
                      legend=alt.Legend(orient="bottom", direction="horizontal", gradientLength=220,
                                        titleLimit=500))
    rect = base.mark_rect().encode(x=x_enc, y=y_enc, color=color, tooltip=tooltip)
    if getattr(r, "noise_floor", 0) > 0:   # low precision: changes within the measured noise fade
        target = float(d.target_metric(r.clean_metric, r.corrupted_metric))
        df["in_noise"] = (df["value"] - target).abs() <= r.noise_floor
        base = alt.Chart(df)
        rect = base.mark_rect().encode(x=x_enc, y=y_enc, color=color, tooltip=tooltip + [
            alt.Tooltip("in_noise:N", title=f"within the noise floor (±{r.noise_floor:.2g})")],
            opacity=alt.condition("datum.in_noise", alt.value(0.35), alt.value(1.0)))
    if selectable:
        sel = _selection(fields, selected)
        rect = rect.add_params(sel).encode(
            stroke=alt.condition(sel, alt.value("#111"), alt.value(None)),
            strokeWidth=alt.condition(sel, alt.value(2.5), alt.value(0)))
    layers = [rect]
    if len(df) <= CELL_TEXT_LIMIT:
        strong = f"abs(datum['{field}'] - {mid}) > {0.6 * extent}"
        layers.append(base.mark_text(fontSize=9).encode(
            x=x_enc, y=y_enc, text=alt.Text("shown:Q", format=".2f"), tooltip=tooltip,
            color=alt.condition(strong, alt.value("white"), alt.value("black")),
            opacity=alt.condition("datum.certain == 'not clear (interval includes no effect)'",
                                  alt.value(0.45), alt.value(1.0)) if dataset else alt.value(1.0)))
    return alt.layer(*layers).properties(
        title=alt.TitleParams(chart_title(r, head, position), subtitle=_subtitle(r), anchor="start"),
        **({"autosize": FIT_WIDTH} if fit_width else {}), **size(df, x, width))


def strongest_head(r: PatchResult) -> int:
    """The head of the cell with the largest effect (restored or destroyed share): where a
    layer × position × head result is worth opening, instead of head 0."""
    axis = next((a for a in HEAD_AXES if a in r.axes), None)
    if axis is None:
        return 0
    e = np.asarray(get_direction(r.direction).effect(r.normalized), dtype=float)
    if not np.isfinite(e).any():
        return 0
    idx = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(e), e, -np.inf))), e.shape)
    return int(idx[r.axes.index(axis)])


def heads_grid(r: PatchResult, value: str = "normalized", selected: dict | None = None,
               columns: int = 3) -> alt.FacetChart:
    """Small multiples of a layer × position × head result: one small layer × position heatmap
    per head, on one colour scale, so the heads that matter stand out at a glance."""
    df = r.to_frame().assign(damage=lambda f: 1.0 - f["normalized"])
    field = colour_field(r, value)
    scale, _, _ = _scale(r, df, field)
    dataset = "normalized_low" in df.columns
    if dataset:
        df = _intervals(r, df, field)
    axis = next(a for a in HEAD_AXES if a in r.axes)
    fields = ["layer", "position", axis]
    sel = _selection(fields, selected)
    n_pos, n_layers = df["position"].nunique(), df["layer"].nunique()
    rect = alt.Chart(df).mark_rect().encode(
        x=x_encoding(r, "position", small=True), y=alt.Y("layer:O", title="layer", axis=alt.Axis(labelFontSize=8)),
        color=alt.Color(f"{field}:Q", title=view_title(r, value), scale=scale,
                        legend=alt.Legend(orient="bottom", direction="horizontal", gradientLength=220,
                                          titleLimit=500)),
        tooltip=_tooltip(r, df, field, dataset),
        stroke=alt.condition(sel, alt.value("#111"), alt.value(None)),
        strokeWidth=alt.condition(sel, alt.value(2), alt.value(0)),
    ).add_params(sel).properties(width=max(90, min(260, 11 * n_pos)), height=max(90, min(300, 7 * n_layers)))
    title = chart_title(r).split(" — ")[0] + " — every head"
    return rect.facet(facet=alt.Facet(f"{axis}:O", title=None,
                                      header=alt.Header(labelExpr="'head ' + datum.value", labelFontSize=12,
                                                        labelFontWeight="bold")),
                      columns=columns).properties(
        title=alt.TitleParams(title, subtitle=_subtitle(r), anchor="start"))


def pattern_chart(probs: np.ndarray, query_tokens: list, key_tokens: list, title: str,
                  diff_positions=(), size_px: int = 380) -> alt.LayerChart:
    """One head's attention probabilities: query positions down the side, key positions along
    the bottom (tokens as labels; positions where the prompts differ in red)."""
    T = probs.shape[0]
    q, k = np.indices(probs.shape)
    df = pd.DataFrame({"query": q.reshape(-1), "key": k.reshape(-1), "p": probs.reshape(-1)})
    df = df.assign(query_token=[query_tokens[i] for i in df["query"]],
                   key_token=[key_tokens[i] for i in df["key"]])
    df = df[df["key"] <= df["query"]]   # causal: nothing after the query
    labels = json.dumps([str(t).strip() or repr(t) for t in key_tokens])
    qlabels = json.dumps([str(t).strip() or repr(t) for t in query_tokens])
    diff = json.dumps(sorted(int(p) for p in diff_positions))
    red = alt.ExprRef(f"indexof({diff}, datum.value) >= 0 ? '#b2182b' : '#333'")
    x = alt.X("key:O", title="attends to (key position)", axis=alt.Axis(
        labelExpr=f"{labels}[datum.value]", labelAngle=-45, labelOverlap=False, labelColor=red))
    y = alt.Y("query:O", title="from (query position)", axis=alt.Axis(
        labelExpr=f"{qlabels}[datum.value]", labelOverlap=False, labelColor=red))
    rect = alt.Chart(df).mark_rect().encode(
        x=x, y=y, color=alt.Color("p:Q", title="attention", scale=alt.Scale(scheme="blues", domain=[0, 1]),
                                  legend=alt.Legend(orient="bottom", direction="horizontal")),
        tooltip=[alt.Tooltip("query:O", title="from position"), alt.Tooltip("query_token:N", title="from token"),
                 alt.Tooltip("key:O", title="to position"), alt.Tooltip("key_token:N", title="to token"),
                 alt.Tooltip("p:Q", title="attention", format=".3f")])
    side = max(160, min(size_px, 24 * T))
    return alt.layer(rect).properties(title=title, width=side, height=side, autosize=FIT_WIDTH)


def chart_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc
    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def chart_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc
    return vlc.vegalite_to_svg(chart.to_json())
