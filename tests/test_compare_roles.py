"""A single IOI pair compared with an IOI dataset: positions lined up by role (issue 16)."""
from __future__ import annotations

import numpy as np
import pytest

from patchcore import PromptPair, run_sweep
from patchcore.compare import CompareError, by_role, compare
from patchcore.dataset_run import run_dataset
from patchcore.ioi import generate_ioi, roles_from_tokens
from tiny import tiny_model


@pytest.fixture(scope="module")
def runs():
    m = tiny_model("gpt2", seed=1)
    ds = generate_ioi(m.tokenizer, 4, seed=0)
    single = run_sweep(m, ds.items[0].pair, "layer_pos")
    dataset = run_dataset(m, ds, "layer_pos", "denoise", n_boot=200)
    return m, ds, single, dataset


def test_roles_from_tokens_match_the_generator(runs):
    _, ds, single, _ = runs
    item = ds.items[0]
    assert roles_from_tokens(single.tokens, item.pair.answer, item.pair.wrong) == item.roles


def test_single_pair_lined_up_by_role_equals_that_pair_in_the_dataset(runs):
    _, _, single, dataset = runs
    assert dataset.aligned_by == "role"
    lined = by_role(single, list(dataset.tokens))
    assert lined.tokens == dataset.tokens
    np.testing.assert_allclose(lined.values, dataset.per_pair[0], atol=1e-5)
    comp = compare(single, dataset)
    assert any("matched by role" in n for n in comp.notes)
    assert list(comp.labels) == list(dataset.tokens)
    np.testing.assert_allclose(comp.frame["a"].to_numpy(), lined.normalized.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(comp.frame["b"].to_numpy(), dataset.normalized.reshape(-1), atol=1e-6)
    # either order
    back = compare(dataset, single)
    np.testing.assert_allclose(back.frame["diff"].to_numpy(), -comp.frame["diff"].to_numpy(), atol=1e-6)


def test_a_pair_that_is_not_ioi_is_refused_with_a_reason(runs):
    m, _, _, dataset = runs
    other = run_sweep(m, PromptPair("The Eiffel Tower is in the city of", "The Colosseum is in the city of",
                                    " Paris", " Rome"), "layer_pos")
    with pytest.raises(CompareError, match="by role"):
        compare(other, dataset)
