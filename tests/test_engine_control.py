"""Progress, cancellation, the per-model lock, and two threads on one model."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from patchcore import Cancelled, PromptPair, run_sweep
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

PAIR = PromptPair("Mary met John; John thanked", "John met Mary; Mary thanked", " Mary", " John")
PAIR2 = PromptPair("When Mary and John met, John thanked her", "When John and Mary met, Mary thanked her",
                   " Mary", " John")


@pytest.fixture
def model():
    """A model of this test's own (other tests never see its lock or hooks)."""
    return tiny_model("llama")


def count_forwards(model):
    calls = []
    handle = model.hf.register_forward_hook(lambda m, a, o: calls.append(o.logits.shape[0]))
    return calls, handle


def no_hooks_left(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.hf.modules())


def lock_free_elsewhere(model, timeout=2.0) -> bool:
    """Can another thread take the model's lock? (An RLock is always free to its owner.)"""
    got = []

    def probe():
        ok = model.lock.acquire(timeout=timeout)
        got.append(ok)
        if ok:
            model.lock.release()
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return got == [True]


def test_progress_between_batches_counts_up_to_total(model):
    forwards, handle = count_forwards(model)
    calls = []

    def progress(done, total):
        calls.append((done, total, len(forwards)))
        assert lock_free_elsewhere(model, timeout=0.5)  # nothing holds the model during a callback
    try:
        r = run_sweep(model, PAIR, "layer_pos", batch_size=7, progress=progress)
    finally:
        handle.remove()
    n = 3 * 6
    assert [c[:2] for c in calls] == [(0, n), (7, n), (14, n), (18, n)]
    assert len(calls) == math.ceil(n / 7) + 1
    # each batch runs between two progress calls; nothing runs after the last one
    assert all(b[2] > a[2] for a, b in zip(calls, calls[1:]))
    assert calls[-1][2] == len(forwards)
    assert r.values.shape == (3, 6)


def test_cancel_raises_and_releases_the_model(model):
    expected = run_sweep(model, PAIR, "head_pos", batch_size=7).values
    progress = []

    def cancel():
        return len(progress) >= 3  # after two patched batches

    with pytest.raises(Cancelled) as info:
        run_sweep(model, PAIR, "head_pos", batch_size=7, cancel=cancel,
                  progress=lambda d, t: progress.append(d))
    assert str(info.value) == "The run was cancelled."
    assert progress == [0, 7, 14]  # stopped between batches, long before 72
    assert lock_free_elsewhere(model)
    assert no_hooks_left(model)
    # the model is usable again, by this thread and by another one, with the same numbers
    np.testing.assert_array_equal(run_sweep(model, PAIR, "head_pos", batch_size=7).values, expected)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", run_sweep(model, PAIR, "head_pos", batch_size=7).values))
    t.start()
    t.join()
    np.testing.assert_array_equal(out["v"], expected)


def test_cancel_before_the_first_batch(model):
    forwards, handle = count_forwards(model)
    try:
        with pytest.raises(Cancelled):
            run_sweep(model, PAIR, "layer_pos", batch_size=7, cancel=lambda: True)
    finally:
        handle.remove()
    assert all(rows <= 2 for rows in forwards)  # at most the unpatched baseline ran
    assert lock_free_elsewhere(model) and no_hooks_left(model)


def test_waiting_for_the_lock_reports_and_can_be_cancelled(model):
    held, release = threading.Event(), threading.Event()

    def holder():
        with model.lock:
            held.set()
            release.wait(10)
    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    waits = []
    try:
        start = time.perf_counter()
        with pytest.raises(Cancelled) as info:
            run_sweep(model, PAIR, "layer", on_wait=lambda: waits.append(1),
                      cancel=lambda: bool(waits) and time.perf_counter() - start > 0.3)
        assert "waiting" in str(info.value)
        assert waits == [1]
    finally:
        release.set()
        t.join()
    assert lock_free_elsewhere(model)


def test_waiting_for_the_lock_then_running(model):
    expected = run_sweep(model, PAIR, "layer_pos", batch_size=7).values
    held, waits = threading.Event(), []

    def holder():
        with model.lock:
            held.set()
            time.sleep(0.5)
    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    r = run_sweep(model, PAIR, "layer_pos", batch_size=7, on_wait=lambda: waits.append(1))
    t.join()
    assert waits == [1]
    np.testing.assert_array_equal(r.values, expected)


def test_two_threads_on_one_model_get_their_own_numbers(model):
    jobs = {
        "a": dict(pair=PAIR2, sweep="layer_pos", direction="denoise", metric="logit_diff", batch_size=5),
        "b": dict(pair=PAIR, sweep="head", direction="noise", metric="prob", batch_size=3),
        "c": dict(pair=PAIR, sweep="attn_pos", direction="denoise", metric="logprob", batch_size=4),
    }

    def run(job, spans=None, key=None):
        marks = []
        r = run_sweep(model, job["pair"], job["sweep"], job["direction"], job["metric"],
                      batch_size=job["batch_size"], progress=lambda d, t: marks.append(time.perf_counter()))
        if spans is not None:
            spans[key] = (marks[0], marks[-1])
        return r

    alone = {k: run(j) for k, j in jobs.items()}
    for _ in range(2):
        results, spans, errors = {}, {}, []
        barrier = threading.Barrier(len(jobs))

        def worker(k):
            try:
                barrier.wait(10)
                results[k] = run(jobs[k], spans, k)
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)
        threads = [threading.Thread(target=worker, args=(k,)) for k in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for k in jobs:
            np.testing.assert_array_equal(results[k].values, alone[k].values)
            assert results[k].clean_metric == alone[k].clean_metric
            assert results[k].corrupted_metric == alone[k].corrupted_metric
        # at least two runs really overlapped in time (else this proves nothing)
        s = sorted(spans.values())
        assert any(a[1] > b[0] for a, b in zip(s, s[1:]))
    assert no_hooks_left(model) and lock_free_elsewhere(model)
    assert torch.get_num_threads() == 1
