"""Dataset runs on tiny models: per-pair values, role alignment, means/intervals, both directions,
quadrants and the summary's claims."""
import json

import numpy as np
import pytest

from patchcore.dataset_run import plan_dataset, run_both, run_dataset
from patchcore.results import BothResult, DatasetResult, result_from_json
from patchcore.dataset_summary import dataset_summary, quadrant_summary, quadrants
from patchcore.ioi import generate_ioi
from patchcore.uploads import parse_upload
from patchcore.engine import run_sweep
from patchcore.errors import Cancelled
from patchcore.prompts import PromptPair
from patchcore.results import PatchResult

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model():
    from tiny import tiny_model
    return tiny_model("llama", seed=1)


@pytest.fixture(scope="module")
def ioi(model):
    return generate_ioi(model.tokenizer, 4, seed=0)


@pytest.fixture(scope="module")
def both(model, ioi):
    return run_both(model, ioi, "layer_pos", n_boot=500, seed=0)


def test_role_aligned_values_equal_per_pair_sweeps(model, ioi, both):
    r = both.denoise
    assert r.aligned_by == "role" and r.tokens == ["start", "S1", "and", "IO", "middle", "S2", "after S2", "END"]
    assert r.per_pair.shape == (4, model.components.n_layers, 8) and r.n_pairs == 4
    assert len({it.n_tokens for it in ioi.items}) > 1  # different token lengths, matched by role
    for k, it in enumerate(ioi.items):
        single = run_sweep(model, it.pair, "layer_pos", "denoise")
        roles = np.array(it.roles)
        for j, role in enumerate(r.tokens):
            expect = single.values[:, roles == role].mean(axis=1)
            np.testing.assert_allclose(r.per_pair[k][:, j], expect, atol=1e-5)
        assert r.pair_clean[k] == pytest.approx(single.clean_metric, abs=1e-5)
        assert r.pair_corrupted[k] == pytest.approx(single.corrupted_metric, abs=1e-5)
    np.testing.assert_allclose(r.values, r.per_pair.mean(axis=0))
    assert r.clean_metric == pytest.approx(r.pair_clean.mean())
    assert (r.ci_low <= r.values + 1e-12).all() and (r.values <= r.ci_high + 1e-12).all()
    ok = np.isfinite(r.normalized)
    assert (r.normalized_low[ok] <= r.normalized[ok] + 1e-12).all()
    assert (r.normalized[ok] <= r.normalized_high[ok] + 1e-12).all()
    # the swap corruption changes S2 only: only the S2 role differs
    assert [r.tokens[j] for j in r.diff_positions] == ["S2"]


def test_noise_direction_and_json_round_trip(model, ioi, both):
    alone = run_dataset(model, ioi, "layer_pos", "noise", n_boot=500, seed=0)
    np.testing.assert_allclose(alone.values, both.noise.values, atol=1e-6)
    np.testing.assert_allclose(alone.ci_low, both.noise.ci_low, atol=1e-6)
    d = json.loads(json.dumps(both.to_json()))
    assert d["kind"] == "both"
    for half in ("denoise", "noise"):
        j = d[half]
        shape = np.array(j["values"]).shape
        assert j["n_pairs"] == 4
        assert np.array(j["ci_low"], dtype=float).shape == shape == np.array(j["ci_high"], dtype=float).shape
        assert np.array(j["per_pair"], dtype=float).shape == (4,) + shape
    back = result_from_json(d)
    assert isinstance(back, BothResult)
    np.testing.assert_allclose(back.noise.normalized_high, both.noise.normalized_high)
    assert back.denoise.pairs[0]["roles"] == ioi.items[0].roles
    single = result_from_json(run_sweep(model, ioi.pairs[0], "layer").to_json())
    assert type(single) is PatchResult


def test_uploaded_pairs_position_labels_and_length_groups(model):
    text = "\n".join(["clean,corrupted,answer,wrong",
                      '"The cat sat on the","The dog sat on the"," mat"," rug"',
                      '"The cat sat on a","The dog sat on a"," mat"," rug"',
                      '"A big cat sat on the","A big dog sat on the"," mat"," rug"'])
    ds = parse_upload(text, "p.csv", model.tokenizer)
    r = run_dataset(model, ds, "layer_pos", n_boot=200)
    assert r.n_pairs == 2 and r.aligned_by == "position"
    assert r.tokens == ["The", " cat", " sat", " on", "(varies)"]
    assert any("equal token length" in n for n in r.notes)
    assert r.rejected == []
    # a sweep without positions uses every pair, whatever its length
    h = run_dataset(model, ds, "head", n_boot=200)
    assert h.n_pairs == 3 and h.aligned_by == "none" and h.values.shape == (3, 4)
    p = plan_dataset(model, ds, "layer_pos", directions=2)
    assert p["pairs"] == 2 and p["patches"] == 2 * 2 * 3 * 5


def test_cancel_stops_a_dataset_run(model, ioi):
    calls = []

    def progress(done, total):
        calls.append((done, total))
    with pytest.raises(Cancelled):
        run_dataset(model, ioi, "layer_pos", progress=progress, cancel=lambda: len(calls) > 2, batch_size=8)
    assert calls[0][0] == 0 and calls[-1][1] == sum(3 * it.n_tokens for it in ioi.items)


def test_quadrants_match_the_effects(both):
    q = quadrants(both, 0.5)
    en, _, _ = both.denoise.effect
    ne, _, _ = both.noise.effect
    assert len(q) == en.size
    for row in q.itertuples():
        e, n = en[row.layer, row.position], ne[row.layer, row.position]
        want = {(True, True): "needed and enough", (False, True): "needed but not enough",
                (True, False): "enough but not needed", (False, False): "neither"}[(e >= 0.5, n >= 0.5)]
        assert row.quadrant == want
    text = " ".join(quadrant_summary(both))
    assert "Needed and enough" in text or "Neither" in text


# ----------------------------------------------------------- summary claims on made-up numbers
def _made_up(direction, score, low, high, n_pairs=30):
    """A one-layer DatasetResult whose normalised scores and intervals are given (clean 1, corrupted 0)."""
    score, low, high = (np.array([v], dtype=float) for v in (score, low, high))
    rng = np.random.default_rng(0)
    return DatasetResult(
        model="m", sweep="layer_pos", direction=direction, metric="logit_diff", axes=("layer", "position"),
        values=score, tokens=["A", "B", "C", "D"][:score.shape[1]], clean_metric=1.0, corrupted_metric=0.0,
        pair=PromptPair("a", "b", " x", " y"), n_layers=1, n_heads=1, n_pairs=n_pairs,
        per_pair=np.repeat(score, n_pairs, axis=0), pair_clean=1 + rng.normal(0, .01, n_pairs),
        pair_corrupted=rng.normal(0, .01, n_pairs), ci_low=low, ci_high=high, normalized_low=low,
        normalized_high=high, aligned_by="role", dataset={"source": "upload"})


def test_summary_claims_only_what_intervals_support():
    r = _made_up("denoise", [0.9, 0.35, 0.05, -0.6], [0.75, -0.1, -0.2, -0.9], [1.0, 0.8, 0.3, -0.3])
    lines = dataset_summary(r)
    text = "\n".join(lines)
    top = next(line for line in lines if line.startswith("Largest average effects"))
    assert "A at layer 0: 90% (95% interval 75% to 100%) – carries the effect" in top
    assert "B at layer 0: 35% (95% interval -10% to 80%) – uncertain: the interval includes zero" in top
    assert "Role A carries the effect in layer 0" in text
    assert "Role B carries" not in text
    assert "1 cell looks sizeable on average but the interval includes zero" in text and "B at layer 0" in text
    assert "Reliably pushes towards the wrong answer: D at layer 0" in text
    # nothing reliable at all: the summary says so and claims no carrier
    weak = dataset_summary(_made_up("denoise", [0.3, 0.2], [-0.2, -0.1], [0.7, 0.5]))
    joined = "\n".join(weak)
    assert "No cell's interval is clearly above zero" in joined
    assert "carries the effect in" not in joined


def test_noising_effect_is_one_minus_score_and_quadrants_by_hand():
    # cells: A needed+enough, B needed only, C enough only (backup), D neither
    den = _made_up("denoise", [0.9, 0.1, 0.8, 0.05], [0.8, 0.0, 0.7, -0.05], [1.0, 0.2, 0.9, 0.15])
    noi = _made_up("noise", [0.1, 0.2, 0.9, 0.95], [0.0, 0.1, 0.8, 0.4], [0.2, 0.3, 1.0, 1.1])
    e, lo, hi = noi.effect
    np.testing.assert_allclose(e, [[0.9, 0.8, 0.1, 0.05]])
    np.testing.assert_allclose(lo, [[0.8, 0.7, 0.0, -0.1]])
    q = quadrants(BothResult(den, noi), 0.5)
    assert list(q["quadrant"]) == ["needed and enough", "needed but not enough", "enough but not needed",
                                   "neither"]
    # D's noising interval (-10% to 60%) crosses the 50% line: placed, but not sure
    assert list(q["sure"]) == [True, True, True, False]
    assert "backup or redundant" in " ".join(quadrant_summary(BothResult(den, noi)))
    assert "Uncertain" in q["words"][3] and "Uncertain" not in q["words"][0]


def test_unchanged_prefix_is_skipped_exactly(model, ioi, both):
    # name swap: the prompts agree before S2, so those patches are not run (and equal the baseline)
    assert both.denoise.dataset["patches_skipped"] > 0
    it = ioi.items[0]
    s2 = it.roles.index("S2")
    expected = 2 * sum(3 * it2.roles.index("S2") for it2 in ioi.items)  # both directions, 3 layers
    assert both.denoise.dataset["patches_skipped"] == expected
    single = run_sweep(model, it.pair, "layer_pos", "noise")
    np.testing.assert_allclose(single.values[:, :s2], single.clean_metric, atol=1e-4)
