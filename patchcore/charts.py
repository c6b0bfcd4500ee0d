"""Altair heatmaps of a result, shared by the dashboard, exports and the CLI."""
from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from .results import PatchResult

CELL_TEXT_LIMIT = 500  # draw numbers in cells only when there are few enough to read
SELECT_NAME = "cell"


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
    if r.axes == ("layer", "head") or (len(r.axes) == 3 and position is not None):
        return "head", "layer"
    return "position", "layer"


def heatmap(r: PatchResult, value: str = "normalized", head: int | None = None,
            position: int | None = None, width: int | None = None,
            selectable: bool = True) -> alt.LayerChart:
    """Layer × position (token labels, in order, repeats kept), layer × head, or layer only."""
    df = chart_frame(r, head, position)
    x, y = chart_axes(r, position)
    if x == "column":
        df = df.assign(column="all positions")
    finite = df[value].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    extent = float(np.abs(finite).max()) if finite.size else 1.0
    if value == "normalized":
        extent = max(extent, 1.0)
    extent = extent or 1.0
    df = df.assign(shown=df[value].round(2))

    if x == "position":
        labels = json.dumps([t.strip() or repr(t) for t in r.tokens])
        x_enc = alt.X("position:O", title="token position",
                      # every token label shown: Vega-Lite would hide overlapping ones
                      axis=alt.Axis(labelExpr=f"{labels}[datum.value]", labelAngle=-45,
                                    labelOverlap=False))
    elif x == "head":
        x_enc = alt.X("head:O", title="head")
    else:
        x_enc = alt.X("column:N", title=None)
    y_enc = alt.Y("layer:O", title="layer", sort="ascending")
    vtitle = "normalised score" if value == "normalized" else f"{r.metric} (raw)"
    # diverging colours centred on "no change": 0 for scores, the corrupted run's metric for raw values
    if value == "normalized":
        scale = alt.Scale(scheme="redblue", reverse=True, domainMid=0, domain=[-extent, extent])
    else:
        scale = alt.Scale(scheme="redblue", reverse=True, domainMid=float(r.corrupted_metric))
    tooltip = [alt.Tooltip(f"{a}:O") for a in ("layer", "position", "head") if a in df.columns]
    if "token" in df.columns:
        tooltip.insert(2, alt.Tooltip("token:N"))
    tooltip += [alt.Tooltip("value:Q", title=f"{r.metric} (raw)", format=".3f"),
                alt.Tooltip("normalized:Q", title="normalised", format=".3f")]
    base = alt.Chart(df)
    rect = base.mark_rect().encode(
        x=x_enc, y=y_enc,
        color=alt.Color(f"{value}:Q", title=vtitle, scale=scale),
        tooltip=tooltip,
    )
    if selectable:
        fields = [f for f in ("layer", "position", "head") if f in df.columns]
        sel = alt.selection_point(name=SELECT_NAME, fields=fields, on="click", clear="dblclick")
        rect = rect.add_params(sel)
    layers = [rect]
    if len(df) <= CELL_TEXT_LIMIT:
        text = base.mark_text(fontSize=9).encode(
            x=x_enc, y=y_enc, text=alt.Text("shown:Q", format=".2f"),
            color=alt.condition(f"abs(datum.{value}) > {0.6 * extent}", alt.value("white"),
                                alt.value("black")) if value == "normalized" else alt.value("black"),
            tooltip=tooltip,
        )
        layers.append(text)
    n_rows = df["layer"].nunique()
    n_cols = df[x].nunique()
    title = chart_title(r, head, position)
    return alt.layer(*layers).properties(
        title=title,
        width=width or max(160, min(900, 42 * n_cols)),
        height=max(120, min(900, 18 * n_rows)),
    )


def chart_title(r: PatchResult, head=None, position=None) -> str:
    from .sweeps import SWEEPS

    t = f"{SWEEPS[r.sweep].title} — {r.direction}, {r.metric}"
    if len(r.axes) == 3:
        t += f" — position {position} ({r.tokens[position]!r})" if position is not None \
            else f" — head {0 if head is None else head}"
    return t


def chart_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc
    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def chart_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc
    return vlc.vegalite_to_svg(chart.to_json())
