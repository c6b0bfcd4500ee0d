"""Path patching equals an independent one-frozen-run-per-path reference, on every family."""
from __future__ import annotations

import numpy as np
import pytest

import patchcore as pc
from patchcore.errors import SweepError
from patchcore.interventions import run_patch
from patchcore.paths import parse_receivers, run_path
from reference_paths import path_metric
from test_interventions import PAIR, ids_of
from tiny import FAMILIES, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread_module")

TOL = 1e-4
SENDERS = "head:0.1,mlp:0,head:1.3@6"
# receiver text -> the reference's receivers (k and v of query head 3 are key/value head 1
# on the tiny GQA models: 4 query heads share 2 key/value heads)
RECEIVERS = {
    "logits": "logits",
    "head:2.1:q": [("q", 2, 1)],
    "head:2.3:k,head:2.0:v": "kv",
    "head:1.2": "qkv",
    "mlp:2": [("mlp_in", 2, None)],
}


def _reference_receivers(key, m):
    want = RECEIVERS[key]
    group = m.components.n_heads // m.components.n_kv_heads
    if want == "kv":
        return [("k", 2, 3 // group), ("v", 2, 0)]
    if want == "qkv":
        return [("q", 1, 2), ("k", 1, 2 // group), ("v", 1, 2 // group)]
    return want


def _reference(m, senders, receivers, direction):
    clean, corrupted, a, w = ids_of(m.tokenizer, PAIR)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return path_metric(m.hf, base, source, a, w, senders, receivers)


SENDER_TUPLES = [("head", 0, 1, None), ("mlp", 0, None, None), ("head", 1, 3, 6)]


@pytest.mark.parametrize("family", FAMILIES)
def test_paths_equal_the_reference(family):
    m = tiny_model(family)
    for receivers in RECEIVERS:
        for direction in ("denoise", "noise"):
            got = run_path(m, PAIR, SENDERS, receivers, direction)
            want = _reference(m, SENDER_TUPLES, _reference_receivers(receivers, m), direction)
            assert abs(got.value - want) <= TOL, (family, receivers, direction, got.value, want)
            assert got.receivers and got.sites == SENDERS.split(",")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
def test_sender_sweeps_equal_the_reference(family):
    m = tiny_model(family)
    c = m.components
    got = run_path(m, PAIR, "head:*", "logits", "denoise", batch_size=5)
    assert got.values.shape == (c.n_layers, c.n_heads) and got.path["receivers"] == ["logits"]
    for layer in range(c.n_layers):
        for head in range(c.n_heads):
            want = _reference(m, [("head", layer, head, None)], "logits", "denoise")
            assert abs(got.values[layer, head] - want) <= TOL
    mlps = run_path(m, PAIR, "mlp:*", "head:2.1:q", "noise")
    assert mlps.values.shape == (c.n_layers,) and mlps.sweep == "mlp"
    for layer in range(c.n_layers):
        want = _reference(m, [("mlp", layer, None, None)], [("q", 2, 1)], "noise")
        assert abs(mlps.values[layer] - want) <= TOL
    one = run_path(m, PAIR, "head:1.*", "logits", "denoise")
    assert np.isnan(one.values[0]).all() and np.allclose(one.values[1], got.values[1], atol=1e-5)


def test_identities():
    """Receivers 'all' = the senders patched together; no senders = the base run."""
    m = tiny_model("llama")
    for direction in ("denoise", "noise"):
        together = run_patch(m, PAIR, SENDERS, direction).value
        assert abs(run_path(m, PAIR, SENDERS, "all", direction).value - together) <= 1e-5
        none = run_path(m, PAIR, "", "head:2.1:q", direction)
        base = none.corrupted_metric if direction == "denoise" else none.clean_metric
        assert abs(none.value - base) <= 1e-5
    # and the direct path is not the whole effect: freezing matters
    direct = run_path(m, PAIR, SENDERS, "logits", "denoise").value
    assert abs(direct - run_patch(m, PAIR, SENDERS, "denoise").value) > 1e-3


def test_a_dataset_of_pairs():
    m = tiny_model("gpt2")
    pairs = [PAIR, pc.PromptPair(PAIR.corrupted, PAIR.clean, PAIR.wrong, PAIR.answer)]
    got = run_path(m, pairs, "head:*", "logits", "noise")
    assert got.n_pairs == 2 and got.per_pair.shape == (2,) + got.values.shape
    for i, pair in enumerate(pairs):
        single = run_path(m, pair, "head:*", "logits", "noise").values
        np.testing.assert_allclose(got.per_pair[i], single, atol=1e-5)


@pytest.mark.parametrize("text, word", [("head:2.1:x", "q, k and v"), ("resid:1", "not a receiver"),
                                        ("", "No receivers")])
def test_bad_receivers(text, word):
    with pytest.raises(SweepError, match=word):
        parse_receivers(text, tiny_model("llama").components)


def test_senders_must_be_heads_or_mlps():
    with pytest.raises(SweepError, match="senders are heads or MLPs"):
        run_path(tiny_model("llama"), PAIR, "resid:1@2", "logits")
