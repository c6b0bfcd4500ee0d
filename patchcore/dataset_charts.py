"""Altair charts for dataset runs beyond the heatmap (charts.heatmap draws means with their
intervals): the per-pair strip plot, the quadrant views, the difference heatmap of two runs."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from .charts import CELL_TEXT_LIMIT, chart_axes, size as _size, x_encoding as _x_encoding, y_encoding
from .compare import Comparison
from .results import BothResult, DatasetResult
from .dataset_summary import QUADRANT_ORDER, quadrants
from .summary import STRONG

QUADRANT_COLORS = {"needed and enough": "#1b7837", "needed but not enough": "#e08214",
                   "enough but not needed": "#2166ac", "neither": "#d9d9d9", "unknown": "#ffffff"}


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
    x_enc, y_enc = _x_encoding(d, x), y_encoding(d.n_layers)
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
    y_enc = y_encoding(r.n_layers)
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
