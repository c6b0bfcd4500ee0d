"""Plain-language summaries of a result: rules over the numbers, no language model.

Sentences are plain text (tokens may contain Markdown or HTML): callers must
show them as text, never render them as markup.
"""
from __future__ import annotations

import numpy as np

from .results import PatchResult
from .sites import get_direction
from .sweeps import get_sweep

STRONG = 0.5   # effect at or above this carries the behaviour
NEGATIVE = -0.2
# what one cell's effect means, by direction (restores?) and band: >= 0.8, >= 0.2, > NEGATIVE, below
_MEANINGS = {
    True: ["Patching this alone restores {pct} of the clean behaviour: it carries the information.",
           "Patching this restores {pct} of the clean behaviour: it carries part of the information.",
           "Patching this changes little ({pct}): on its own it does not carry the information.",
           "Patching this pushes further towards the wrong answer ({pct})."],
    False: ["Corrupting this destroys {pct} of the clean behaviour: the model needs it.",
            "Corrupting this destroys {pct} of the clean behaviour: it matters in part.",
            "Corrupting this destroys only {pct} of the clean behaviour: the model does not need it.",
            "Corrupting this makes the clean answer even stronger ({pct})."],
}


def num(x: float, spec: str = ".2f") -> str:
    """A number as text, never "-0.00": tiny negatives print as zero."""
    t = format(x, spec)
    return t[1:] if t.startswith("-") and float(t.rstrip("%")) == 0 else t


METRIC_WORDS = {"logit_diff": "logit difference", "prob": "probability of the answer",
                "logprob": "log-probability of the answer"}
_NTH = ["first", "second", "third", "fourth", "fifth"]


def metric_words(metric: str) -> str:
    return METRIC_WORDS.get(metric, metric)


def _tok(r: PatchResult, pos: int) -> str:
    return repr(r.tokens[pos])


def word_at(r: PatchResult, pos: int) -> str:
    """'the second 'Mary'' when the word occurs more than once before, else just the word."""
    tok = r.tokens[pos]
    seen = sum(1 for t in r.tokens[:pos + 1] if t == tok)
    total = sum(1 for t in r.tokens if t == tok)
    word = repr(tok.strip() or tok)
    return f"the {_NTH[seen - 1]} {word}" if total > 1 and seen <= len(_NTH) else f"the word {word}"


def cell_name(r: PatchResult, idx: tuple) -> str:
    parts = []
    for axis, i in zip(r.axes, idx):
        if axis == "layer":
            parts.append(f"layer {i}")
        elif axis == "position":
            parts.append(f"position {i} ({_tok(r, i)})")
        else:
            parts.append(f"head {i}")
    if r.axes == ("layer", "head"):
        return f"head {idx[0]}.{idx[1]} (layer {idx[0]}, head {idx[1]})"
    return ", ".join(parts)


def effect(r: PatchResult) -> np.ndarray:
    """How much each patch moved the behaviour towards the other prompt, on a 0..1 scale.

    Denoising: the normalised score itself (1 = clean behaviour restored).
    Noising: 1 - score (1 = the clean behaviour was destroyed).
    """
    return get_direction(r.direction).effect(r.normalized)


def meaning(r: PatchResult, score: float) -> str:
    """What one normalised score means, in words (noising: the share destroyed, 1 − score)."""
    if not np.isfinite(score):
        return "No normalised score (clean and corrupted runs give the same metric)."
    d = get_direction(r.direction)
    e = d.effect(score)
    band = 0 if e >= 0.8 else 1 if e >= 0.2 else 2 if e > NEGATIVE else 3
    return _MEANINGS[d.restores][band].format(pct=num(e * 100, ".0f") + "%")


def story(r: PatchResult) -> str | None:
    """One sentence that tells what the heatmap says, e.g. which word the model relies on."""
    d = get_direction(r.direction)
    e = d.effect(r.normalized)
    if not np.isfinite(e).any():
        return None
    flat = np.where(np.isfinite(e), e, -np.inf)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(flat)), e.shape))
    best = float(e[idx])
    if best < 0.2:
        return ("In short: no single piece carries the behaviour on its own; it is spread out, or "
                "needs several pieces together (try patching them together).")
    verb = "restores" if d.restores else "destroys"
    pct = num(best * 100, ".0f") + "%"
    if "position" in r.axes:
        pos = idx[r.axes.index("position")]
        what = f"{cell_name(r, idx).split(',')[0]}" if len(r.axes) == 2 else cell_name(r, idx)
        return (f"In short: the model relies on {word_at(r, pos)} (position {pos}): "
                f"{'patching' if d.restores else 'corrupting'} it at {what} {verb} {pct} of the "
                f"clean behaviour.")
    return f"In short: {cell_name(r, idx)} matters most: patching it {verb} {pct} of the clean behaviour."


def _runs(indices) -> list[tuple[int, int]]:
    runs, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            runs.append((start, prev))
            start = prev = i
    if start is not None:
        runs.append((start, prev))
    return runs


def _span(a: int, b: int) -> str:
    return f"layer {a}" if a == b else f"layers {a}–{b}"


def summarize(r: PatchResult, top_k: int = 3) -> list[str]:
    """A handful of plain sentences describing the result."""
    out = []
    p = r.pair
    told = story(r)
    if told and not r.path:
        out.append(told)
    if r.path:
        to = ", ".join(r.path["receivers"])
        out.append(f"Path patching: each cell is one sender's effect through {to}"
                   + (" (the direct path; every other head and MLP frozen)." if to == "logits" else
                      " (every other head and MLP frozen on the way)." if to != "all" else "."))
        from .path_report import path_story   # the heads acting directly / through the receivers
        told = path_story(r)
        if told:
            out.append(told)
    out.append(
        f"Baseline: with the clean prompt the {metric_words(r.metric)} is {r.clean_metric:+.3g}; with "
        f"the corrupted prompt it is {r.corrupted_metric:+.3g} (answer {p.answer!r}, wrong {p.wrong!r})."
    )
    out.append("Denoising: clean activations were copied into the corrupted run; each cell shows the "
               "share of the clean behaviour restored (1 = all of it, 0 = no change)."
               if get_direction(r.direction).restores else
               "Noising: corrupted activations were copied into the clean run; each cell shows the "
               "share of the clean behaviour destroyed (1 = all of it, 0 = no change).")
    e = effect(r)
    if not np.isfinite(e).any():
        out.append("The clean and corrupted runs give the same metric, so scores cannot be "
                   "normalised; read the raw values instead and pick a pair where the answer changes.")
        return out
    flat = np.where(np.isfinite(e), e, -np.inf).reshape(-1)
    order = np.argsort(-flat)[:top_k]
    tops = [np.unravel_index(i, e.shape) for i in order if np.isfinite(flat[i])]
    s = r.normalized
    listed = "; ".join(f"{cell_name(r, tuple(int(x) for x in t))}: {num(e[t])}" for t in tops)
    out.append(f"Strongest effect{'s' if len(tops) > 1 else ''}: {listed}. " + meaning(r, float(s[tops[0]])))

    if r.axes == ("layer", "position"):
        for pos in range(e.shape[1]):
            layers = [l for l in range(e.shape[0]) if e[l, pos] >= STRONG]
            if layers:
                spans = ", ".join(_span(a, b) for a, b in _runs(layers))
                out.append(f"Position {pos} ({_tok(r, pos)}) carries the effect in {spans}.")
    elif r.axes == ("layer",):
        layers = [l for l in range(e.shape[0]) if e[l] >= STRONG]
        if layers:
            out.append("Layers that carry the effect: " +
                       ", ".join(_span(a, b) for a, b in _runs(layers)) + ".")
    elif "head" in r.axes:
        strong = int((e >= STRONG).sum())
        out.append(f"{strong} of {e.size} {'head-position cells' if 'position' in r.axes else 'heads'} "
                   f"reach {STRONG:.0%} or more on their own." if strong else
                   "No single head carries half of the effect alone: the behaviour is spread over "
                   "several heads (or lives outside attention).")

    neg_mask = np.isfinite(e) & (e <= NEGATIVE)
    if neg_mask.any():
        idx = np.argsort(np.where(neg_mask, e, np.inf).reshape(-1))[:top_k]
        negs = [np.unravel_index(i, e.shape) for i in idx if neg_mask.reshape(-1)[i]]
        lead = ("Pushing the other way (towards the wrong answer): " if get_direction(r.direction).restores else
                "Corrupting these makes the clean answer even stronger (they work against it): ")
        out.append(lead +
                   "; ".join(f"{cell_name(r, tuple(int(x) for x in t))}: {num(e[t])}" for t in negs) + ".")

    if r.noise_floor > 0:
        out.append(f"Low precision ({r.dtype}): unpatched rows run in the same batches landed up to "
                   f"{r.noise_floor:.3g} away from the baseline, so smaller differences are rounding "
                   f"noise.")
    spec = get_sweep(r.sweep)
    if spec.caveat:
        out.append("Caveat: " + spec.caveat[0].lower() + spec.caveat[1:])
    if spec.hint:
        out.append(spec.hint)
    out.extend(r.warnings)
    return out


def reading(direction: str, score: float, what: str = "they") -> str:
    """One sentence on what a normalised score says, for sites patched together ("they") or
    paths ("the paths")."""
    them = "them" if what == "they" else what
    if not np.isfinite(score):
        return "No normalised score: the clean and corrupted runs give the same metric."
    pct = num(score * 100, ".0f") + "%"
    if get_direction(direction).restores:
        if score >= 0.8:
            return f"Together {what} bring back {pct} of the clean behaviour: {what} are enough."
        if score >= 0.2:
            return f"Together {what} bring back {pct} of the clean behaviour: part of the story."
        return f"Together {what} bring back only {pct}: not enough on their own."
    if score <= 0.2:
        return f"Corrupting {them} leaves {pct} of the clean behaviour: the model needs {them}."
    if score <= 0.8:
        return f"Corrupting {them} leaves {pct} of the clean behaviour: {what} matter in part."
    return f"Corrupting {them} leaves {pct} of the clean behaviour: the model does not need {them}."


def patch_summary(r) -> list[str]:
    """Plain sentences for sites patched together, or a path (results.PatchSetResult)."""
    d = get_direction(r.direction)
    sites = ", ".join(r.sites) or "nothing"
    if r.receivers is not None:
        to = ", ".join(r.receivers)
        how = {"logits": "the direct path to the logits; every other head and MLP frozen",
               "all": "nothing frozen: the senders patched together"}.get(to, f"through the inputs of {to}")
        head = f"Path patching from {sites} ({how})."
    elif r.complement:
        head = f"Patched every site of the same kinds except {sites} ({r.n_sites} sites) together."
    else:
        head = f"Patched {sites} together."
    out = [head + f" {d.title}, ablation: {r.ablation}."]
    out.append(f"Baseline {metric_words(r.metric)}: clean {r.clean_metric:+.3g}, corrupted "
               f"{r.corrupted_metric:+.3g}"
               + (f" (means over {r.n_pairs} pairs)." if r.n_pairs > 1 else "."))
    s = r.normalized
    line = f"Patched: {r.value:+.3g}, normalised score {num(s)}"
    if r.n_pairs > 1 and np.isfinite(r.normalized_low):
        line += f" (95% interval {num(r.normalized_low)} to {num(r.normalized_high)})"
    out.append(line + ".")
    out.append(reading(r.direction, s, "the paths" if r.receivers is not None else "they"))
    if r.reference:
        out.append(f"Reference: {r.reference}.")
    out.extend(r.warnings)
    return out
