"""Pairs of one length share baselines and batches, with the numbers of each pair run alone."""
from __future__ import annotations

import numpy as np
import pytest

import patchcore as pc
from patchcore.backends.hooks import HookBackend
from patchcore.backends.nnsight import NNsightBackend
from patchcore.dataset_run import run_both, run_dataset
from patchcore.engine import run_cells_many
from patchcore.prompts import prepare_pair
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread_module")

PAIRS = [pc.PromptPair("When Mary and John met, John thanked", "When Mary and John met, Mary thanked", " Mary", " John"),
         pc.PromptPair("When Anna and Tom met, Tom thanked", "When Tom and Anna met, Anna thanked", " Anna", " Tom"),
         pc.PromptPair("When Sarah and Paul met, Paul thanked", "When Sarah and Paul met, Sarah thanked", " Sarah", " Paul"),
         pc.PromptPair("After the meeting, Paul thanked", "After the meeting, Tom thanked", " Paul", " Tom")]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
@pytest.mark.parametrize("sweep", ["layer_pos", "head", "head_v"])
def test_shared_batches_equal_each_pair_on_the_plain_path(family, sweep):
    m = tiny_model(family)
    prep = [prepare_pair(m.tokenizer, p) for p in PAIRS[:3]]
    spec = pc.SWEEPS[sweep]
    cells = spec.grid(m.components, prep[0].n_tokens)
    for direction in ("denoise", "noise"):
        many, _, facts = run_cells_many(m, prep, spec, direction, "logit_diff", cells, batch_size=13)
        for i, p in enumerate(prep):
            plain = pc.run_sweep(m, p, sweep, direction, skip_lower=False, skip_unchanged=False,
                                 backend=HookBackend(m, reuse_prefix=False, group=False)).values
            np.testing.assert_allclose(many[i], plain.reshape(-1), atol=1e-4, rtol=0)


def test_a_dataset_runs_one_baseline_forward_per_length():
    m = tiny_model("gpt2")
    calls = []

    class Counting(HookBackend):
        def baseline(self, ids, component):
            calls.append(tuple(ids.shape))
            return super().baseline(ids, component)

    r = run_dataset(m, PAIRS, "head", "denoise", n_boot=200, backend=Counting(m))
    lengths = sorted({prepare_pair(m.tokenizer, p).n_tokens for p in PAIRS})
    assert r.n_pairs == 4 and len(lengths) == 2
    # three pairs of one length, one of another: two baseline forwards, clean and corrupted rows
    assert sorted(calls) == sorted([(6, lengths[1]), (2, lengths[0])]) or \
        sorted(calls) == sorted([(6, lengths[0]), (2, lengths[1])])


def test_a_dataset_through_simulated_ndif_is_two_requests_per_length():
    m = tiny_model("llama")
    local = run_both(m, PAIRS[:3], "head", n_boot=200)
    b = NNsightBackend(m, remote="local")
    got = run_both(m, PAIRS[:3], "head", n_boot=200, backend=b)
    np.testing.assert_allclose(got.denoise.values, local.denoise.values, atol=1e-4)
    np.testing.assert_allclose(got.noise.per_pair, local.noise.per_pair, atol=1e-4)
    assert b.requests == 2 * 2          # per direction: the baselines, then every patch
