"""Estimates learn from runs on this machine and never make a page wait (issue 16, point 4)."""
from __future__ import annotations

import time

import pytest

from patchcore import estimate
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
    estimate._CORRECTIONS.clear()                    # a new process reads what was learnt
    assert estimate.estimate_seconds(m, 16, "layer_pos") == pytest.approx(after, rel=1e-6)
    estimate.learn(m, after, after)                  # a run that took what was said: no change
    assert estimate.estimate_seconds(m, 16, "layer_pos") == pytest.approx(after, rel=1e-6)
