"""The one patching engine. Every named sweep is a preset (sweeps.SWEEPS) over run_sweep."""
from __future__ import annotations

import datetime as _dt
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .errors import Cancelled, SweepError
from .hooks import HookBackend
from .metrics import check_metric, compute_metric, top_tokens
from .models import LoadedModel
from .prompts import PreparedPair, PromptPair, prepare_pair
from .result import PatchResult, normalize
from .sweeps import check_direction, get_sweep

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
    cells = spec.cells(c.n_layers, n_tokens, c.n_heads)
    n = len(cells)
    skipped = int(before_first_diff(cells, first_diff).sum())
    bs = batch_rows(model, n_tokens)
    run = n - skipped
    return {"patches": n, "skipped": skipped, "forward_rows": run + 2, "batch_size": bs,
            "batches": math.ceil(run / bs)}


def make_backend(model: LoadedModel, backend=None):
    """The object that runs forwards: local torch hooks unless a backend is given.

    A backend has baseline(rows_ids, component) -> (last logits, per-layer cache)
    and patched(base_ids, source, cells, component, skip_lower) -> last logits.
    """
    return backend if backend is not None else HookBackend(model)


def run_baseline(model: LoadedModel, pair: PromptPair | PreparedPair, metric: str = "logit_diff",
                 component: str = "resid", cancel=None, on_wait=None, backend=None) -> Baseline:
    check_metric(metric)
    prepared = pair if isinstance(pair, PreparedPair) else prepare_pair(model.tokenizer, pair)
    ids = torch.tensor([prepared.clean_ids, prepared.corrupted_ids])
    backend = make_backend(model, backend)
    with model.locked(cancel, on_wait), torch.inference_mode():
        logits, cache = backend.baseline(ids, component)
    values = compute_metric(metric, logits, prepared.answer_id, prepared.wrong_id).tolist()
    return Baseline(prepared, metric, values[0], values[1],
                    top_tokens(model.tokenizer, logits[0]), top_tokens(model.tokenizer, logits[1]),
                    cache)


def unchanged_cells(cache: list, cells: np.ndarray, component: str, n_heads: int) -> np.ndarray:
    """Cells whose patch writes exactly the value already there (bit for bit).

    Such a patched forward IS the unpatched run of the target prompt, so its metric is known
    without running it. With causal attention this covers every position before the first
    token where the prompts differ (9 of 16 positions of the IOI demo)."""
    clean = torch.stack([a[0] for a in cache])      # (L, T, D)
    corrupted = torch.stack([a[1] for a in cache])
    same = clean == corrupted
    if component == "head":
        L, T, D = same.shape
        eq = same.reshape(L, T, n_heads, D // n_heads).all(-1)  # (L, T, H)
    else:
        eq = same.all(-1, keepdim=True)                         # (L, T, 1)
    eq = eq.cpu().numpy()
    layer, pos, head = cells[:, 0], cells[:, 1], cells[:, 2]
    # -1 means "all": those cells read the .all() views; the clipped index only keeps them in range
    p, h = np.maximum(pos, 0), np.clip(head, 0, eq.shape[2] - 1)
    return np.where(pos >= 0,
                    np.where(head >= 0, eq[layer, p, h], eq.all(2)[layer, p]),
                    np.where(head >= 0, eq.all(1)[layer, h], eq.all((1, 2))[layer]))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def run_sweep(model: LoadedModel, pair: PromptPair | PreparedPair, sweep: str = "layer_pos",
              direction: str = "denoise", metric: str = "logit_diff", *,
              batch_size: int | None = None, progress=None, cancel=None, on_wait=None,
              skip_lower: bool = True, skip_unchanged: bool = True, max_patches: int | None = None,
              backend=None) -> PatchResult:
    """Run one sweep. progress(done, total) and cancel() -> bool are called between batches.

    skip_unchanged: cells whose patch would write the value already there are not run (their
    value is the unpatched target run's metric); False runs every cell (for tests)."""
    spec = get_sweep(sweep)
    check_direction(direction)
    check_metric(metric)
    c = model.components
    prepared = pair if isinstance(pair, PreparedPair) else prepare_pair(model.tokenizer, pair)
    n_tok = prepared.n_tokens
    cells = spec.cells(c.n_layers, n_tok, c.n_heads)
    limit = max_patches or MAX_PATCHES
    if len(cells) > limit:
        raise SweepError(f"This sweep needs {len(cells):,} patches, over the limit of {limit:,}. "
                         f"Choose a coarser sweep (e.g. 'head' instead of 'head_pos') or a shorter prompt.",
                         field="sweep")
    bs = batch_size or batch_rows(model, n_tok)
    t0 = time.perf_counter()
    backend = make_backend(model, backend)
    base = run_baseline(model, prepared, metric, spec.component, cancel, on_wait, backend)
    src_row, base_ids = (0, prepared.corrupted_ids) if direction == "denoise" else (1, prepared.clean_ids)
    source = [act[src_row] for act in base.cache]
    base_ids = torch.tensor(base_ids)
    out = np.empty(len(cells), dtype=np.float64)
    todo = np.arange(len(cells))
    if skip_unchanged and base.cache is not None:
        same = unchanged_cells(base.cache, cells, spec.component, c.n_heads)
        out[same] = base.corrupted_metric if direction == "denoise" else base.clean_metric
        todo = todo[~same]
    # A backend may run the cells in another order (HookBackend.order: position-major, so
    # batches share a cached prefix); `perm` maps run order to sweep order for write-back.
    perm = backend.order(cells[todo], spec.component, skip_lower) if hasattr(backend, "order") else None
    order = todo if perm is None else todo[perm]
    run_cells = cells[order]
    skipped = len(cells) - len(todo)
    done, rows_run = 0, 2
    if progress:
        progress(skipped, len(cells))
    while done < len(run_cells):
        if cancel is not None and cancel():
            raise Cancelled()
        chunk = run_cells[done:done + bs]
        try:
            with model.locked(cancel, on_wait), torch.inference_mode():
                logits = backend.patched(base_ids, source, chunk, spec.component, skip_lower)
        except Exception as exc:  # noqa: BLE001
            if _is_oom(exc) and bs > 1:  # retry the same cells with smaller batches
                bs = max(1, bs // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if _is_oom(exc):
                raise SweepError("Out of memory even with one patch per forward pass. "
                                 "Use a smaller model, a shorter prompt, or a GPU.") from exc
            raise
        vals = compute_metric(metric, logits, prepared.answer_id, prepared.wrong_id)
        out[order[done:done + len(chunk)]] = vals.double().cpu().numpy()
        done += len(chunk)
        rows_run += len(chunk)
        if progress:
            progress(skipped + done, len(cells))
    seconds = time.perf_counter() - t0
    values = out.reshape(spec.shape(c.n_layers, n_tok, c.n_heads))
    result = PatchResult(
        model=model.label, sweep=spec.name, direction=direction, metric=metric, axes=spec.axes,
        values=values, tokens=prepared.clean_tokens, clean_metric=base.clean_metric,
        corrupted_metric=base.corrupted_metric, pair=prepared.pair, n_layers=c.n_layers,
        n_heads=c.n_heads, seconds=seconds, forward_rows=rows_run, batch_size=bs,
        device=str(model.device), dtype=str(model.dtype).replace("torch.", ""), backend=getattr(backend, "name", "local"),
        clean_top=base.clean_top, corrupted_top=base.corrupted_top,
        diff_positions=prepared.diff_positions,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    result.warnings.extend(result_warnings(result))
    return result


def result_warnings(r: PatchResult) -> list[str]:
    w = []
    if not np.isfinite(r.values).all():
        w.append("Some patched values are NaN or infinite (numerical overflow); those cells are left blank.")
    if not np.isfinite(normalize(np.zeros(1), r.clean_metric, r.corrupted_metric)).all():
        w.append(f"The clean and corrupted runs give almost the same {r.metric} "
                 f"({r.clean_metric:.4g} vs {r.corrupted_metric:.4g}), so the normalised score is "
                 f"undefined. Showing raw values; pick a pair where the answer changes.")
    elif abs(r.clean_metric - r.corrupted_metric) < 0.05 * max(1.0, abs(r.clean_metric)):
        w.append("The clean and corrupted runs are very close, so normalised scores are unstable. "
                 "Read the raw values, or pick a pair where the answer changes more.")
    return w
