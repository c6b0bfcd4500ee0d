"""How long a sweep will take, before it runs.

One quick calibration per loaded model (a few small timed forwards, ~0.1–1 s on a
CPU, cached for the model's lifetime) fits

    seconds(forward) = fixed + per_token_layer * token-layers

and the estimate sums that over the forwards the local backend will actually run
for the sweep (its batching plan: batches, lowest layer and position of each).

Never blocks behind a running sweep: when the model is busy and not yet
calibrated, the estimate falls back to a rough guess from the model's size.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .engine import batch_rows
from .hooks import _PREFIX_OK, HookBackend, token_layer_flops
from .models import LoadedModel
from .sweeps import get_sweep

# rough sustained fp32 throughput when the model is busy and cannot be timed
_GUESS_FLOPS = {"cpu": 2e10, "cuda": 2e13, "mps": 2e12}
_GUESS_FIXED_PER_LAYER_S = {"cpu": 3e-4, "cuda": 1e-4, "mps": 2e-4}


@dataclass(frozen=True)
class Calibration:
    fixed_s: float            # per forward pass, whatever its size
    per_token_layer_s: float  # one token through one block
    head_rows: float          # the unembedding of one row, in token-layers
    measured: bool = True     # False: a guess from the model's size (the model was busy)


_CALIBRATIONS: "weakref.WeakKeyDictionary[torch.nn.Module, Calibration]" = weakref.WeakKeyDictionary()
_ESTIMATES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time_forward(model: LoadedModel, rows: int, tokens: int, repeats: int = 2) -> float:
    """Best of `repeats` timed forwards (after one warm-up); the caller holds the model's lock."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.components.vocab_size, (rows, tokens), generator=g).to(model.device)
    kw = {"use_cache": False}
    best = float("inf")
    with torch.inference_mode():
        for i in range(repeats + 1):
            _sync(model.device)
            t0 = time.perf_counter()
            try:
                model.hf(input_ids=ids, logits_to_keep=1, **kw)
            except TypeError:
                model.hf(input_ids=ids, **kw)
            _sync(model.device)
            if i:  # the first run warms up
                best = min(best, time.perf_counter() - t0)
    return best


def _guess(model: LoadedModel) -> Calibration:
    c = model.components
    dev = torch.device(model.device).type
    head = c.vocab_size * c.d_model * 2.0 / token_layer_flops(c)
    return Calibration(_GUESS_FIXED_PER_LAYER_S.get(dev, 3e-4) * c.n_layers,
                       token_layer_flops(c) / _GUESS_FLOPS.get(dev, 2e10), head, measured=False)


def calibrate(model: LoadedModel, refresh: bool = False, wait: bool = True) -> Calibration:
    """Time a tiny and a small forward on this model (cached per model).

    wait=False: if another run holds the model, return a rough guess instead (not cached).
    """
    cal = None if refresh else _CALIBRATIONS.get(model.hf)
    if cal is not None:
        return cal
    if not model.lock.acquire(blocking=wait):
        return _guess(model)
    try:
        c = model.components
        small = _time_forward(model, 1, 4)
        rows, toks = 2, 16
        big = _time_forward(model, rows, toks)
    finally:
        model.lock.release()
    head = c.vocab_size * c.d_model * 2.0 / token_layer_flops(c)
    w_small = 4 * c.n_layers + head
    w_big = rows * toks * c.n_layers + rows * head
    per = max((big - small) / (w_big - w_small), 1e-12)
    fixed = max(small - per * w_small, 0.0)
    cal = Calibration(fixed, per, head)
    _CALIBRATIONS[model.hf] = cal
    return cal


def forward_work(model: LoadedModel, n_tokens: int, sweep: str, batch_size: int | None = None,
                 skip_lower: bool = True) -> tuple[int, float]:
    """(forward passes, token-layers of work) the local backend will run for a sweep."""
    spec = get_sweep(sweep)
    c = model.components
    cells = spec.cells(c.n_layers, n_tokens, c.n_heads)
    backend = HookBackend(model)
    prefix_ok = _PREFIX_OK.get(model.hf)
    if prefix_ok is None and skip_lower and model.lock.acquire(blocking=False):
        try:
            prefix_ok = backend._prefix_supported()   # two small forwards, once per model
        finally:
            model.lock.release()
    if prefix_ok is None:
        prefix_ok = True    # busy model, not checked yet: the usual case
    perm = backend.order(cells, spec.component, skip_lower)
    if perm is not None:
        cells = cells[perm]
    bs = batch_size or batch_rows(model, n_tokens)
    shift = 1 if spec.component == "resid" and skip_lower else 0
    L = c.n_layers
    forwards, work = 1, 2.0 * n_tokens * L            # the baseline: both prompts
    prefixes = set()                                  # one-row runs of each cached prefix
    for start in range(0, len(cells), bs):
        chunk = cells[start:start + bs]
        for g in backend.plan(chunk, n_tokens, spec.component, skip_lower, prefix_ok=prefix_ok):
            r = len(g.idx)
            if not skip_lower:
                work += r * n_tokens * L
            else:
                l0 = min(g.layer + shift, L)
                work += (n_tokens - g.pos) * (r * (L - l0) + l0)
                if g.pos > 0 and g.pos not in prefixes:
                    prefixes.add(g.pos)
                    forwards, work = forwards + 1, work + g.pos * L
            forwards += 1
    return forwards, work


def estimate_seconds(model: LoadedModel, n_tokens: int, sweep: str, *, method: str = "exact",
                     batch_size: int | None = None, skip_lower: bool = True) -> float:
    """Seconds a sweep should take on this machine (method 'exact' or 'atp').

    The first call on a free model times a few small forwards; while another run holds
    the model it guesses from the model's size instead of waiting. Later calls are
    arithmetic on a cached plan.
    """
    cal = calibrate(model, wait=False)
    c = model.components
    if method == "atp":
        # one forward of both prompts plus a backward (~2 forwards), on eager attention
        return cal.fixed_s * 3 + cal.per_token_layer_s * 3 * (2 * n_tokens * c.n_layers + 2 * cal.head_rows)
    key = (n_tokens, sweep, batch_size or batch_rows(model, n_tokens), bool(skip_lower))
    memo = _ESTIMATES.setdefault(model.hf, {})
    if key in memo:
        forwards, work = memo[key]
    else:
        forwards, work = forward_work(model, n_tokens, sweep, batch_size, skip_lower)
        if _PREFIX_OK.get(model.hf) is not None:      # not planned on a guess
            memo[key] = (forwards, work)
    spec = get_sweep(sweep)
    n_cells = int(np.prod(spec.shape(c.n_layers, n_tokens, c.n_heads)))
    work += (n_cells + 2) * cal.head_rows
    return cal.fixed_s * forwards + cal.per_token_layer_s * work
