"""How long a sweep will take, before it runs.

The local backend plans its forwards with a cost model (planner.CostModel: token-layers
of work plus a fixed cost per block call and per forward). One quick calibration per
loaded model (two small timed forwards, cached for the model's lifetime) turns that
unit into seconds on this machine; the estimate is the plan's total cost for the
sweep (its batches, and each forward's lowest layer and position) times that.

Never blocks behind a running sweep: while another run holds the model and it is
not calibrated yet, the estimate falls back to a rough guess from the model's size.
"""
from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from . import machine_cache
from .backends.base import sweep_batch
from .backends.hooks import HookBackend
from .engine import batch_rows, before_first_diff
from .planner import CALIBRATED_COSTS, CostModel, cost_model, forward_cost, token_layer_flops
from .models import LoadedModel
from .sweeps import get_sweep

# rough sustained fp32 throughput when the model is busy and cannot be timed
_GUESS_FLOPS = {"cpu": 2e10, "cuda": 2e13, "mps": 2e12}


@dataclass(frozen=True)
class Calibration:
    unit_s: float             # seconds per unit of the backend's cost model (~ one token-layer)
    measured: bool = True     # False: a guess from the model's size (the model was busy)


_CALIBRATIONS: "weakref.WeakKeyDictionary[torch.nn.Module, Calibration]" = weakref.WeakKeyDictionary()
_STARTED: "weakref.WeakSet" = weakref.WeakSet()
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


def calibrate(model: LoadedModel, refresh: bool = False, wait: bool = True) -> Calibration:
    """Seconds per cost unit on this model and machine, from two timed forwards (cached).

    The two forwards (8 and 128 tokens) also give the fixed cost of one block call
    (mostly reading its weights); the backend then plans with that cost model
    (hooks.CALIBRATED_COSTS). wait=False: if another run holds the model, return a rough
    guess instead (not cached).
    """
    cal = None if refresh else _CALIBRATIONS.get(model.hf)
    if cal is not None:
        return cal
    key = machine_cache.model_key(model, "calibration")
    known = None if refresh else machine_cache.get("calibration", key)
    if isinstance(known, dict) and known.get("unit_s", 0) > 0:
        CALIBRATED_COSTS[model.hf] = CostModel(*known["cost"])
        cal = _CALIBRATIONS[model.hf] = Calibration(float(known["unit_s"]))
        return cal
    if not model.lock.acquire(blocking=wait):
        dev = torch.device(model.device).type
        return Calibration(token_layer_flops(model.components) / _GUESS_FLOPS.get(dev, 2e10), False)
    points = [(1, 8), (2, 64)]
    try:
        seconds = [_time_forward(model, r, t, repeats=2 if r == 1 else 1) for r, t in points]
    finally:
        model.lock.release()
    default = cost_model(model.components, model.device)
    L, U = model.components.n_layers, default.unembed_layers
    work = [L * r * t + r * U for r, t in points]              # token-layers, logits included
    calls = L + U + 1                                           # block calls (+ unembedding, embedding)
    per_token = (seconds[1] - seconds[0]) / (work[1] - work[0])
    if per_token > 0:
        per_call = max(seconds[0] - per_token * work[0], 0.0) / calls
        cm = CostModel(default.min_tokens, float(np.clip(per_call / per_token, 4.0, 2000.0)), U)
    else:                                                       # too noisy to split: keep the default
        cm = default
    CALIBRATED_COSTS[model.hf] = cm
    units = [forward_cost(r, t, 0, L, cm, False) for r, t in points]
    cal = Calibration(max(sum(seconds) / sum(units), 1e-12))
    _CALIBRATIONS[model.hf] = cal
    machine_cache.put("calibration", key, {"unit_s": cal.unit_s,
                                           "cost": [cm.min_tokens, cm.layer_overhead, cm.unembed_layers]})
    return cal


def forward_work(model: LoadedModel, n_tokens: int, sweep: str, batch_size: int | None = None,
                 skip_lower: bool = True, first_diff: int = 0, wait: bool = True) -> tuple[int, float]:
    """(forward passes, cost units) the local backend will spend on a sweep, baseline included.

    first_diff: the first position where the prompts differ; cells before it are not run.
    wait=False: never run the backend's shortcut checks here (they are two forwards)."""
    spec = get_sweep(sweep)
    c = model.components
    T, L = n_tokens, c.n_layers
    cells = spec.grid(c, T)
    cells = cells[~before_first_diff(cells, first_diff)]
    # patches over every position share the prefix before the first difference (engine.first_change)
    same_before = first_diff
    backend = HookBackend(model)
    cm = backend.cost
    sup = backend.support(check=False)
    if sup is None and skip_lower and wait and model.lock.acquire(blocking=False):
        try:
            sup = backend.support()          # two small forwards, once per model
        finally:
            model.lock.release()
    if sup is None:
        sup = {"prefix": True, "sliced": True, "skip": True, "head": True}   # busy, unchecked: usual
    batch = sweep_batch(torch.zeros(T, dtype=torch.long), spec.component, cells, [None] * L, 0, 0,
                        skip_lower, same_before=same_before)
    perm = backend.order(batch)
    if perm is not None:
        batch = batch.subset(perm)
    bs = batch_size or batch_rows(model, T)
    forwards, work = 1, forward_cost(2, T, 0, L, cm, False)       # the baseline: both prompts
    if skip_lower:                                                # the base prompt's own run
        forwards, work = forwards + 1, work + forward_cost(1, T, 0, L, cm, False)
    prefixes = set()
    for start in range(0, batch.n, bs):
        chunk = batch.subset(np.arange(start, min(start + bs, batch.n)))
        if skip_lower and sup.get("head"):   # one unembedding per batch
            work += (cm.unembed_layers + 1) * cm.layer_overhead
        for g in backend.plan(chunk, support=sup):
            forwards += 1
            if not skip_lower:
                work += forward_cost(len(g.idx), T, 0, L, cm, False)
                continue
            work += forward_cost(len(g.idx), T - g.pos, g.layer, L, cm, not sup["skip"],
                                 late_head=sup.get("head", False))
            if g.pos > 0 and not sup["sliced"] and g.pos not in prefixes:   # a prefix run
                prefixes.add(g.pos)
                forwards, work = forwards + 1, work + forward_cost(1, g.pos, 0, L, cm, False)
    return forwards, work


def correction(model: LoadedModel, kind: str = "sweep") -> float:
    """actual / estimated time of the latest runs of this model on this machine (1 before any)."""
    value = machine_cache.get("estimates", machine_cache.model_key(model, kind), 1.0)
    return float(value) if isinstance(value, (int, float)) and 0.01 < value < 100 else 1.0


def learn(model: LoadedModel, estimated: float | None, actual: float, kind: str = "sweep") -> None:
    """After a run: move the correction towards actual / estimated (the estimate before any
    correction), so the next estimate of this model on this machine is closer. Kept in the
    data folder, next to the run history."""
    if not estimated or not actual or estimated <= 0 or actual <= 0:
        return
    key = machine_cache.model_key(model, kind)
    before = machine_cache.get("estimates", key)
    ratio = float(np.clip(actual / (estimated / correction(model, kind)), 0.02, 50))
    machine_cache.put("estimates", key, ratio if before is None else math.sqrt(before * ratio))


def calibrate_soon(model: LoadedModel) -> None:
    """Calibrate (and check the backend's shortcuts) on a background thread, once per model."""
    if model.hf in _STARTED or model.hf in _CALIBRATIONS:
        return
    _STARTED.add(model.hf)

    def work():
        try:
            calibrate(model)
            with model.lock:
                HookBackend(model).support()
        except Exception:  # noqa: BLE001 - an estimate is a convenience, never an error
            pass
    threading.Thread(target=work, name="patchcore-calibrate", daemon=True).start()


def estimate_seconds(model: LoadedModel, n_tokens: int, sweep: str, *, method: str = "exact",
                     batch_size: int | None = None, skip_lower: bool = True,
                     first_diff: int = 0, wait: bool = True, kind: str = "sweep") -> float:
    """Seconds a sweep should take on this machine (method 'exact' or 'atp'), corrected by what
    earlier runs of this model here took (learn; `kind` "dataset" for a sweep that is part of a
    dataset run, whose pairs share batches).

    The first call on a free model times two small forwards; while another run holds the
    model it guesses from the model's size instead. wait=False never blocks: an uncalibrated
    model is calibrated on a background thread and meanwhile the guess is used. Later calls
    are arithmetic on a cached plan.
    """
    if not wait and model.hf not in _CALIBRATIONS:
        calibrate_soon(model)
        cal = Calibration(token_layer_flops(model.components) /
                          _GUESS_FLOPS.get(torch.device(model.device).type, 2e10), False)
    else:
        cal = calibrate(model, wait=False)
    return correction(model, kind) * _raw_seconds(model, n_tokens, sweep, cal, method=method,
                                            batch_size=batch_size, skip_lower=skip_lower,
                                            first_diff=first_diff, wait=wait)


def _raw_seconds(model: LoadedModel, n_tokens: int, sweep: str, cal: Calibration, *,
                 method: str = "exact", batch_size: int | None = None, skip_lower: bool = True,
                 first_diff: int = 0, wait: bool = True) -> float:
    cm, L = HookBackend(model).cost, model.components.n_layers
    if method == "atp":
        # one forward of both prompts with gradients kept, then a backward (~2 forwards)
        return 3 * cal.unit_s * forward_cost(2, n_tokens, 0, L, cm, False)
    get_sweep(sweep)
    first_diff = max(0, min(int(first_diff), n_tokens))
    key = (n_tokens, sweep, batch_size or batch_rows(model, n_tokens), bool(skip_lower), first_diff)
    memo = _ESTIMATES.setdefault(model.hf, {})
    if key in memo:
        forwards, work = memo[key]
    else:
        forwards, work = forward_work(model, n_tokens, sweep, batch_size, skip_lower, first_diff, wait)
        if cal.measured and HookBackend(model).support(check=False) is not None:   # no guesses
            memo[key] = (forwards, work)
    return cal.unit_s * work
