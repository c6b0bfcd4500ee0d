"""The batched engine equals a naive one-forward-per-patch reference, on every family.

Every sweep × both directions × every tiny family, with skip_lower on and off
and an odd batch size (7) so batches cross layer boundaries; all three metrics
on one family; and proof that the comparison has teeth (known-wrong reference
variants differ from the engine).
"""
from __future__ import annotations

import numpy as np
import pytest

from patchcore import PromptPair, run_sweep
from reference import SWEEP_TABLE, Reference
from tiny import FAMILIES

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4

# 9 tokens (longer than the tiny Gemma 2/3 sliding window of 8); differs at positions 1, 3, 6.
PAIR = PromptPair(clean="When Mary and John met, John thanked her",
                  corrupted="When John and Mary met, Mary thanked her",
                  answer=" Mary", wrong=" John")
# 6 tokens, for head_pos (layers × positions × heads forwards in the reference); differs at 0, 2, 4.
SHORT_PAIR = PromptPair(clean="Mary met John; John thanked",
                        corrupted="John met Mary; Mary thanked",
                        answer=" Mary", wrong=" John")
FIRST_DIFF = {PAIR: 1, SHORT_PAIR: 0}
SWEEPS = list(SWEEP_TABLE)
DIRECTIONS = ["denoise", "noise"]
AXES = {"layer": ("layer",), "layer_pos": ("layer", "position"), "attn_pos": ("layer", "position"),
        "mlp_pos": ("layer", "position"), "head": ("layer", "head"),
        "head_pos": ("layer", "position", "head")}


def pair_for(sweep: str) -> PromptPair:
    return SHORT_PAIR if sweep == "head_pos" else PAIR


@pytest.fixture(scope="module")
def references(tiny):
    """Reference per (family, sweep, direction, mistakes), computed once per module."""
    cache = {}

    def get(family, sweep, direction, mistakes=()):
        key = (family, sweep, direction, tuple(mistakes))
        if key not in cache:
            model = tiny(family)
            cache[key] = Reference(model.hf, model.tokenizer, pair_for(sweep), sweep, direction,
                                   mistakes=mistakes)
        return cache[key]
    return get


def assert_matches(result, ref, metric="logit_diff"):
    clean, corrupted, values = ref.metric(metric)
    assert result.values.shape == values.shape
    assert abs(result.clean_metric - clean) <= TOL
    assert abs(result.corrupted_metric - corrupted) <= TOL
    diff = np.abs(result.values - values)
    assert np.isfinite(result.values).all()
    assert diff.max() <= TOL, f"max abs diff {diff.max():.3g} at {np.unravel_index(diff.argmax(), diff.shape)}"


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_equals_reference(tiny, references, family, sweep, direction):
    model = tiny(family)
    ref = references(family, sweep, direction)
    for skip_lower, skip_unchanged in ((True, True), (False, False), (True, False)):
        result = run_sweep(model, pair_for(sweep), sweep, direction, "logit_diff",
                           batch_size=7, skip_lower=skip_lower, skip_unchanged=skip_unchanged)
        assert result.axes == AXES[sweep]
        assert result.n_layers == 3 and result.n_heads == 4
        assert_matches(result, ref)
        assert result.batch_size == 7
        # cells before the first differing token write what is already there: not run (others
        # can be equal too, e.g. GPT-NeoX's parallel layer-0 MLP sees only its own token)
        if skip_unchanged:
            first_diff = FIRST_DIFF[pair_for(sweep)]
            prefix = (result.n_layers * first_diff * (result.n_heads if sweep == "head_pos" else 1)
                      if "position" in result.axes else 0)
            assert result.forward_rows <= result.values.size + 2 - prefix
        else:
            assert result.forward_rows == result.values.size + 2


@pytest.mark.parametrize("metric", ["logit_diff", "prob", "logprob"])
@pytest.mark.parametrize("sweep", ["layer_pos", "head", "head_pos"])
def test_all_metrics_equal_reference(tiny, references, sweep, metric):
    model = tiny("llama")
    for direction in DIRECTIONS:
        result = run_sweep(model, pair_for(sweep), sweep, direction, metric, batch_size=7)
        assert result.metric == metric
        assert_matches(result, references("llama", sweep, direction), metric)
    if metric == "prob":
        assert ((result.values >= 0) & (result.values <= 1)).all()
    if metric == "logprob":
        assert (result.values <= 0).all()


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text"])
def test_default_batch_size_equals_reference(tiny, references, family):
    """Without batch_size the memory budget picks the batch size."""
    result = run_sweep(tiny(family), PAIR, "attn_pos", "denoise")
    assert result.batch_size >= 1
    assert_matches(result, references(family, "attn_pos", "denoise"))


def test_normalized_uses_unpatched_clean_and_corrupted(tiny, references):
    result = run_sweep(tiny("qwen2"), PAIR, "layer_pos", "denoise", batch_size=7)
    clean, corrupted, values = references("qwen2", "layer_pos", "denoise").metric("logit_diff")
    expected = (values - corrupted) / (clean - corrupted)
    assert np.abs(result.normalized - expected).max() <= 1e-3
    # denoising the last block's output at the last position restores the clean logits exactly
    assert abs(result.normalized[-1, -1] - 1.0) <= 1e-4


def test_layer_sweep_is_trivially_one_when_denoising(tiny):
    """DESIGN.md: patching the whole residual stream at layer l restores everything after it."""
    for family in ("gpt2", "llama"):
        result = run_sweep(tiny(family), PAIR, "layer", "denoise", batch_size=2)
        assert np.allclose(result.values, result.clean_metric, atol=1e-4)
        noised = run_sweep(tiny(family), PAIR, "layer", "noise", batch_size=2)
        assert np.allclose(noised.values, noised.corrupted_metric, atol=1e-4)


# -- the comparison has teeth -------------------------------------------------------------

@pytest.mark.parametrize("mistake, family, sweep", [
    # Gemma 3's head_dim (24) differs from hidden/heads (16): a slice that ignores it is wrong
    ("head_slice", "gemma3_text", "head"),
    ("block_input", "llama", "layer_pos"),
    ("swap_direction", "gpt_neox", "mlp_pos"),
    ("next_position", "qwen3", "attn_pos"),
])
def test_wrong_reference_differs_from_engine(tiny, references, mistake, family, sweep):
    model = tiny(family)
    result = run_sweep(model, pair_for(sweep), sweep, "denoise", batch_size=7)
    assert_matches(result, references(family, sweep, "denoise"))
    wrong = references(family, sweep, "denoise", mistakes=(mistake,))
    with pytest.raises(AssertionError):
        assert_matches(result, wrong)
    assert np.abs(result.values - wrong.metric("logit_diff")[2]).max() > 100 * TOL


def test_patches_move_the_metric(tiny, references):
    """The tiny models are sensitive enough that a do-nothing engine would fail the comparison."""
    for family in FAMILIES:
        clean, corrupted, values = references(family, "layer_pos", "denoise").metric("logit_diff")
        assert abs(clean - corrupted) > 10 * TOL
        assert np.ptp(values) > 100 * TOL
        # position 0 is the same token in both prompts: patching it changes nothing (causal model)
        assert np.allclose(values[:, 0], corrupted, atol=TOL)
