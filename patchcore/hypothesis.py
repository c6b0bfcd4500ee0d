"""The hypothesis check: do *these* sites carry the behaviour together?

A heatmap says which single component matters; a hypothesis names several (clicked cells,
the top N of a heatmap, or typed sites) and asks three questions, each one run_patch:

- sufficiency: denoise the sites together (clean into corrupted): do they bring the clean
  answer back on their own?
- necessity: noise them (corrupted into clean): does the clean answer survive without them?
- the rest: denoise every *other* site of the same kinds (`complement=True`): is the rest of
  the model enough without them?

On a dataset every run covers every pair (95 % intervals from run_patch). Sites with a
position are only tested where the pairs' positions line up (one pair, or pairs matched
position by position), never across IOI roles of different lengths.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import Cancelled, SweepError
from .interventions import run_patch
from .prompts import PromptPair
from .results import BothResult, PatchSetResult
from .sites import get_direction, parse_sites
from .summary import num, reading
from .sweeps import site_of

RUNS = ("sufficiency", "necessity", "complement")
RUN_TITLES = {"sufficiency": "Enough? Share restored", "necessity": "Needed? Share left without them",
              "complement": "The rest without them: share restored"}
RUN_HELP = {
    "sufficiency": "Denoising: the clean activations of these sites, all at once, are copied into "
                   "the corrupted run. The score is the share of the clean behaviour that comes back.",
    "necessity": "Noising: the corrupted activations of these sites, all at once, are copied into "
                 "the clean run. The score is the share of the clean behaviour that is left.",
    "complement": "Denoising every other site of the same kinds (every other head, say) while these "
                  "stay corrupted. The score is the share of the clean behaviour the rest brings back.",
}
SENDER_COMPONENTS = ("head", "mlp")   # what path patching can send from


def first_result(result):
    """The result a heatmap of `result` is drawn from (a BothResult: its denoising half)."""
    return result.denoise if isinstance(result, BothResult) else result


def top_sites(result, n: int = 3) -> list[str]:
    """The sites of the n cells with the strongest effect (share restored when denoising,
    destroyed when noising), strongest first; cells without a number are skipped."""
    r = first_result(result)
    e = np.asarray(get_direction(r.direction).effect(r.normalized), dtype=float)
    if not np.isfinite(e).any():   # no normalised score: the largest move of the raw metric
        target = get_direction(r.direction).target_metric(r.clean_metric, r.corrupted_metric)
        e = np.abs(np.asarray(r.values, dtype=float) - target)
    flat = np.where(np.isfinite(e), e, -np.inf).reshape(-1)
    order = [i for i in np.argsort(-flat, kind="stable") if np.isfinite(flat[i])][:max(0, int(n))]
    return [str(site_of(r.sweep, np.unravel_index(i, e.shape))) for i in order]


def pairs_of(result) -> list[PromptPair]:
    """The prompt pairs a result was computed on (one pair, or every pair of a dataset)."""
    r = first_result(result)
    stored = getattr(r, "pairs", None)
    if getattr(r, "n_pairs", 1) > 1 and stored:
        return [PromptPair(*(str(p[k]) for k in ("clean", "corrupted", "answer", "wrong"))) for p in stored]
    return [r.pair]


def position_problem(result, sites) -> str | None:
    """Why sites with @POSITION cannot be tested on this result's pairs, or None."""
    sites = parse_sites(sites) if sites and isinstance(sites[0], str) else list(sites)
    with_pos = [s for s in sites if s.pos >= 0]
    r = first_result(result)
    if not with_pos or getattr(r, "n_pairs", 1) <= 1 or getattr(r, "aligned_by", "position") != "role":
        return None   # one pair, or positions are tokens (run_patch refuses pairs of different lengths)
    return (f"'{with_pos[0]}' names a position, but this dataset's pairs are lined up by role (S1, IO, "
            f"S2, …), not token by token, so a position means different words in different pairs. "
            f"Remove the sites with @ or test them on one pair.")


def split_senders(sites) -> tuple[list[str], list[str]]:
    """(sites path patching can send from: heads and MLPs, the others)."""
    keep, left = [], []
    for s in (parse_sites(sites) if sites and isinstance(sites[0], str) else list(sites)):
        (keep if s.component.name in SENDER_COMPONENTS else left).append(str(s))
    return keep, left


def complement_reading(score: float) -> str:
    """One sentence on the complement run (the rest patched, these sites left corrupted)."""
    if not np.isfinite(score):
        return "No normalised score: the clean and corrupted runs give the same metric."
    pct = num(score * 100, ".0f") + "%"
    if score >= 0.8:
        return f"Everything else brings back {pct} without them: the rest can do the job on its own."
    if score >= 0.2:
        return f"Everything else brings back {pct} without them: the rest does part of the job."
    return f"Everything else brings back only {pct} without them: the rest cannot do it without them."


@dataclass
class HypothesisCheck:
    """The three runs of one hypothesis (complement None when the sites cover their kinds)."""
    sites: list
    sufficiency: PatchSetResult
    necessity: PatchSetResult
    complement: PatchSetResult | None = None
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    def runs(self) -> dict:
        return {k: getattr(self, k) for k in RUNS if getattr(self, k) is not None}

    @property
    def n_pairs(self) -> int:
        return self.sufficiency.n_pairs

    def reading(self, run: str) -> str:
        r = getattr(self, run)
        if run == "complement":
            return complement_reading(r.normalized)
        return reading(r.direction, r.normalized)

    def interval(self, run: str) -> tuple[float, float] | None:
        """The 95 % interval of a run's normalised score (datasets only)."""
        r = getattr(self, run)
        if r is None or r.n_pairs <= 1 or not (np.isfinite(r.normalized_low) and np.isfinite(r.normalized_high)):
            return None
        return float(r.normalized_low), float(r.normalized_high)

    def verdict(self) -> str:
        """One sentence: enough, needed, both or neither."""
        s, n = self.sufficiency.normalized, self.necessity.normalized
        if not (np.isfinite(s) and np.isfinite(n)):
            return ("No verdict: the clean and corrupted runs give the same metric, so the scores "
                    "cannot be normalised.")
        what = f"{len(self.sites)} site{'s' if len(self.sites) != 1 else ''}"
        enough = ("are enough on their own" if s >= 0.8 else "are part of the story (not enough alone)"
                  if s >= 0.2 else "are not enough on their own")
        needed = ("the model needs them" if n <= 0.2 else "the model partly needs them" if n <= 0.8
                  else "the model does not need them")
        tail = (": together they carry the behaviour" if s >= 0.8 and n <= 0.2 else
                ": something else can do the job too (a backup)" if s >= 0.8 and n > 0.8 else "")
        return f"In short: these {what} {enough}, and {needed}{tail}."


def run_check(model, pairs, sites, metric: str = "logit_diff", *, ablation: str = "corrupted",
              n_boot: int | None = None, seed: int = 0, progress=None, cancel=None,
              on_wait=None) -> HypothesisCheck:
    """Sufficiency, necessity and the complement of `sites` on one pair or a dataset.

    ablation: what the necessity run writes into the clean run to knock the sites out (the
    corrupted prompt's activations, zeros, means, resampled prompts); sufficiency and the
    complement always write the clean run's activations into the corrupted run.
    progress(done, 3) after each run; cancel() -> True stops between batches (Cancelled)."""
    sites = parse_sites(sites) if isinstance(sites, str) or (sites and isinstance(sites[0], str)) \
        else list(sites)
    kw = dict(metric=metric, seed=seed, cancel=cancel, on_wait=on_wait)
    if n_boot is not None:
        kw["n_boot"] = n_boot
    t0 = time.perf_counter()
    out, notes = {}, []
    for k, (name, direction, complement) in enumerate(
            [("sufficiency", "denoise", False), ("necessity", "noise", False),
             ("complement", "denoise", True)]):
        if cancel is not None and cancel():
            raise Cancelled()
        try:
            out[name] = run_patch(model, pairs, sites, direction, complement=complement,
                                  ablation=ablation if name == "necessity" else "corrupted", **kw)
        except SweepError as exc:
            if not complement or "complement is empty" not in exc.message:
                raise
            out[name] = None
            notes.append("No complement run: the sites already cover every site of their kind.")
        if progress:
            progress(k + 1, len(RUNS))
    return HypothesisCheck([str(s) for s in sites], out["sufficiency"], out["necessity"],
                           out["complement"], notes, time.perf_counter() - t0)
