"""Run one sweep over a dataset of pairs: per-cell means, bootstrap intervals, every pair kept.

Each pair runs through the engine's own batched sweep (``engine.run_sweep``,
many patches per forward), so a dataset gets every backend optimisation for
free. Per-position results are aligned across pairs by role (IOI pairs) or
by index (uploaded pairs of equal token length; see ``datasets.for_sweep``).
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .datasets import DatasetPair, PairDataset, for_sweep, pairs_from_list, role_order
from .engine import make_backend, result_warnings, run_sweep
from .errors import Cancelled, PairError, SweepError
from .metrics import check_metric
from .models import LoadedModel
from .prompts import PromptPair, prepare_pair
from .result import PatchResult, _nan_nested, _to_nested
from .stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, mean_ci, normalized_ci, per_pair_normalized
from .sweeps import check_direction, get_sweep

MAX_DATASET_PATCHES = 3_000_000  # patches over all pairs (and directions) in one run
VARIES = "(varies)"


@dataclass
class DatasetResult(PatchResult):
    """A PatchResult whose `values` are means over pairs, with intervals and every pair's values.

    `tokens` holds one label per position column: a role (IOI pairs), or the
    token text where every pair has the same token there, else '(varies)'.
    """
    n_pairs: int = 0
    per_pair: np.ndarray | None = None        # (n_pairs, *values.shape) raw metric per pair
    pair_clean: np.ndarray | None = None      # (n_pairs,)
    pair_corrupted: np.ndarray | None = None  # (n_pairs,)
    ci_low: np.ndarray | None = None          # bootstrap interval of `values` (raw)
    ci_high: np.ndarray | None = None
    normalized_low: np.ndarray | None = None  # bootstrap interval of `normalized`
    normalized_high: np.ndarray | None = None
    level: float = DEFAULT_LEVEL
    n_boot: int = DEFAULT_N_BOOT
    boot_seed: int = 0
    aligned_by: str = "position"              # role | position | none
    pairs: list = field(default_factory=list)  # one dict per pair (clean, corrupted, answer, wrong, ...)
    dataset: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    rejected: list = field(default_factory=list)  # [{"line": int, "reason": str}]

    @property
    def pair_normalized(self) -> np.ndarray:
        """Each pair's own normalised score (its own clean and corrupted), (n_pairs, *shape)."""
        return per_pair_normalized(self.per_pair, self.pair_clean, self.pair_corrupted)

    @property
    def effect(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(effect, low, high) on a 0..1 'moved the behaviour' scale.

        Denoising: the normalised score (1 = clean answer restored).
        Noising: 1 - score (1 = clean answer destroyed). 0 = no effect either way.
        """
        s, lo, hi = self.normalized, self.normalized_low, self.normalized_high
        if self.direction == "denoise":
            return s, lo, hi
        return 1.0 - s, 1.0 - hi, 1.0 - lo

    def cell_values(self, idx: tuple, value: str = "normalized") -> np.ndarray:
        """Every pair's value at one cell (for a strip plot): per-pair normalised or raw."""
        arr = self.pair_normalized if value == "normalized" else self.per_pair
        return arr[(slice(None),) + tuple(int(i) for i in idx)]

    def to_frame(self):
        df = super().to_frame()
        df["ci_low"] = np.asarray(self.ci_low, dtype=float).reshape(-1)
        df["ci_high"] = np.asarray(self.ci_high, dtype=float).reshape(-1)
        df["normalized_low"] = np.asarray(self.normalized_low, dtype=float).reshape(-1)
        df["normalized_high"] = np.asarray(self.normalized_high, dtype=float).reshape(-1)
        df["n_pairs"] = self.n_pairs
        return df

    def to_json(self) -> dict:
        d = super().to_json()
        d.update({
            "kind": "dataset",
            "n_pairs": self.n_pairs,
            "ci_low": _to_nested(self.ci_low),
            "ci_high": _to_nested(self.ci_high),
            "normalized_low": _to_nested(self.normalized_low),
            "normalized_high": _to_nested(self.normalized_high),
            "ci_level": self.level,
            "n_boot": self.n_boot,
            "boot_seed": self.boot_seed,
            "aligned_by": self.aligned_by,
            "per_pair": _to_nested(self.per_pair),
            "pair_clean": _to_nested(self.pair_clean),
            "pair_corrupted": _to_nested(self.pair_corrupted),
            "pairs": list(self.pairs),
            "dataset": dict(self.dataset),
            "notes": list(self.notes),
            "rejected": list(self.rejected),
        })
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DatasetResult":
        base = PatchResult.from_json(d)
        arr = lambda k: np.array(_nan_nested(d[k]), dtype=float)  # noqa: E731
        kw = {f: getattr(base, f) for f in PatchResult.__dataclass_fields__}
        return cls(**kw, n_pairs=int(d["n_pairs"]), per_pair=arr("per_pair"),
                   pair_clean=arr("pair_clean"), pair_corrupted=arr("pair_corrupted"),
                   ci_low=arr("ci_low"), ci_high=arr("ci_high"),
                   normalized_low=arr("normalized_low"), normalized_high=arr("normalized_high"),
                   level=float(d.get("ci_level", DEFAULT_LEVEL)), n_boot=int(d.get("n_boot", DEFAULT_N_BOOT)),
                   boot_seed=int(d.get("boot_seed", 0)), aligned_by=d.get("aligned_by", "position"),
                   pairs=list(d.get("pairs", [])), dataset=dict(d.get("dataset", {})),
                   notes=list(d.get("notes", [])), rejected=list(d.get("rejected", [])))


@dataclass
class BothResult:
    """Denoising and noising over the same pairs, for the quadrant view."""
    denoise: DatasetResult
    noise: DatasetResult

    def to_json(self) -> dict:
        return {"kind": "both", "denoise": self.denoise.to_json(), "noise": self.noise.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "BothResult":
        return cls(DatasetResult.from_json(d["denoise"]), DatasetResult.from_json(d["noise"]))

    @property
    def seconds(self) -> float:
        return self.denoise.seconds + self.noise.seconds


def result_from_json(d: dict):
    """PatchResult, DatasetResult or BothResult from its JSON."""
    if d.get("kind") == "both":
        return BothResult.from_json(d)
    if "n_pairs" in d and "per_pair" in d:
        return DatasetResult.from_json(d)
    return PatchResult.from_json(d)


# --------------------------------------------------------------------------- running
def _as_dataset(pairs, model: LoadedModel) -> PairDataset:
    if isinstance(pairs, PairDataset):
        return pairs
    if isinstance(pairs, (PromptPair, DatasetPair)):
        pairs = [pairs]
    return pairs_from_list(list(pairs), model.tokenizer)


def _role_matrix(roles: list[str], order: list[str]) -> np.ndarray:
    """(T, R) matrix that averages the positions of each role."""
    m = np.zeros((len(roles), len(order)))
    for t, r in enumerate(roles):
        if r in order:
            m[t, order.index(r)] = 1.0
    counts = m.sum(axis=0)
    return m / np.where(counts > 0, counts, 1.0)


def _by_role(values: np.ndarray, axes: tuple, mat: np.ndarray) -> np.ndarray:
    p = axes.index("position")
    v = np.moveaxis(values, p, -1) @ mat
    return np.moveaxis(v, -1, p)


def _labels(prepared: list) -> list[str]:
    first = prepared[0].clean_tokens
    return [tok if all(pp.clean_tokens[i] == tok for pp in prepared) else VARIES
            for i, tok in enumerate(first)]


def plan_dataset(model: LoadedModel, pairs, sweep: str = "layer_pos", directions: int = 1,
                 length: int | None = None) -> dict:
    """What a dataset run will cost before it runs: pairs, patches, pairs set aside."""
    spec = get_sweep(sweep)
    ds = for_sweep(_as_dataset(pairs, model), spec.per_position, model.tokenizer, length)
    c = model.components
    patches = sum(int(np.prod(spec.shape(c.n_layers, it.n_tokens or 1, c.n_heads))) for it in ds.items)
    return {"pairs": len(ds), "patches": patches * directions, "notes": list(ds.notes)}


def estimate_dataset_seconds(model: LoadedModel, pairs, sweep: str = "layer_pos", directions: int = 1,
                             length: int | None = None) -> float | None:
    """Rough time before a run: the engine's per-sweep estimate summed over pairs (positions
    before the first difference are not run). None when no estimate is available."""
    try:
        from .estimate import estimate_seconds
    except ImportError:  # pragma: no cover - depends on what is installed
        return None
    spec = get_sweep(sweep)
    ds = for_sweep(_as_dataset(pairs, model), spec.per_position, model.tokenizer, length)
    per_shape: dict[tuple[int, int], float] = {}
    total = 0.0
    for it in ds.items:
        prep = prepare_pair(model.tokenizer, it.pair)
        key = (prep.n_tokens, prep.first_diff)
        if key not in per_shape:
            per_shape[key] = float(estimate_seconds(model, key[0], sweep, first_diff=key[1]))
        total += per_shape[key]
    return total * directions


def run_dataset(model: LoadedModel, pairs, sweep: str = "layer_pos", direction: str = "denoise",
                metric: str = "logit_diff", *, progress=None, cancel=None, on_wait=None,
                n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL,
                batch_size: int | None = None, length: int | None = None,
                backend=None) -> DatasetResult:
    """One sweep over every pair; `values` = mean over pairs, with bootstrap intervals.

    pairs: a PairDataset, or a list of PromptPair/DatasetPair.
    progress(done, total) counts patches over all pairs; cancel() -> bool is
    checked between batches. Uploaded pairs of mixed token lengths with a
    per-position sweep: one length group runs (`length`, default the largest)
    and a note says so.
    """
    out = _run(model, pairs, sweep, (check_direction(direction),), metric, progress=progress,
               cancel=cancel, on_wait=on_wait, n_boot=n_boot, seed=seed, level=level,
               batch_size=batch_size, length=length, backend=backend)
    return out[direction]


def run_both(model: LoadedModel, pairs, sweep: str = "layer_pos", metric: str = "logit_diff", *,
             progress=None, cancel=None, on_wait=None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
             level: float = DEFAULT_LEVEL, batch_size: int | None = None, length: int | None = None,
             backend=None) -> BothResult:
    """Denoising and noising over the same pairs (pair by pair, so progress is even)."""
    out = _run(model, pairs, sweep, ("denoise", "noise"), metric, progress=progress, cancel=cancel,
               on_wait=on_wait, n_boot=n_boot, seed=seed, level=level, batch_size=batch_size,
               length=length, backend=backend)
    return BothResult(out["denoise"], out["noise"])


def _run(model, pairs, sweep, directions, metric, *, progress, cancel, on_wait, n_boot, seed,
         level, batch_size, length, backend) -> dict:
    spec = get_sweep(sweep)
    check_metric(metric)
    if not 0.5 <= level < 1.0:
        raise SweepError("The interval level must be between 0.5 and 1 (e.g. 0.95).")
    if n_boot < 100 or n_boot > 100_000:
        raise SweepError("Use between 100 and 100,000 bootstrap resamples (1,000 is usual).")
    ds = for_sweep(_as_dataset(pairs, model), spec.per_position, model.tokenizer, length)
    if not ds.items:
        raise SweepError("The dataset has no usable pairs.")
    prepared = []
    for k, it in enumerate(ds.items):
        try:
            prepared.append(prepare_pair(model.tokenizer, it.pair))
        except PairError as exc:
            where = f"line {it.line}" if it.line is not None else f"pair {k + 1}"
            raise PairError([type(i)(i.field, f"{where}: {i.message}") for i in exc.issues]) from None
        it.n_tokens = prepared[-1].n_tokens
    c = model.components
    by_role = spec.per_position and ds.role_aligned
    if spec.per_position and not by_role and len({p.n_tokens for p in prepared}) > 1:
        raise SweepError("Per-position sweeps need pairs of equal token length.")  # for_sweep prevents this
    sizes = [int(np.prod(spec.shape(c.n_layers, p.n_tokens, c.n_heads))) for p in prepared]
    total = sum(sizes) * len(directions)
    if total > MAX_DATASET_PATCHES:
        raise SweepError(f"This dataset run needs {total:,} patches, over the limit of "
                         f"{MAX_DATASET_PATCHES:,}. Use fewer pairs or a coarser sweep.", field="sweep")
    if by_role:
        order = role_order([it.roles for it in ds.items])
        mats = [_role_matrix(it.roles, order) for it in ds.items]
        labels, aligned = order, "role"
    elif spec.per_position:
        labels, aligned = _labels(prepared), "position"
    else:
        labels, aligned = [], "none"

    done_before = 0

    def pair_progress(done, _total):
        if progress:
            progress(done_before + done, total)

    per = {d: [] for d in directions}
    clean, corrupted = [], []
    seconds = {d: 0.0 for d in directions}
    rows = {d: 0 for d in directions}
    bs_used = 0
    skipped = 0
    last = {}
    t_all = time.perf_counter()
    if progress:
        progress(0, total)
    for k, (it, prep) in enumerate(zip(ds.items, prepared)):
        for d in directions:
            if cancel is not None and cancel():
                raise Cancelled()
            r = run_sweep(model, prep, sweep, d, metric, batch_size=batch_size, progress=pair_progress,
                          cancel=cancel, on_wait=on_wait, backend=make_backend(model, backend))
            skipped += r.values.size + 2 - r.forward_rows  # cells run_sweep knew without running
            done_before += sizes[k]
            v = _by_role(r.values, spec.axes, mats[k]) if by_role else r.values
            per[d].append(v)
            seconds[d] += r.seconds
            rows[d] += r.forward_rows
            bs_used = max(bs_used, r.batch_size)
            last[d] = r
        clean.append(r.clean_metric)
        corrupted.append(r.corrupted_metric)
    wall = time.perf_counter() - t_all

    clean_a, corr_a = np.array(clean), np.array(corrupted)
    if not labels:
        labels = list(prepared[0].clean_tokens)
    diff_cols = _diff_columns(ds, prepared, aligned, labels)
    pair_dicts = []
    for it, prep, cl, co in zip(ds.items, prepared, clean, corrupted):
        dct = it.to_dict()
        dct.update({"n_tokens": prep.n_tokens, "clean_metric": cl, "corrupted_metric": co})
        if it.roles is not None:
            dct["roles"] = list(it.roles)
        pair_dicts.append(dct)
    out = {}
    for d in directions:
        stack = np.stack(per[d])  # (N, *shape)
        mean, lo, hi = mean_ci(stack, n_boot=n_boot, level=level, seed=seed)
        _, nlo, nhi = normalized_ci(stack, clean_a, corr_a, n_boot=n_boot, level=level, seed=seed)
        r0 = last[d]
        res = DatasetResult(
            model=model.label, sweep=spec.name, direction=d, metric=metric, axes=spec.axes,
            values=mean, tokens=list(labels), clean_metric=float(clean_a.mean()),
            corrupted_metric=float(corr_a.mean()), pair=ds.items[0].pair, n_layers=c.n_layers,
            n_heads=c.n_heads, seconds=seconds[d], forward_rows=rows[d], batch_size=bs_used,
            device=r0.device, dtype=r0.dtype, backend=r0.backend,
            diff_positions=diff_cols,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            n_pairs=len(prepared), per_pair=stack, pair_clean=clean_a, pair_corrupted=corr_a,
            ci_low=lo, ci_high=hi, normalized_low=nlo, normalized_high=nhi, level=level,
            n_boot=n_boot, boot_seed=seed, aligned_by=aligned, pairs=pair_dicts,
            dataset=dict(ds.settings), notes=list(ds.notes),
            rejected=[{"line": r.line, "reason": r.reason} for r in ds.rejected],
        )
        res.warnings.extend(result_warnings(res))
        res.warnings.extend(_dataset_warnings(res))
        out[d] = res
    for res in out.values():
        res.dataset["wall_seconds"] = wall
        res.dataset["patches_skipped"] = skipped  # unchanged-prefix cells, all directions
    return out


def _diff_columns(ds: PairDataset, prepared, aligned: str, labels: list[str]) -> list[int]:
    """Columns where clean and corrupted differ in at least one pair."""
    if aligned == "role":
        hit = set()
        for it, p in zip(ds.items, prepared):
            hit.update(it.roles[i] for i in p.diff_positions)
        return [j for j, lab in enumerate(labels) if lab in hit]
    if aligned == "position":
        return sorted({i for p in prepared for i in p.diff_positions})
    return []


def _dataset_warnings(r: DatasetResult) -> list[str]:
    w = []
    if r.n_pairs < 5:
        w.append(f"Only {r.n_pairs} pair{'s' if r.n_pairs != 1 else ''}: the intervals are rough. "
                 f"Use 20 or more pairs for intervals you can rely on.")
    flipped = int(np.sum(r.pair_clean <= r.pair_corrupted))
    if flipped:
        w.append(f"In {flipped} of {r.n_pairs} pairs the clean prompt does not beat the corrupted one "
                 f"on {r.metric}; those pairs pull the averages towards zero.")
    return w
