"""The time estimate shown before a run: positive, cached, and growing with the work."""
from __future__ import annotations

import math
import threading
import time

import pytest

import patchcore as pc
from patchcore.engine import batch_rows
from patchcore.estimate import calibrate, estimate_seconds, forward_work
from patchcore.backends.hooks import HookBackend
from patchcore.planner import forward_cost

from tiny import tiny_model


pytestmark = pytest.mark.usefixtures("single_thread_module")


def test_estimate_positive_and_scales_with_patches(tiny):
    m = tiny("llama")
    est = {(s, t): estimate_seconds(m, t, s) for s in ("layer", "layer_pos", "head", "head_pos") for t in (8, 16, 32)}
    assert all(v > 0 and math.isfinite(v) for v in est.values())
    for s in ("layer_pos", "head_pos"):          # patches double with the tokens
        assert est[(s, 8)] < est[(s, 16)] < est[(s, 32)]
    for t in (8, 16, 32):                        # more patches than the whole-layer / whole-head sweep
        assert est[("layer_pos", t)] > est[("layer", t)]
        assert est[("head_pos", t)] > est[("head", t)]
    assert estimate_seconds(m, 16, "layer_pos", method="atp") < est[("layer_pos", 16)]


def test_calibration_is_cached(tiny):
    m = tiny("gpt2")
    c1 = calibrate(m)
    assert calibrate(m) is c1
    assert c1.unit_s > 0 and c1.measured


@pytest.mark.parametrize("sweep", ["layer_pos", "head"])
def test_forward_work_of_the_plain_path(tiny, sweep):
    """Without shortcuts every patch is a full row: the count follows from the cost model."""
    m = tiny("llama")
    calibrate(m)             # the calibrated cost model, whichever test ran first
    c = m.components
    cm = HookBackend(m).cost
    T = 16
    n = math.prod(pc.SWEEPS[sweep].shape(c.n_layers, T, c.n_heads))
    bs = batch_rows(m, T)
    forwards, work = forward_work(m, T, sweep, skip_lower=False)
    assert forwards == 1 + math.ceil(n / bs)
    full = lambda rows: forward_cost(rows, T, 0, c.n_layers, cm, False)  # noqa: E731
    assert work == pytest.approx(full(2) + sum(full(min(bs, n - i)) for i in range(0, n, bs)))
    fast_forwards, fast_work = forward_work(m, T, sweep)
    # a tiny model is all fixed costs: the plan is one forward, plus the base prompt's own run
    assert fast_work <= work + full(1)


def test_estimate_does_not_wait_for_a_busy_model():
    """The dashboard asks for an estimate while another tab's sweep holds the model."""
    m = tiny_model("qwen2", seed=3)          # a fresh model: not calibrated yet
    held, release = threading.Event(), threading.Event()

    def hold():
        with m.locked():
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(10)
        t0 = time.perf_counter()
        guess = estimate_seconds(m, 16, "layer_pos")
        assert time.perf_counter() - t0 < 10 and guess > 0
        assert calibrate(m, wait=False).measured is False
    finally:
        release.set()
        t.join()
    assert calibrate(m).measured is True      # free again: measured and cached
    assert estimate_seconds(m, 16, "layer_pos") > 0


@pytest.mark.embedded
def test_embedded_estimate_grows_with_the_work(embedded):
    """On a real model the work, not fixed costs, dominates: twice the tokens, well over
    twice the patches' work (more patches, each over more positions)."""
    e16, e32 = estimate_seconds(embedded, 16, "layer_pos"), estimate_seconds(embedded, 32, "layer_pos")
    assert 0 < e16 and e32 > 2 * e16
    assert estimate_seconds(embedded, 16, "head_pos") > 3 * estimate_seconds(embedded, 16, "head")
    # the cached prefix and skipped blocks: well under half the plain path's cost
    assert forward_work(embedded, 16, "layer_pos")[1] < 0.5 * forward_work(embedded, 16, "layer_pos", skip_lower=False)[1]
