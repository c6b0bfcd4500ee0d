"""The one patching engine. Every named sweep is a preset (sweeps.SWEEPS) over run_sweep.

The engine decides what to run (cells, which are known without running, batches,
order, retries on out-of-memory, progress and cancel) and hands batches of
interventions to a backend (backends.base.Backend), which runs them and returns
three numbers per row; metrics are computed here from those.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .ablations import DEFAULT_DRAWS, RefSet, get_ablation, ioi_reference, replacement
from .backends.base import Backend, Batch, Writes, sweep_batch
from .backends.hooks import HookBackend
from .errors import Cancelled, SweepError
from .metrics import check_metric, from_readout, needs_lse, readout, top_tokens
from .models import LoadedModel
from .prompts import PreparedPair, PromptPair, prepare_pair
from .results import PatchResult, new_result
from .sites import Component, get_component, get_direction
from .sweeps import SweepSpec, get_sweep

DEFAULT_MEMORY_BUDGET_MB = int(os.environ.get("PATCHCORE_MEMORY_BUDGET_MB", "1024"))
MAX_BATCH = int(os.environ.get("PATCHCORE_MAX_BATCH", "256"))
MAX_PATCHES = int(os.environ.get("PATCHCORE_MAX_PATCHES", "200000"))


@dataclass
class Baseline:
    """Unpatched runs of both prompts."""
    prepared: PreparedPair
    metric: str
    clean_metric: float
    corrupted_metric: float
    clean_top: list
    corrupted_top: list
    cache: list | None = None  # per layer: (2, T, D) activations, row 0 clean, row 1 corrupted


def batch_rows(model: LoadedModel, n_tokens: int, budget_mb: int | None = None) -> int:
    """Rows per forward that fit the memory budget (activations of one layer at a time)."""
    c = model.components
    elem = torch.finfo(model.dtype).bits // 8
    # live tensors per row while one block runs: residual copies, MLP hidden, attention scores
    per_row = elem * n_tokens * (8 * c.d_model + 3 * c.d_mlp + 2 * c.n_heads * n_tokens) + 4 * c.vocab_size
    budget = (budget_mb or DEFAULT_MEMORY_BUDGET_MB) * 2**20
    return int(max(1, min(MAX_BATCH, budget // per_row)))


def before_first_diff(cells: np.ndarray, first_diff: int) -> np.ndarray:
    """Cells at one position before the first where the prompts differ: known to be unchanged
    before a run (unchanged_cells finds them, and any others, from the activations)."""
    return (cells[:, 1] >= 0) & (cells[:, 1] < first_diff)


def plan(model: LoadedModel, n_tokens: int, sweep: str, first_diff: int = 0) -> dict:
    """What a sweep will cost before it runs: patches, forward rows, batches.

    first_diff: the first position where the prompts differ. Cells before it patch in what is
    already there, so run_sweep knows their value without a forward (see unchanged_cells)."""
    spec = get_sweep(sweep)
    c = model.components
    cells = spec.grid(c, n_tokens)
    n = len(cells)
    skipped = int(before_first_diff(cells, first_diff).sum())
    bs = batch_rows(model, n_tokens)
    run = n - skipped
    return {"patches": n, "skipped": skipped, "forward_rows": run + 2, "batch_size": bs,
            "batches": math.ceil(run / bs)}


def make_backend(model: LoadedModel, backend: Backend | None = None) -> Backend:
    """The object that runs forwards: local torch hooks unless a backend is given."""
    return backend if backend is not None else HookBackend(model)


def run_baseline(model: LoadedModel, pair: PromptPair | PreparedPair, metric: str = "logit_diff",
                 component: Component | str = "resid", cancel=None, on_wait=None,
                 backend: Backend | None = None) -> Baseline:
    check_metric(metric)
    component = get_component(component) if isinstance(component, str) else component
    prepared = pair if isinstance(pair, PreparedPair) else prepare_pair(model.tokenizer, pair)
    ids = torch.tensor([prepared.clean_ids, prepared.corrupted_ids])
    backend = make_backend(model, backend)
    with model.locked(cancel, on_wait), torch.inference_mode():
        logits, cache = backend.baseline(ids, component)
    values = from_readout(metric, readout(logits, prepared.answer_id, prepared.wrong_id)).tolist()
    return Baseline(prepared, metric, values[0], values[1],
                    top_tokens(model.tokenizer, logits[0]), top_tokens(model.tokenizer, logits[1]),
                    cache)


def first_change(cache: list, component: Component, components) -> int:
    """The first position where the clean and corrupted activations differ at any layer (T if
    none): before it, a patch with the other prompt's activation writes what is already there."""
    clean = torch.stack([a[0] for a in cache])
    corrupted = torch.stack([a[1] for a in cache])
    differs = ~component.heads_view(clean == corrupted, components).all(-1).all(-1)   # (L, T)
    hit = torch.nonzero(differs.any(0))
    return int(hit[0, 0]) if len(hit) else int(differs.shape[1])


def unchanged_cells(cache: list, cells: np.ndarray, component: Component, components) -> np.ndarray:
    """Cells whose patch writes exactly the value already there (bit for bit).

    Such a patched forward IS the unpatched run of the target prompt, so its metric is known
    without running it. With causal attention this covers every position before the first
    token where the prompts differ (9 of 16 positions of the IOI demo)."""
    clean = torch.stack([a[0] for a in cache])      # (L, T, W); patterns (L, H, T, T)
    corrupted = torch.stack([a[1] for a in cache])
    eq = component.heads_view(clean == corrupted, components).all(-1).cpu().numpy()  # (L, T, H)
    layer, pos, head = cells[:, 0], cells[:, 1], cells[:, 2]
    # -1 means "all": those cells read the .all() views; the clipped index only keeps them in range
    p, hh = np.maximum(pos, 0), np.clip(head, 0, eq.shape[2] - 1)
    return np.where(pos >= 0,
                    np.where(head >= 0, eq[layer, p, hh], eq.all(2)[layer, p]),
                    np.where(head >= 0, eq.all(1)[layer, hh], eq.all((1, 2))[layer]))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def run_batch(model: LoadedModel, batch: Batch, backend: Backend, batch_size: int, *, progress=None,
              cancel=None, on_wait=None, done_before: int = 0, total: int | None = None):
    """Every row of `batch` through the backend, `batch_size` rows per call (or what the backend
    asks for), in the backend's preferred order. Returns (readout (n, 3) float64 in the batch's
    order, the batch size that fit). Halves the batch size on out-of-memory; progress(done,
    total) and cancel() -> bool between calls."""
    n = batch.n
    total = n + done_before if total is None else total
    out = np.empty((n, 3), dtype=np.float64)
    perm = backend.order(batch)
    order = np.arange(n) if perm is None else np.asarray(perm)
    bs = max(1, backend.rows_per_call(batch_size, n))
    done = 0
    while done < n:
        if cancel is not None and cancel():
            raise Cancelled()
        rows = order[done:done + bs]
        try:
            with model.locked(cancel, on_wait), torch.inference_mode():
                got = backend.run(batch.subset(rows))
        except Exception as exc:  # noqa: BLE001
            if _is_oom(exc) and bs > 1:  # retry the same rows with smaller batches
                bs = max(1, bs // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if _is_oom(exc):
                raise SweepError("Out of memory even with one patch per forward pass. "
                                 "Use a smaller model, a shorter prompt, or a GPU.") from exc
            raise
        out[rows] = got.double().cpu().numpy()
        done += len(rows)
        if progress:
            progress(done_before + done, total)
    return out, bs


def run_cells(model: LoadedModel, prepared: PreparedPair, spec: SweepSpec, direction: str,
              metric: str, cells: np.ndarray, **kw) -> tuple[np.ndarray, Baseline, dict]:
    """Exact values of the given cells (layer, position, head; -1 = all) of a sweep on one pair:
    (values per cell, the baseline, facts). See run_cells_many."""
    values, bases, facts = run_cells_many(model, [prepared], spec, direction, metric, cells, **kw)
    return values[0], bases[0], facts


def run_cells_many(model: LoadedModel, pairs: list, spec: SweepSpec, direction: str, metric: str,
                   cells: np.ndarray, *, ablation: str = "corrupted", reference: RefSet | None = None,
                   draws: int = DEFAULT_DRAWS, seed: int = 0, batch_size: int | None = None,
                   progress=None, cancel=None, on_wait=None, skip_lower: bool = True,
                   skip_unchanged: bool = True, backend: Backend | None = None):
    """Exact values of the same cells on several pairs of one token length, sharing baselines
    and batches: every pair is a base prompt of the same batches.

    Returns (values (pairs, cells), baselines, facts: forward rows, batch size, cells skipped,
    the reference note, the noise floor). skip_unchanged: cells whose patch would write the
    value already there are not run (their value is the unpatched target run's metric); False
    runs every cell (for tests). With the resample ablation each cell runs `draws` times."""
    d = get_direction(direction)
    ab = get_ablation(ablation)
    backend = make_backend(model, backend)
    P, T = len(pairs), pairs[0].n_tokens
    bs = batch_size or batch_rows(model, T)
    ids = torch.tensor([p.clean_ids for p in pairs] + [p.corrupted_ids for p in pairs])
    with model.locked(cancel, on_wait), torch.inference_mode():
        logits, acts = backend.baseline(ids, spec.component)
    m = from_readout(metric, readout(logits, np.tile([p.answer_id for p in pairs], 2),
                                     np.tile([p.wrong_id for p in pairs], 2))).tolist()
    bases = [Baseline(p, metric, m[i], m[P + i], top_tokens(model.tokenizer, logits[i]),
                      top_tokens(model.tokenizer, logits[P + i]), [a[[i, P + i]] for a in acts])
             for i, p in enumerate(pairs)]
    src_sl = slice(d.source_row * P, (d.source_row + 1) * P)
    tables, draw, note = replacement(ablation, spec.component, model, backend, [a[src_sl] for a in acts],
                                     [d.pick(p.clean_ids, p.corrupted_ids)[0] for p in pairs],
                                     reference, draws, seed)
    k = draw.shape[1]
    out = np.empty((P, len(cells)), dtype=np.float64)
    todo = []
    for i, b in enumerate(bases):
        keep = np.arange(len(cells))
        if skip_unchanged and ab.from_source:
            same = unchanged_cells(b.cache, cells, spec.component, model.components)
            out[i, same] = d.target_metric(b.clean_metric, b.corrupted_metric)
            keep = keep[~same]
        todo.append(keep)
    counts = np.array([len(t) for t in todo])
    skipped = P * len(cells) - int(counts.sum())
    if progress:
        progress(skipped, P * len(cells))
    pair_of = np.repeat(np.repeat(np.arange(P), counts), k)
    run = np.concatenate(todo) if P else np.zeros(0, dtype=np.int64)
    targets = torch.tensor([d.pick(p.clean_ids, p.corrupted_ids)[1] for p in pairs])
    # patches over every position still write the value already there before the first change
    first = np.array([first_change(b.cache, spec.component, model.components)
                      if skip_unchanged and ab.from_source else 0 for b in bases])
    batch = sweep_batch(targets[0], spec.component, np.repeat(cells[run], k, axis=0), tables,
                        0, 0, skip_lower, src=draw[pair_of, np.tile(np.arange(k), len(run))],
                        same_before=first[pair_of])
    batch.ids, batch.prompt = targets, pair_of
    batch.answer = np.array([p.answer_id for p in pairs])[pair_of]
    batch.wrong = np.array([p.wrong_id for p in pairs])[pair_of]
    batch.need_lse = needs_lse(metric)
    n_run = batch.n
    if model.dtype != torch.float32 and len(run):
        own = [a[d.target_row * P:d.target_row * P + 1] for a in acts]
        _add_control_rows(batch, cells[todo[0]] if len(todo[0]) else cells[run], own)
    total = P * len(cells)
    scale = (lambda done, _: progress(skipped + min(done - skipped, n_run) // k, total)) if progress else None
    got, bs = run_batch(model, batch, backend, bs, progress=scale, cancel=cancel, on_wait=on_wait,
                        done_before=skipped, total=skipped + batch.n)
    values = from_readout(metric, got)
    mean = values[:n_run].reshape(-1, k).mean(1)
    start = 0
    for i, t in enumerate(todo):
        out[i, t] = mean[start:start + len(t)]
        start += len(t)
    # control rows write the first target's own activation: any change is rounding noise
    target = d.target_metric(bases[0].clean_metric, bases[0].corrupted_metric) if P else 0.0
    noise = float(np.abs(values[n_run:] - target).max()) if batch.n > n_run else 0.0
    return out, bases, {"forward_rows": batch.n + 2 * P, "batch_size": bs, "skipped": skipped,
                        "reference": note or "", "noise_floor": noise}


def _add_control_rows(batch: Batch, cells: np.ndarray, own_target: list) -> None:
    """Three unpatched rows that still run like patched ones (a no-op write at the lowest, middle
    and highest patched layer): in low precision, how far they land from the single-row baseline
    is the run's noise floor."""
    comp = batch.writes[0].component
    layers = np.unique(np.percentile(cells[:, 0], [0, 50, 100], method="nearest").astype(np.int64))
    n, c = batch.n, len(layers)
    rows = np.arange(n, n + c)
    batch.writes.append(Writes(comp, rows, layers, np.full(c, -1), np.full(c, -1),
                               np.zeros(c, dtype=np.int64), own_target))
    batch.prompt = np.concatenate([batch.prompt, np.zeros(c, dtype=np.int64)])
    batch.answer = np.concatenate([batch.answer, np.repeat(batch.answer[:1], c)])
    batch.wrong = np.concatenate([batch.wrong, np.repeat(batch.wrong[:1], c)])
    if isinstance(batch.same_before, np.ndarray):   # the first pair's shared prefix
        batch.same_before = np.concatenate([batch.same_before, np.repeat(batch.same_before[:1], c)])


def run_sweep(model: LoadedModel, pair: PromptPair | PreparedPair, sweep: str = "layer_pos",
              direction: str = "denoise", metric: str = "logit_diff", *,
              batch_size: int | None = None, progress=None, cancel=None, on_wait=None,
              skip_lower: bool = True, skip_unchanged: bool = True, max_patches: int | None = None,
              ablation: str = "corrupted", reference: RefSet | None = None,
              draws: int = DEFAULT_DRAWS, seed: int = 0,
              backend: Backend | None = None) -> PatchResult:
    """Run one sweep. progress(done, total) and cancel() -> bool are called between batches.

    ablation: what each patch writes (ablations.ABLATIONS); mean and resample draw from
    `reference` (mean: the generated IOI set when none is given)."""
    spec = get_sweep(sweep)
    get_direction(direction)
    check_metric(metric)
    c = model.components
    prepared = pair if isinstance(pair, PreparedPair) else prepare_pair(model.tokenizer, pair)
    n_tok = prepared.n_tokens
    cells = spec.grid(c, n_tok)
    limit = max_patches or MAX_PATCHES
    if len(cells) > limit:
        raise SweepError(f"This sweep needs {len(cells):,} patches, over the limit of {limit:,}. "
                         f"Choose a coarser sweep (e.g. 'head' instead of 'head_pos') or a shorter prompt.",
                         field="sweep")
    ab = get_ablation(ablation)
    if reference is None and ab.name == "mean":
        reference = ioi_reference(model.tokenizer)
    backend = make_backend(model, backend)
    t0 = time.perf_counter()
    values, base, facts = run_cells(model, prepared, spec, direction, metric, cells,
                                    ablation=ablation, reference=reference, draws=draws, seed=seed,
                                    batch_size=batch_size, progress=progress, cancel=cancel,
                                    on_wait=on_wait, skip_lower=skip_lower,
                                    skip_unchanged=skip_unchanged, backend=backend)
    result = new_result(model, spec, direction, metric, values.reshape(spec.dims(c, n_tok)),
                        base.clean_metric, base.corrupted_metric, prepared=prepared,
                        seconds=time.perf_counter() - t0, forward_rows=facts["forward_rows"],
                        batch_size=facts["batch_size"], backend=backend.name,
                        clean_top=base.clean_top, corrupted_top=base.corrupted_top,
                        ablation=ab.name, reference=facts["reference"],
                        noise_floor=facts["noise_floor"])
    if ab.caveat:
        result.warnings.append(ab.caveat)
    return result
