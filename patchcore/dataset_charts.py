"""Altair charts for dataset runs: mean heatmap with intervals, per-pair strip plot,
quadrant views, and the difference heatmap of two runs."""
from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from .charts import CELL_TEXT_LIMIT, SELECT_NAME, chart_axes, chart_frame
from .compare import Comparison
from .results import BothResult, DatasetResult
from .sites import get_direction
from .dataset_summary import QUADRANT_ORDER, quadrants
from .summary import STRONG

QUADRANT_COLORS = {"needed and enough": "#1b7837", "needed but not enough": "#e08214",
                   "enough but not needed": "#2166ac", "neither": "#d9d9d9", "unknown": "#ffffff"}


def _x_encoding(r, x: str, labels=None):
    if x == "position":
        labels = json.dumps([str(t).strip() or repr(t) for t in (labels or r.tokens)])
        title = "role" if getattr(r, "aligned_by", "") == "role" else "token position"
        # the title sits on the axis, not the field: a cell's aria-label then reads 'position: 5',
        # and its role/token reads from the tooltip field
        return alt.X("position:O", axis=alt.Axis(title=title, labelExpr=f"{labels}[datum.value]",
                                                 labelAngle=-45, labelOverlap=False))
    if x == "head":
        return alt.X("head:O", title="head")
    return alt.X("column:N", title=None)


def _size(df: pd.DataFrame, x: str, width=None) -> dict:
    return {"width": width or max(160, min(900, 42 * df[x].nunique())),
            "height": max(120, min(900, 18 * df["layer"].nunique()))}


def mean_heatmap(r: DatasetResult, value: str = "normalized", head: int | None = None,
                 position: int | None = None, width: int | None = None,
                 selectable: bool = True) -> alt.LayerChart:
    """Mean over pairs per cell; hover shows the interval and the number of pairs.

    Click a cell (selection 'cell', fields layer/position/head) to pick it for the strip plot.
    """
    df = chart_frame(r, head, position)
    x, y = chart_axes(r, position)
    if x == "column":
        df = df.assign(column="all positions")
    lo_col, hi_col = ("normalized_low", "normalized_high") if value == "normalized" else ("ci_low", "ci_high")
    df = df.assign(low=df[lo_col], high=df[hi_col], shown=df[value].round(2))
    # "uncertain": the interval of the effect includes zero, i.e. the normalised interval
    # includes 0 (denoising: nothing restored) or 1 (noising: nothing destroyed)
    zero = get_direction(r.direction).effect(0.0)   # effect() is its own inverse: the no-effect score
    nlo, nhi = df["normalized_low"], df["normalized_high"]
    df["certain"] = np.where(~(np.isfinite(nlo) & np.isfinite(nhi)), "no interval",
                             np.where((nlo <= zero) & (nhi >= zero),
                                      "not clear (interval includes no effect)", "clear effect"))
    finite = df[value].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    extent = float(np.abs(finite).max()) if finite.size else 1.0
    if value == "normalized":
        extent = max(extent, 1.0)
        scale = alt.Scale(scheme="redblue", reverse=True, domainMid=0, domain=[-extent, extent])
        vtitle = "mean normalised score"
    else:
        scale = alt.Scale(scheme="redblue", reverse=True, domainMid=r.corrupted_metric)
        vtitle = f"mean {r.metric} (raw)"
    x_enc, y_enc = _x_encoding(r, x), alt.Y("layer:O", title="layer", sort="ascending")
    tooltip = [alt.Tooltip(f"{a}:O") for a in ("layer", "position", "head") if a in df.columns]
    if "token" in df.columns:
        tooltip.insert(2, alt.Tooltip("token:N", title="role" if r.aligned_by == "role" else "token"))
    fmt = ".3f"
    tooltip += [alt.Tooltip(f"{value}:Q", title=vtitle, format=fmt),
                alt.Tooltip("low:Q", title=f"{r.level:.0%} interval low", format=fmt),
                alt.Tooltip("high:Q", title=f"{r.level:.0%} interval high", format=fmt),
                alt.Tooltip("certain:N", title="effect"),
                alt.Tooltip("n_pairs:Q", title="pairs")]
    base = alt.Chart(df)
    rect = base.mark_rect().encode(x=x_enc, y=y_enc, color=alt.Color(f"{value}:Q", title=vtitle, scale=scale),
                                   tooltip=tooltip)
    if selectable:
        fields = [f for f in ("layer", "position", "head") if f in df.columns]
        rect = rect.add_params(alt.selection_point(name=SELECT_NAME, fields=fields, on="click",
                                                   clear="dblclick"))
    layers = [rect]
    if len(df) <= CELL_TEXT_LIMIT:
        layers.append(base.mark_text(fontSize=9).encode(
            x=x_enc, y=y_enc, text=alt.Text("shown:Q", format=".2f"),
            color=alt.condition(f"abs(datum['{value}'] - {0 if value == 'normalized' else r.corrupted_metric}) "
                                f"> {0.6 * extent}", alt.value("white"), alt.value("black")),
            opacity=alt.condition("datum.certain == 'clear effect'", alt.value(1.0), alt.value(0.45)),
            tooltip=tooltip))
    from .sweeps import SWEEPS
    title = f"{SWEEPS[r.sweep].title} — {r.direction}, mean of {r.n_pairs} pairs"
    if len(r.axes) == 3:
        title += f" — {r.tokens[position]}" if position is not None else f" — head {head or 0}"
    return alt.layer(*layers).properties(title=title, **_size(df, x, width))


def strip_frame(r: DatasetResult, idx: tuple, value: str = "normalized") -> pd.DataFrame:
    """One row per pair at one cell: its value, and its prompts (as plain text)."""
    vals = r.cell_values(idx, value)
    rows = []
    for k, v in enumerate(vals):
        p = r.pairs[k] if k < len(r.pairs) else {}
        rows.append({"pair": k + 1, "value": float(v), "clean": p.get("clean", ""),
                     "answer": p.get("answer", ""), "wrong": p.get("wrong", ""),
                     "line": p.get("line")})
    return pd.DataFrame(rows)


def strip_plot(r: DatasetResult, idx: tuple, value: str = "normalized", width: int = 420) -> alt.LayerChart:
    """Every pair's value at one cell (jittered dots), the mean (line) and its interval (band).

    With value='normalized' each dot is that pair's own normalised score (its own
    clean and corrupted runs); the line and band are the dataset's mean score and interval.
    """
    from .dataset_summary import cell_label

    df = strip_frame(r, idx, value)
    df = df[np.isfinite(df["value"])]
    rng = np.random.default_rng(0)
    df = df.assign(jitter=rng.uniform(-1, 1, len(df)))
    t = tuple(int(i) for i in idx)
    if value == "normalized":
        mean, lo, hi = r.normalized[t], r.normalized_low[t], r.normalized_high[t]
        ytitle = "normalised score (per pair)"
    else:
        mean, lo, hi = r.values[t], r.ci_low[t], r.ci_high[t]
        ytitle = f"{r.metric} (raw, per pair)"
    stats = pd.DataFrame([{"mean": float(mean), "low": float(lo), "high": float(hi)}])
    y = alt.Y("value:Q", title=ytitle)
    dots = alt.Chart(df).mark_circle(size=60, opacity=0.7).encode(
        x=alt.X("jitter:Q", title=None, axis=None, scale=alt.Scale(domain=[-3, 3])), y=y,
        tooltip=[alt.Tooltip("pair:O"), alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("clean:N", title="clean prompt"), alt.Tooltip("answer:N"),
                 alt.Tooltip("wrong:N")])
    band = alt.Chart(stats).mark_rect(opacity=0.18, color="#555").encode(y="low:Q", y2="high:Q")
    rule = alt.Chart(stats).mark_rule(color="black", strokeWidth=2).encode(
        y="mean:Q", tooltip=[alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
                             alt.Tooltip("high:Q", format=".3f")])
    return alt.layer(band, dots, rule).properties(
        title=f"{cell_label(r, t)}: every pair ({len(df)}), mean and {r.level:.0%} interval",
        width=width, height=260)


def quadrant_heatmap(both: BothResult, threshold: float = STRONG, head: int | None = None,
                     position: int | None = None) -> alt.LayerChart:
    """Each component coloured by its quadrant; faded where an interval crosses the line."""
    d = both.denoise
    q = quadrants(both, threshold)
    if len(d.axes) == 3:
        q = q[q["position"] == position] if position is not None else q[q["head"] == (head or 0)]
    x, _ = chart_axes(d, position)
    if x == "column":
        q = q.assign(column="all positions")
    q = q.assign(sure_text=np.where(q["sure"], "clear", "uncertain"),
                 enough_pct=q["enough"] * 100, needed_pct=q["needed"] * 100)
    x_enc, y_enc = _x_encoding(d, x), alt.Y("layer:O", title="layer", sort="ascending")
    domain = QUADRANT_ORDER + ["unknown"]
    tooltip = [alt.Tooltip("component:N"), alt.Tooltip("quadrant:N"),
               alt.Tooltip("enough_pct:Q", title="restoring brings back (%)", format=".0f"),
               alt.Tooltip("needed_pct:Q", title="corrupting destroys (%)", format=".0f"),
               alt.Tooltip("sure_text:N", title="placement")]
    rect = alt.Chart(q).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=x_enc, y=y_enc,
        color=alt.Color("quadrant:N", scale=alt.Scale(domain=domain,
                                                       range=[QUADRANT_COLORS[k] for k in domain]),
                        legend=alt.Legend(title="component is…")),
        opacity=alt.condition("datum.sure", alt.value(1.0), alt.value(0.45)),
        tooltip=tooltip)
    return alt.layer(rect).properties(
        title=f"Quadrants at the {threshold:.0%} line (faded: an interval crosses it)", **_size(q, x))


def quadrant_scatter(both: BothResult, threshold: float = STRONG) -> alt.LayerChart:
    """Enough (denoising effect) against needed (noising effect), one dot per component."""
    q = quadrants(both, threshold)
    q = q[q["quadrant"] != "unknown"]
    domain = QUADRANT_ORDER
    tooltip = [alt.Tooltip("component:N"), alt.Tooltip("quadrant:N"),
               alt.Tooltip("enough:Q", format=".2f"), alt.Tooltip("enough_low:Q", format=".2f"),
               alt.Tooltip("enough_high:Q", format=".2f"), alt.Tooltip("needed:Q", format=".2f"),
               alt.Tooltip("needed_low:Q", format=".2f"), alt.Tooltip("needed_high:Q", format=".2f")]
    pts = alt.Chart(q).mark_circle(size=50, opacity=0.8).encode(
        x=alt.X("enough:Q", title="enough (denoising: restoring it alone)"),
        y=alt.Y("needed:Q", title="needed (noising: corrupting it)"),
        color=alt.Color("quadrant:N", scale=alt.Scale(domain=domain,
                                                       range=[QUADRANT_COLORS[k] for k in domain])),
        tooltip=tooltip)
    lines = pd.DataFrame([{"t": threshold}])
    vr = alt.Chart(lines).mark_rule(strokeDash=[4, 4], color="gray").encode(x="t:Q")
    hr = alt.Chart(lines).mark_rule(strokeDash=[4, 4], color="gray").encode(y="t:Q")
    # narrow enough for its column beside the quadrant heatmap (legend included)
    return alt.layer(vr, hr, pts).properties(width=260, height=300, title="Needed vs enough")


def difference_heatmap(c: Comparison, head: int | None = None, position: int | None = None) -> alt.LayerChart:
    """Run A minus run B per cell, diverging colours centred at 0."""
    df = c.frame
    r = c.a
    if len(r.axes) == 3:
        df = df[df["position"] == position] if position is not None else df[df["head"] == (head or 0)]
    x, _ = chart_axes(r, position)
    if x == "column":
        df = df.assign(column="all positions")
    d = df["diff"].to_numpy(dtype=float)
    d = d[np.isfinite(d)]
    extent = float(np.abs(d).max()) if d.size else 1.0
    extent = extent or 1.0
    what = "normalised score" if c.value == "normalized" else f"{r.metric} (raw)"
    tooltip = [alt.Tooltip(f"{a}:O") for a in ("layer", "position", "head") if a in df.columns]
    if "token" in df.columns:
        tooltip.insert(2, alt.Tooltip("token:N"))
    tooltip += [alt.Tooltip("a:Q", title=f"run A {what}", format=".3f"),
                alt.Tooltip("b:Q", title=f"run B {what}", format=".3f"),
                alt.Tooltip("diff:Q", title="A − B", format=".3f")]
    x_enc = _x_encoding(r, x, c.labels)
    y_enc = alt.Y("layer:O", title="layer", sort="ascending")
    df = df.assign(shown=df["diff"].round(2))
    base = alt.Chart(df)
    rect = base.mark_rect().encode(
        x=x_enc, y=y_enc, tooltip=tooltip,
        color=alt.Color("diff:Q", title=f"A − B ({what})",
                        scale=alt.Scale(scheme="redblue", reverse=True, domainMid=0, domain=[-extent, extent])))
    layers = [rect]
    if len(df) <= CELL_TEXT_LIMIT:
        layers.append(base.mark_text(fontSize=9).encode(
            x=x_enc, y=y_enc, text=alt.Text("shown:Q", format=".2f"), tooltip=tooltip))
    return alt.layer(*layers).properties(title=f"Difference: run A − run B ({what})", **_size(df, x))
