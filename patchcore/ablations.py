"""What a patch writes: the ablation, i.e. which value replaces the target run's activation.

- corrupted: the other prompt's activation (classic activation patching; the direction
  says which prompt is the target)
- zero: zeros
- mean: the mean activation over a reference set of prompts, per position (prompts of the
  target's token length; the generated IOI set unless a dataset is given)
- resample: the activation of another prompt of the dataset (the same kind of prompt the
  corrupted ablation would take), K draws per target, seeded; the metric is averaged
  over the draws

`replacement` turns one into tables the backends write from: per layer (S, T, W) values
and, per target prompt, K row indices into them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import SweepError
from .sites import Component, lookup


@dataclass(frozen=True)
class Ablation:
    name: str
    title: str
    help: str
    caveat: str = ""
    needs_dataset: bool = False
    from_source: bool = False   # writes the source run's own activation (so some cells are no-ops)


ABLATIONS: dict[str, Ablation] = {a.name: a for a in [
    Ablation("corrupted", "Other prompt", "Writes the other prompt's activation (classic activation "
             "patching): clean into corrupted when denoising, corrupted into clean when noising.",
             from_source=True),
    Ablation("zero", "Zero", "Writes zeros.",
             caveat="Zero ablation moves activations far off the distribution the model saw in "
                    "training, so large effects can be artefacts of that rather than of the "
                    "information removed."),
    Ablation("mean", "Mean", "Writes the mean activation over a reference set of prompts, position "
             "by position (the generated IOI set unless you give a dataset).",
             caveat="Mean ablation needs a reference set; the result names it. It removes what "
                    "varies between prompts and keeps what they share."),
    Ablation("resample", "Resample", "Writes another prompt's activation, drawn from the dataset "
             "(K draws per pair, seeded), and averages the metric over the draws.",
             needs_dataset=True),
]}

DEFAULT_DRAWS = 4
DEFAULT_REFERENCE_PAIRS = 64


def join_notes(notes: list) -> str:
    """Reference notes of several length groups, short enough to read."""
    if len(notes) <= 2:
        return "; ".join(notes)
    return "; ".join(notes[:2]) + f"; and {len(notes) - 2} more token lengths"


def get_ablation(name: str) -> Ablation:
    return lookup(ABLATIONS, name, "ablation", "ablation")


@dataclass
class RefSet:
    """Prompts (token ids) to take means from or resample, and how to name them in results."""
    prompts: list
    label: str

    def of_length(self, n_tokens: int) -> list:
        return [p for p in self.prompts if len(p) == n_tokens]


def ioi_reference(tokenizer, n: int = DEFAULT_REFERENCE_PAIRS, seed: int = 0) -> RefSet:
    """Both prompts of n generated IOI pairs (the mean ablation's default reference set)."""
    from .ioi import generate_ioi
    from .prompts import encode

    ds = generate_ioi(tokenizer, n, seed=seed)
    prompts = [encode(tokenizer, text) for it in ds.items for text in (it.pair.clean, it.pair.corrupted)]
    return RefSet(prompts, f"the generated IOI set ({n} pairs, seed {seed})")


def _activations(model, backend, prompts: list, component: Component, chunk: int = 32) -> list:
    """Per layer (R, T, W) activations of equal-length prompts (the caller holds no lock)."""
    out = None
    for i in range(0, len(prompts), chunk):
        ids = torch.tensor(prompts[i:i + chunk])
        with model.locked(), torch.inference_mode():
            _, acts = backend.baseline(ids, component)
        out = [a.cpu() for a in acts] if out is None else [torch.cat([o, a.cpu()]) for o, a in zip(out, acts)]
    return out


def replacement(ablation: str, component: Component, model, backend, source: list, own: list,
                reference: RefSet | None = None, draws: int = DEFAULT_DRAWS, seed: int = 0):
    """Values to write into P target prompts of one length T.

    source: per layer (P, T, W) activations of each target's own other prompt (what
    'corrupted' writes); own: those prompts' token ids (resample never draws them).
    Returns (tables per layer (S, T, W), rows (P, K) of indices into the tables, a note
    naming the reference set, or None)."""
    a = get_ablation(ablation)
    P = len(own)
    if a.name == "corrupted":
        return source, np.arange(P)[:, None], None
    if a.name == "zero":
        return [torch.zeros_like(s[:1]) for s in source], np.zeros((P, 1), dtype=np.int64), None
    if reference is None:
        raise SweepError(f"The {a.name} ablation needs a dataset: use --ioi N or --pairs FILE "
                         f"(or the Datasets page).", field="ablation")
    T = len(own[0])
    same = reference.of_length(T)
    if a.name == "mean":
        if same:
            acts = _activations(model, backend, same, component)
            note = f"mean over {len(same)} prompts of {reference.label} with {T} tokens"
            return [x.mean(0, keepdim=True) for x in acts], np.zeros((P, 1), dtype=np.int64), note
        if component.hook == "pattern":
            raise SweepError(f"Mean ablation of attention patterns needs reference prompts of the "
                             f"same length ({T} tokens); {reference.label} has none.", field="ablation")
        by_len: dict = {}
        for p in reference.prompts:
            by_len.setdefault(len(p), []).append(p)
        sums, count = None, 0
        for group in by_len.values():
            acts = _activations(model, backend, group, component)
            s = [x.sum((0, 1)) for x in acts]
            sums = s if sums is None else [u + v for u, v in zip(sums, s)]
            count += sum(len(p) for p in group)
        note = (f"mean over every token of {len(reference.prompts)} prompts of {reference.label} "
                f"(none has {T} tokens, so one mean for all positions)")
        return ([(x / count).expand(1, T, -1).clone() for x in sums],
                np.zeros((P, 1), dtype=np.int64), note)
    # resample: K other prompts per target
    pool = same
    if not pool:
        raise SweepError(f"Resample ablation needs other prompts of the same length ({T} tokens) "
                         f"in the dataset; there are none.", field="ablation")
    rng = np.random.default_rng(seed)
    rows = np.empty((P, draws), dtype=np.int64)
    for i, mine in enumerate(own):
        others = [j for j, p in enumerate(pool) if p != mine]
        if not others:
            raise SweepError(f"Resample ablation draws from other pairs of the same length, and "
                             f"the {T}-token pairs have none. Use more pairs, or pairs of one "
                             f"length (e.g. one IOI template order).", field="ablation")
        rows[i] = rng.choice(others, size=draws, replace=len(others) < draws)
    acts = _activations(model, backend, pool, component)
    return acts, rows, f"{draws} draws per pair (seed {seed}) from {len(pool)} prompts of {reference.label}"
