"""The embedded SmolLM2-135M model on the default IOI pair (the numbers DESIGN.md measured)."""
from __future__ import annotations

import numpy as np
import pytest

from patchcore import DEFAULT_PAIR, run_baseline, run_sweep
from reference import Reference

# One intra-op thread: on a shared 2-core machine torch's 2-thread pool spin-waits and runs
# this model several times slower than one thread (measured: a 16-token forward 0.8 s vs 6.7 s).
pytestmark = [pytest.mark.embedded, pytest.mark.usefixtures("single_thread")]

TOKENS = ["After", " John", " and", " Mary", " went", " to", " the", " store", ",", " Mary",
          " gave", " a", " bottle", " of", " milk", " to"]


@pytest.fixture(scope="module")
def layer_pos(embedded):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the function-scoped single_thread is not active yet
    try:
        return run_sweep(embedded, DEFAULT_PAIR, "layer_pos", "denoise", "logit_diff")
    finally:
        torch.set_num_threads(before)


def test_embedded_model_facts(embedded):
    c = embedded.components
    assert (c.model_type, c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_model) == \
        ("llama", 30, 9, 3, 64, 576)
    assert str(embedded.dtype) == "torch.float32"
    assert str(embedded.device) == "cpu"


def test_baseline_clean_positive_corrupted_negative(embedded):
    base = run_baseline(embedded, DEFAULT_PAIR)
    assert base.clean_metric > 0 > base.corrupted_metric
    assert base.clean_metric == pytest.approx(5.14, abs=0.02)
    assert base.corrupted_metric == pytest.approx(-3.83, abs=0.02)
    assert base.prepared.clean_tokens == TOKENS
    assert base.prepared.diff_positions == [9]
    # top-5 next tokens with probabilities, most likely first
    for top in (base.clean_top, base.corrupted_top):
        assert len(top) == 5
        probs = [p for _, p in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert base.clean_top[0][0] == " John"  # clean: Mary gave ... to John
    assert base.corrupted_top[0][0] == " Mary"


def test_layer_sweep_is_one_at_every_layer(embedded):
    result = run_sweep(embedded, DEFAULT_PAIR, "layer", "denoise")
    assert result.axes == ("layer",)
    assert result.values.shape == (30,)
    np.testing.assert_allclose(result.normalized, 1.0, atol=1e-3)


def test_layer_pos_shape_and_tokens(layer_pos):
    assert layer_pos.axes == ("layer", "position")
    assert layer_pos.values.shape == (30, 16)
    assert layer_pos.tokens == TOKENS
    assert layer_pos.clean_metric == pytest.approx(5.14, abs=0.02)
    assert layer_pos.corrupted_metric == pytest.approx(-3.83, abs=0.02)
    # the prompts agree before ' Mary' (position 9): those 30 x 9 patches need no forward pass,
    # and equal the unpatched corrupted run
    assert layer_pos.forward_rows == 30 * (16 - 9) + 2
    np.testing.assert_allclose(layer_pos.values[:, :9], layer_pos.corrupted_metric, atol=1e-4)
    frame = layer_pos.to_frame()
    assert len(frame) == 480 and list(frame["token"][:16]) == TOKENS


def test_layer_pos_structure(layer_pos):
    norm = layer_pos.normalized
    # positions before the one that differs (9) are identical in both runs: patching them is a no-op
    np.testing.assert_allclose(norm[:, :9], 0.0, atol=1e-4)
    # the last block's output at the last position decides the logits: fully restored
    assert norm[-1, -1] == pytest.approx(1.0, abs=1e-4)
    # early layers carry the name at its own position; late layers carry it at the last position
    assert norm[0, 9] > 0.8 and norm[0, 15] < 0.2
    assert norm[-1, 9] < 0.2 and norm[-1, 15] > 0.8


def test_layer_pos_cells_equal_reference(embedded, layer_pos):
    cells = [(0, 9, None), (8, 9, None), (14, 9, None), (14, 15, None), (22, 15, None), (29, 12, None)]
    ref = Reference(embedded.hf, embedded.tokenizer, DEFAULT_PAIR, "layer_pos", "denoise", cells=cells)
    clean, corrupted, values = ref.metric("logit_diff")
    assert clean == pytest.approx(layer_pos.clean_metric, abs=1e-4)
    assert corrupted == pytest.approx(layer_pos.corrupted_metric, abs=1e-4)
    got = np.array([layer_pos.values[layer, pos] for layer, pos, _ in cells])
    np.testing.assert_allclose(got, values, atol=1e-4)
