"""Fault injection and resource checks for the engine (issue: hardening)."""
import gc
import json
import math

import numpy as np
import psutil
import pytest
import torch

from patchcore import Cancelled, DEFAULT_PAIR, PromptPair, SweepError, run_sweep
from patchcore.charts import heatmap
from patchcore.backends.hooks import HookBackend
from patchcore.summary import summarize
from tiny import build_hf, embedded_tokenizer, tiny_model

SHORT = PromptPair("When Anna met Tom, Tom said hi to", "When Anna met Tom, Anna said hi to", " Anna", " Tom")


class FlakyMemoryBackend(HookBackend):
    """The real hook backend, except batches above `limit` rows raise CUDA-style OOM.

    Fault injection at the device boundary: the model itself runs for real.
    """

    def __init__(self, model, limit):
        super().__init__(model)
        self.limit, self.sizes = limit, []

    def run(self, batch):
        self.sizes.append(batch.n)
        if batch.n > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().run(batch)


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def test_out_of_memory_retries_with_smaller_batches_and_gives_the_same_numbers():
    model = tiny_model("llama")
    expected = run_sweep(model, SHORT, "layer_pos", batch_size=64)
    backend = FlakyMemoryBackend(model, limit=5)
    got = run_sweep(model, SHORT, "layer_pos", batch_size=64, backend=backend)
    assert backend.sizes[0] > 5  # first try: the whole sweep in one batch
    assert backend.sizes[-1] <= 5  # then halved until it fits
    assert got.batch_size <= 5
    np.testing.assert_allclose(got.values, expected.values, atol=1e-5)


def test_out_of_memory_at_one_row_reports_clearly():
    model = tiny_model("gpt2")
    with pytest.raises(SweepError, match="Out of memory even with one patch"):
        run_sweep(model, SHORT, "layer", batch_size=4, backend=FlakyMemoryBackend(model, limit=0))


def test_cancel_stops_between_batches_and_leaves_the_model_usable():
    model = tiny_model("qwen2")
    seen = []
    with pytest.raises(Cancelled):
        run_sweep(model, SHORT, "head_pos", batch_size=3,
                  progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 3)
    assert 0 < seen[-1] < model.components.n_layers * 9 * model.components.n_heads
    assert model.lock.acquire(blocking=False)  # released after the cancel
    model.lock.release()
    r = run_sweep(model, SHORT, "layer")
    assert np.isfinite(r.values).all()


def test_patch_budget_refuses_and_offers_a_coarser_sweep():
    model = tiny_model("llama")
    with pytest.raises(SweepError, match="coarser sweep") as exc:
        run_sweep(model, DEFAULT_PAIR, "head_pos", max_patches=50)
    assert exc.value.field == "sweep"


def test_memory_does_not_grow_over_50_runs():
    model = tiny_model("llama")
    for _ in range(5):  # warm-up: allocator pools, lazily built kernels
        run_sweep(model, SHORT, "layer_pos")
    before = rss_mb()
    for _ in range(50):
        run_sweep(model, SHORT, "layer_pos")
    growth = rss_mb() - before
    assert growth < 40, f"RSS grew by {growth:.1f} MB over 50 runs"


def test_unloading_a_model_frees_its_memory():
    """After unload() nothing holds the weights: the module and its tensors are collected.
    (Checked with weak references, not the process's RSS: after hundreds of tests the
    allocator keeps freed pages, so RSS says little about what is still referenced.)"""
    import weakref
    hf = build_hf("llama")
    big = torch.nn.Parameter(torch.randn(8_000_000 // 576, 576))
    hf.register_parameter("ballast", big)
    gone_param, gone_module = weakref.ref(big), weakref.ref(hf)
    del big
    from patchcore.models import wrap_model
    model = wrap_model(hf, embedded_tokenizer(), label="ballast")
    del hf
    run_sweep(model, SHORT, "layer")         # used once: caches and hooks must let go too
    model.unload()
    gc.collect()
    assert gone_module() is None and gone_param() is None


def test_nan_results_are_reported_not_crashed():
    hf = build_hf("llama")
    tok = embedded_tokenizer()
    mary = tok(" Mary", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():  # the clean prompt's ' Mary' embedding overflows to inf -> NaN downstream
        hf.get_input_embeddings().weight[mary] = float("inf")
    from patchcore.models import wrap_model
    model = wrap_model(hf, tok, label="nan-model")
    r = run_sweep(model, DEFAULT_PAIR, "layer")
    assert any("NaN" in w for w in r.warnings)
    assert any("undefined" in w for w in r.warnings)
    d = json.loads(json.dumps(r.to_json()))  # strict JSON: NaN became null
    assert None in d["normalized"]
    assert summarize(r)  # still says something useful
    heatmap(r).to_dict()


def test_near_zero_gap_warns_and_keeps_raw_values():
    model = tiny_model("llama")
    # clean and corrupted differ only in a token that cannot matter much: a tiny gap
    pair = PromptPair("a b c d", "a b c e", " x", " y")
    r = run_sweep(model, pair, "layer")
    gap = abs(r.clean_metric - r.corrupted_metric)
    if gap < 1e-6:
        assert any("undefined" in w for w in r.warnings)
    else:
        assert math.isfinite(r.values.sum())
    same = PromptPair("a b c d", "a b c d", " x", " y")
    with pytest.raises(Exception, match="are the same"):
        run_sweep(model, same, "layer")
