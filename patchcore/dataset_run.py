"""Run one sweep over a dataset of pairs: per-cell means, bootstrap intervals, every pair kept.

Pairs of one token length run together (``engine.run_cells_many``): one baseline
forward for all of them, and every pair's patches in the same batches, with every
backend shortcut. Per-position results are aligned across pairs by role (IOI pairs)
or by index (uploaded pairs of equal token length; see ``datasets.for_sweep``).
"""
from __future__ import annotations

import time

import numpy as np

from .datasets import DatasetPair, PairDataset, for_sweep, pairs_from_list

from .ioi import role_order
from .ablations import DEFAULT_DRAWS, get_ablation
from .engine import make_backend, run_cells_many
from .interventions import dataset_reference
from .errors import Cancelled, PairError, SweepError
from .metrics import check_metric
from .models import LoadedModel
from .prompts import PromptPair, prepare_pair
from .results import BothResult, DatasetResult, new_result
from .stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, mean_ci, normalized_ci
from .sweeps import check_direction, get_sweep

MAX_DATASET_PATCHES = 3_000_000  # patches over all pairs (and directions) in one run
SHARED_PAIRS = 64                # pairs of one length that share baselines and batches
VARIES = "(varies)"


# --------------------------------------------------------------------------- running
def _as_dataset(pairs, model: LoadedModel) -> PairDataset:
    if isinstance(pairs, PairDataset):
        return pairs
    if isinstance(pairs, (PromptPair, DatasetPair)):
        pairs = [pairs]
    return pairs_from_list(list(pairs), model.tokenizer)


def role_matrix(roles: list[str], order: list[str]) -> np.ndarray:
    """(T, R) matrix that averages the positions of each role."""
    m = np.zeros((len(roles), len(order)))
    for t, r in enumerate(roles):
        if r in order:
            m[t, order.index(r)] = 1.0
    counts = m.sum(axis=0)
    return m / np.where(counts > 0, counts, 1.0)


def average_by_role(values: np.ndarray, axes: tuple, mat: np.ndarray) -> np.ndarray:
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
    patches = sum(int(np.prod(spec.dims(c, it.n_tokens or 1))) for it in ds.items)
    return {"pairs": len(ds), "patches": patches * directions, "notes": list(ds.notes)}


def estimate_dataset_seconds(model: LoadedModel, pairs, sweep: str = "layer_pos", directions: int = 1,
                             length: int | None = None, wait: bool = True) -> float | None:
    """Rough time before a run: the engine's per-sweep estimate summed over pairs (positions
    before the first difference are not run), corrected by what dataset runs here took
    (estimate.learn with kind "dataset"). wait=False never blocks (see estimate_seconds).
    None when no estimate is available."""
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
            per_shape[key] = float(estimate_seconds(model, key[0], sweep, first_diff=key[1], wait=wait,
                                                    kind="dataset"))
        total += per_shape[key]
    return total * directions


def run_dataset(model: LoadedModel, pairs, sweep: str = "layer_pos", direction: str = "denoise",
                metric: str = "logit_diff", *, progress=None, cancel=None, on_wait=None,
                n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL,
                batch_size: int | None = None, length: int | None = None,
                ablation: str = "corrupted", draws: int = DEFAULT_DRAWS, backend=None) -> DatasetResult:
    """One sweep over every pair; `values` = mean over pairs, with bootstrap intervals.

    pairs: a PairDataset, or a list of PromptPair/DatasetPair.
    progress(done, total) counts patches over all pairs; cancel() -> bool is
    checked between batches. Uploaded pairs of mixed token lengths with a
    per-position sweep: one length group runs (`length`, default the largest)
    and a note says so.
    """
    out = _run(model, pairs, sweep, (check_direction(direction),), metric, progress=progress,
               cancel=cancel, on_wait=on_wait, n_boot=n_boot, seed=seed, level=level,
               batch_size=batch_size, length=length, backend=backend, ablation=ablation, draws=draws)
    return out[direction]


def run_both(model: LoadedModel, pairs, sweep: str = "layer_pos", metric: str = "logit_diff", *,
             progress=None, cancel=None, on_wait=None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
             level: float = DEFAULT_LEVEL, batch_size: int | None = None, length: int | None = None,
             ablation: str = "corrupted", draws: int = DEFAULT_DRAWS, backend=None) -> BothResult:
    """Denoising and noising over the same pairs (pair by pair, so progress is even)."""
    out = _run(model, pairs, sweep, ("denoise", "noise"), metric, progress=progress, cancel=cancel,
               on_wait=on_wait, n_boot=n_boot, seed=seed, level=level, batch_size=batch_size,
               length=length, backend=backend, ablation=ablation, draws=draws)
    return BothResult(out["denoise"], out["noise"])


def _run(model, pairs, sweep, directions, metric, *, progress, cancel, on_wait, n_boot, seed,
         level, batch_size, length, backend, ablation, draws) -> dict:
    spec = get_sweep(sweep)
    check_metric(metric)
    ab = get_ablation(ablation)
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
    if ab.needs_dataset:   # resample draws from other pairs of the same length: keep pairs that have one
        count = {}
        for p in prepared:
            count[p.n_tokens] = count.get(p.n_tokens, 0) + 1
        keep = [i for i, p in enumerate(prepared) if count[p.n_tokens] > 1]
        if len(keep) < len(prepared):
            if not keep:
                raise SweepError("Resample ablation draws from other pairs of the same token length, "
                                 "and no two pairs here have the same length. Use more pairs.",
                                 field="ablation")
            ds.notes.append(f"{len(prepared) - len(keep)} pair(s) had no other pair of their token "
                            f"length to draw from and were left out (resample ablation).")
            ds.items = [ds.items[i] for i in keep]
            prepared = [prepared[i] for i in keep]
    refs = {d: dataset_reference(ab.name, d, prepared) for d in directions}
    c = model.components
    by_role = spec.per_position and ds.role_aligned
    if spec.per_position and not by_role and len({p.n_tokens for p in prepared}) > 1:
        raise SweepError("Per-position sweeps need pairs of equal token length.")  # for_sweep prevents this
    sizes = [int(np.prod(spec.dims(c, p.n_tokens))) for p in prepared]
    total = sum(sizes) * len(directions)
    if total > MAX_DATASET_PATCHES:
        raise SweepError(f"This dataset run needs {total:,} patches, over the limit of "
                         f"{MAX_DATASET_PATCHES:,}. Use fewer pairs or a coarser sweep.", field="sweep")
    if by_role:
        order = role_order([it.roles for it in ds.items])
        mats = [role_matrix(it.roles, order) for it in ds.items]
        labels, aligned = order, "role"
    elif spec.per_position:
        labels, aligned = _labels(prepared), "position"
    else:
        labels, aligned = [], "none"

    per = {d: [None] * len(prepared) for d in directions}
    clean, corrupted = [0.0] * len(prepared), [0.0] * len(prepared)
    seconds = {d: 0.0 for d in directions}
    rows = {d: 0 for d in directions}
    bs_used, skipped, done, noise = 0, 0, 0, {d: 0.0 for d in directions}
    notes = {d: "" for d in directions}
    t_all = time.perf_counter()
    if progress:
        progress(0, total)
    backend = make_backend(model, backend)
    # pairs of one token length share baselines and batches (at most SHARED_PAIRS at a time)
    groups: dict = {}
    for k, p in enumerate(prepared):
        groups.setdefault(p.n_tokens, []).append(k)
    chunks = [idx[i:i + SHARED_PAIRS] for idx in groups.values() for i in range(0, len(idx), SHARED_PAIRS)]
    for idx in chunks:
        group = [prepared[k] for k in idx]
        cells = spec.grid(c, group[0].n_tokens)
        for d in directions:
            if cancel is not None and cancel():
                raise Cancelled()
            t0 = time.perf_counter()
            step = (lambda got, _t, before=done: progress(before + got, total)) if progress else None
            values, bases, facts = run_cells_many(
                model, group, spec, d, metric, cells, ablation=ab.name, reference=refs[d], draws=draws,
                seed=seed, batch_size=batch_size, progress=step, cancel=cancel, on_wait=on_wait,
                backend=backend)
            seconds[d] += time.perf_counter() - t0
            rows[d] += facts["forward_rows"]
            skipped += facts["skipped"]
            bs_used = max(bs_used, facts["batch_size"])
            noise[d] = max(noise[d], facts["noise_floor"])
            notes[d] = notes[d] or facts["reference"]
            done += values.size
            for k, v, b in zip(idx, values, bases):
                v = v.reshape(spec.dims(c, b.prepared.n_tokens))
                per[d][k] = average_by_role(v, spec.axes, mats[k]) if by_role else v
                clean[k], corrupted[k] = b.clean_metric, b.corrupted_metric
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
        res = new_result(
            model, spec, d, metric, mean, float(clean_a.mean()), float(corr_a.mean()),
            cls=DatasetResult, tokens=list(labels), pair=ds.items[0].pair,
            seconds=seconds[d], forward_rows=rows[d], batch_size=bs_used, backend=backend.name,
            diff_positions=diff_cols, ablation=ab.name, reference=notes[d], noise_floor=noise[d],
            n_pairs=len(prepared), per_pair=stack, pair_clean=clean_a, pair_corrupted=corr_a,
            ci_low=lo, ci_high=hi, normalized_low=nlo, normalized_high=nhi, level=level,
            n_boot=n_boot, boot_seed=seed, aligned_by=aligned, pairs=pair_dicts,
            dataset=dict(ds.settings), notes=list(ds.notes),
            rejected=[{"line": r.line, "reason": r.reason} for r in ds.rejected],
        )
        res.warnings.extend(_dataset_warnings(res))
        if ab.caveat:
            res.warnings.append(ab.caveat)
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
