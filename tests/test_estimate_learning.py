"""Estimates learn from runs on this machine and never make a page wait (issue 16, point 4)."""
from __future__ import annotations

import time

import pytest

from patchcore import estimate, machine_cache
from tiny import tiny_model


def test_estimate_never_waits_and_calibrates_in_the_background(single_thread):
    m = tiny_model("mistral", seed=5)               # fresh: not calibrated
    t0 = time.perf_counter()
    guess = estimate.estimate_seconds(m, 16, "head", wait=False)
    assert time.perf_counter() - t0 < 1.0 and guess > 0
    for _ in range(100):                             # the background thread calibrates it
        if m.hf in estimate._CALIBRATIONS:
            break
        time.sleep(0.1)
    assert estimate.calibrate(m, wait=False).measured


def test_learning_moves_the_estimate_towards_what_runs_took(single_thread):
    m = tiny_model("qwen3", seed=7)
    before = estimate.estimate_seconds(m, 16, "layer_pos")
    estimate.learn(m, before, 3 * before)
    after = estimate.estimate_seconds(m, 16, "layer_pos")
    assert after == pytest.approx(3 * before, rel=1e-6)
    machine_cache.forget()                           # a new process reads what was learnt
    assert estimate.estimate_seconds(m, 16, "layer_pos") == pytest.approx(after, rel=1e-6)
    estimate.learn(m, after, after)                  # a run that took what was said: no change
    assert estimate.estimate_seconds(m, 16, "layer_pos") == pytest.approx(after, rel=1e-6)


def test_a_new_process_pays_no_extra_forwards(single_thread):
    """Shortcut checks and the calibration are kept per architecture, dtype and device."""
    from patchcore.backends.hooks import HookBackend
    first = tiny_model("gpt2", seed=11)
    sup = HookBackend(first).support()
    cal = estimate.calibrate(first)
    machine_cache.forget()                           # as if patchcore started again
    again = tiny_model("gpt2", seed=12)              # the same architecture, other weights
    calls = []
    hook = again.hf.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        assert HookBackend(again).support() == sup
        assert estimate.calibrate(again).unit_s == cal.unit_s
    finally:
        hook.remove()
    assert calls == []
