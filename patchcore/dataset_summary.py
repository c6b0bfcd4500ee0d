"""Plain-language summaries of dataset runs that claim only what the intervals support.

Rules over the numbers, no language model. Every claim about a cell rests on
its bootstrap interval of the *effect* (0 = the patch changed nothing, 1 = it
moved the behaviour all the way; see DatasetResult.effect):

- interval above 50%: the cell "carries" the effect;
- interval above zero: a real effect of uncertain size;
- interval spans zero: "uncertain" – these pairs cannot tell it from no effect;
- interval below zero: reliably pushes the other way.

Sentences are plain text (tokens and roles may contain Markdown or HTML):
show them as text, never as markup.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .results import BothResult, DatasetResult
from .sites import get_direction
from .stats import describe_interval, mean_ci
from .sweeps import get_sweep
from .summary import STRONG, _runs, _span, metric_words

NOTABLE = 0.2  # a mean effect this large is worth a word even when uncertain

QUADRANTS = {
    "needed and enough": "Needed and enough: corrupting it breaks the clean answer, and restoring it "
                         "alone brings the answer back.",
    "needed but not enough": "Needed but not enough: corrupting it breaks the clean answer, but restoring "
                             "it alone does not bring the answer back (it works together with other parts).",
    "enough but not needed": "Enough but not needed: restoring it alone brings the answer back, but "
                             "corrupting it does not break it (a backup or redundant path).",
    "neither": "Neither: on its own it neither brings the answer back nor breaks it.",
}
QUADRANT_ORDER = list(QUADRANTS)


def cell_label(r: DatasetResult, idx: tuple) -> str:
    """'S2 at layer 3', 'layer 3, position 5 (' John')', 'head 4.2', 'layer 7'."""
    idx = tuple(int(i) for i in idx)
    named = dict(zip(r.axes, idx))
    layer = named["layer"]
    if "position" in named:
        p = named["position"]
        where = (f"{r.tokens[p]} at layer {layer}" if r.aligned_by == "role"
                 else f"layer {layer}, position {p} ({r.tokens[p]!r})")
        return where + (f", head {named['head']}" if "head" in named else "")
    if "head" in named:
        return f"head {layer}.{named['head']} (layer {layer}, head {named['head']})"
    return f"layer {layer}"


def column_label(r: DatasetResult, p: int) -> str:
    return f"role {r.tokens[p]}" if r.aligned_by == "role" else f"position {p} ({r.tokens[p]!r})"


def _aligned_text(r: DatasetResult) -> str:
    if r.aligned_by == "role":
        return ("positions matched by role (" + ", ".join(r.tokens) +
                "; a role that spans several tokens is averaged over them)")
    if r.aligned_by == "position":
        return "all pairs have the same token length, so positions are matched one to one"
    return "no position axis"


def verdict(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    if low >= STRONG:
        return "carries the effect (the whole interval is above 50%)"
    if low > 0:
        return "a real effect (the interval is above zero) of uncertain size"
    if high < 0:
        return "pushes the other way (the whole interval is below zero)"
    return "uncertain: the interval includes zero"


def dataset_summary(r: DatasetResult, top_k: int = 3) -> list[str]:
    """A handful of plain sentences; nothing is claimed that the intervals do not support."""
    out = []
    lv = f"{r.level * 100:.0f}%"
    p = r.pair
    src = r.dataset.get("source", "")
    what = {"ioi": f"generated IOI pairs (seed {r.dataset.get('seed')}, corruption "
                   f"{r.dataset.get('corruption')})", "upload": "uploaded pairs"}.get(src, "pairs")
    out.append(f"Averaged over {r.n_pairs} {what}; {_aligned_text(r)}. Intervals are {lv} bootstrap "
               f"intervals over pairs ({r.n_boot} resamples).")
    cm, cl, ch = mean_ci(r.pair_clean, n_boot=r.n_boot, level=r.level, seed=r.boot_seed)
    km, kl, kh = mean_ci(r.pair_corrupted, n_boot=r.n_boot, level=r.level, seed=r.boot_seed)
    out.append(f"Baseline {metric_words(r.metric)}: clean prompts {describe_interval(float(cm), float(cl), float(ch), False, r.level)}, "
               f"corrupted prompts {describe_interval(float(km), float(kl), float(kh), False, r.level)}"
               + (f" (first pair: answer {p.answer!r}, wrong {p.wrong!r})." if src != "ioi" else
                  " (answer: the indirect object's name; wrong: the subject's name)."))
    out.append("Denoising: clean activations were copied into each corrupted run; 100% means the clean "
               "answer is fully back." if get_direction(r.direction).restores else
               "Noising: corrupted activations were copied into each clean run; the effect is how much "
               "of the clean answer was destroyed (100% = all of it).")
    e, lo, hi = r.effect
    finite = np.isfinite(e) & np.isfinite(lo) & np.isfinite(hi)
    if not finite.any():
        out.append("The clean and corrupted runs give the same average metric, so scores cannot be "
                   "normalised; read the raw values instead and pick pairs where the answer changes.")
        return out + list(r.warnings) + list(r.notes)

    flat = np.where(finite, e, -np.inf).reshape(-1)
    order = [i for i in np.argsort(-flat)[:top_k] if np.isfinite(flat[i])]
    parts = []
    for i in order:
        idx = np.unravel_index(i, e.shape)
        parts.append(f"{cell_label(r, idx)}: {describe_interval(float(e[idx]), float(lo[idx]), float(hi[idx]), level=r.level)} – "
                     f"{verdict(float(lo[idx]), float(hi[idx]))}")
    out.append("Largest average effects: " + "; ".join(parts) + ".")

    sure = finite & (lo >= STRONG)
    if not (finite & (lo > 0)).any():
        out.append("No cell's interval is clearly above zero: with these pairs no single component "
                   "shows a reliable effect on its own.")
    if "position" in r.axes and len(r.axes) == 2:
        for col in range(e.shape[1]):
            layers = [l for l in range(e.shape[0]) if sure[l, col]]
            if layers:
                spans = ", ".join(_span(a, b) for a, b in _runs(layers))
                label = column_label(r, col)
                out.append(f"{label[:1].upper() + label[1:]} carries the effect in {spans} "
                           f"(every interval there is above 50%).")
    elif r.axes == ("layer",):
        layers = [l for l in range(e.shape[0]) if sure[l]]
        if layers:
            out.append("Layers that carry the effect (interval above 50%): "
                       + ", ".join(_span(a, b) for a, b in _runs(layers)) + ".")
    elif "head" in r.axes:
        n_sure = int(sure.sum())
        out.append(f"{n_sure} of {e.size} {'head-position cells' if 'position' in r.axes else 'heads'} "
                   f"carry 50% or more on their own with the whole interval above 50%." if n_sure else
                   "No single head carries half of the effect with confidence: it is spread over several "
                   "heads, lives outside attention, or varies between pairs.")

    unsure = finite & (np.abs(e) >= NOTABLE) & (lo <= 0) & (hi >= 0)
    if unsure.any():
        idx = np.argsort(-np.where(unsure, np.abs(e), -np.inf).reshape(-1))[:top_k]
        ex = [cell_label(r, np.unravel_index(i, e.shape)) for i in idx if unsure.reshape(-1)[i]]
        out.append(f"{int(unsure.sum())} cell{'s' if unsure.sum() != 1 else ''} look{'' if unsure.sum() != 1 else 's'} "
                   f"sizeable on average but the interval includes zero, so the effect is uncertain "
                   f"(e.g. {'; '.join(ex)}). More pairs would tell.")
    neg = finite & (hi < 0) & (e <= -NOTABLE)
    if neg.any():
        idx = np.argsort(np.where(neg, e, np.inf).reshape(-1))[:top_k]
        ex = [f"{cell_label(r, np.unravel_index(i, e.shape))}: "
              f"{describe_interval(float(e.reshape(-1)[i]), float(lo.reshape(-1)[i]), float(hi.reshape(-1)[i]), level=r.level)}"
              for i in idx if neg.reshape(-1)[i]]
        lead = ("Reliably pushes towards the wrong answer: " if get_direction(r.direction).restores else
                "Corrupting these reliably makes the clean answer stronger (they work against it): ")
        out.append(lead + "; ".join(ex) + ".")
    caveat = get_sweep(r.sweep).caveat
    if caveat:
        out.append("Caveat: " + caveat[0].lower() + caveat[1:])
    out.extend(r.warnings)
    out.extend(r.notes)
    return out


# --------------------------------------------------------------------------- quadrants
def quadrants(both: BothResult, threshold: float = STRONG) -> pd.DataFrame:
    """One row per component: how much restoring it alone brings back (denoising, 'enough')
    and how much corrupting it destroys (noising, 'needed'), with intervals and a quadrant.

    `sure` is True when both intervals lie on one side of the threshold, so the
    quadrant does not depend on chance in the choice of pairs.
    """
    d, n = both.denoise, both.noise
    if d.values.shape != n.values.shape or list(d.tokens) != list(n.tokens):
        raise ValueError("denoise and noise results do not cover the same cells")
    en, en_lo, en_hi = d.effect
    ne, ne_lo, ne_hi = n.effect
    idx = np.indices(en.shape).reshape(len(d.axes), -1).T
    df = pd.DataFrame(idx, columns=list(d.axes))
    if "position" in d.axes:
        df.insert(df.columns.get_loc("position") + 1, "label", [d.tokens[p] for p in df["position"]])
    df["component"] = [cell_label(d, tuple(row)) for row in idx]
    df["enough"] = en.reshape(-1)
    df["enough_low"] = en_lo.reshape(-1)
    df["enough_high"] = en_hi.reshape(-1)
    df["needed"] = ne.reshape(-1)
    df["needed_low"] = ne_lo.reshape(-1)
    df["needed_high"] = ne_hi.reshape(-1)
    is_enough = df["enough"] >= threshold
    is_needed = df["needed"] >= threshold
    df["quadrant"] = np.select(
        [is_needed & is_enough, is_needed & ~is_enough, ~is_needed & is_enough],
        ["needed and enough", "needed but not enough", "enough but not needed"], "neither")
    finite = np.isfinite(df[["enough", "enough_low", "enough_high", "needed", "needed_low",
                             "needed_high"]].to_numpy()).all(axis=1)
    df.loc[~finite, "quadrant"] = "unknown"

    def side(lo, hi):
        return (lo >= threshold) | (hi < threshold)
    df["sure"] = finite & side(df["enough_low"], df["enough_high"]) & side(df["needed_low"], df["needed_high"])
    df["words"] = [_quadrant_words(row, threshold) for row in df.itertuples()]
    return df


def _quadrant_words(row, threshold: float) -> str:
    if row.quadrant == "unknown":
        return f"{row.component}: no score (the clean and corrupted runs give the same metric)."
    head = QUADRANTS[row.quadrant].split(":")[0]
    base = (f"{row.component}: {head.lower()} – restoring it alone brings back "
            f"{row.enough * 100:.0f}% ({row.enough_low * 100:.0f}% to {row.enough_high * 100:.0f}%), "
            f"corrupting it destroys {row.needed * 100:.0f}% ({row.needed_low * 100:.0f}% to "
            f"{row.needed_high * 100:.0f}%) of the clean answer.")
    if not row.sure:
        base += f" Uncertain: an interval crosses the {threshold:.0%} line."
    return base


def quadrant_summary(both: BothResult, threshold: float = STRONG, examples: int = 3) -> list[str]:
    """How many components fall in each quadrant, with the clearest examples, in plain words."""
    df = quadrants(both, threshold)
    out = [f"Each component is placed by two questions, at a {threshold:.0%} line: does restoring it "
           f"alone bring the clean answer back (denoising: enough), and does corrupting it break the "
           f"clean answer (noising: needed)?"]
    for q in QUADRANT_ORDER:
        rows = df[df["quadrant"] == q]
        if rows.empty:
            continue
        sure = rows[rows["sure"]]
        key = (rows["enough"] + rows["needed"]) if q != "neither" else -(rows["enough"] + rows["needed"])
        if q == "neither":
            out.append(f"{QUADRANTS[q]} {len(rows)} component{'s' if len(rows) != 1 else ''} "
                       f"({len(sure)} with both intervals clear of the line).")
            continue
        best = rows.loc[key.sort_values(ascending=False).index[:examples]]
        ex = "; ".join(f"{c}{'' if s else ' (uncertain)'}" for c, s in zip(best["component"], best["sure"]))
        out.append(f"{QUADRANTS[q]} {len(rows)} component{'s' if len(rows) != 1 else ''}, "
                   f"{len(sure)} of them with both intervals clear of the line – e.g. {ex}.")
    unk = int((df["quadrant"] == "unknown").sum())
    if unk:
        out.append(f"{unk} components have no score (no gap between clean and corrupted).")
    return out
