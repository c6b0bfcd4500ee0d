"""Bootstrap statistics against hand-computed examples."""
import numpy as np
import pytest

from patchcore.stats import (bootstrap_counts, describe_interval, interval_class, mean_ci, normalized_ci,
                             per_pair_normalized)


def test_mean_ci_hand_computed_binomial():
    # values [0, 0, 0, 4]: a resample's mean is k, the number of draws of the 4, k ~ Binomial(4, 1/4):
    # P(0)=81/256=.316, P(1)=.422, P(2)=.211 (cum .949), P(3)=.047 (cum .996), P(4)=.004.
    # So the 2.5th percentile is 0 and the 97.5th is 3; the mean is 1.
    mean, lo, hi = mean_ci(np.array([0.0, 0.0, 0.0, 4.0]), n_boot=20000, seed=1)
    assert mean == pytest.approx(1.0)
    assert lo == pytest.approx(0.0)
    assert hi == pytest.approx(3.0)


def test_mean_ci_two_pairs_per_cell_and_shape():
    # two pairs: resample means are min, mid, max with probabilities 1/4, 1/2, 1/4
    x = np.array([[[0.0, 10.0, 5.0]],
                  [[1.0, 20.0, 5.0]]])           # (N=2, 1, 3)
    mean, lo, hi = mean_ci(x, n_boot=4000, seed=0)
    assert mean.shape == lo.shape == hi.shape == (1, 3)
    np.testing.assert_allclose(mean, [[0.5, 15.0, 5.0]])
    np.testing.assert_allclose(lo, [[0.0, 10.0, 5.0]])
    np.testing.assert_allclose(hi, [[1.0, 20.0, 5.0]])


def test_mean_ci_ignores_nan_pairs_per_cell():
    x = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 2.0]])
    mean, lo, hi = mean_ci(x, n_boot=2000, seed=0)
    np.testing.assert_allclose(mean, [3.0, 2.0])
    assert lo[1] == pytest.approx(2.0) and hi[1] == pytest.approx(2.0)
    assert lo[0] >= 1.0 and hi[0] <= 5.0 and lo[0] < 3.0 < hi[0]
    allnan = mean_ci(np.array([[np.nan], [np.nan]]), n_boot=200)[0]
    assert np.isnan(allnan).all()


def test_mean_ci_seed_repeatable_and_width_matches_theory():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 40))
    a = mean_ci(x, n_boot=1000, seed=3)
    b = mean_ci(x, n_boot=1000, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert (a[1] <= a[0]).all() and (a[0] <= a[2]).all()
    # 95% interval of a mean of 50 N(0,1) values: about 2 * 1.96 / sqrt(50) = 0.55 wide
    assert np.mean(a[2] - a[1]) == pytest.approx(2 * 1.96 / np.sqrt(50), rel=0.15)


def test_one_pair_gives_a_point_interval():
    mean, lo, hi = mean_ci(np.array([[2.5, -1.0]]))
    np.testing.assert_allclose([mean, lo, hi], [[2.5, -1.0]] * 3)


def test_normalized_ci_hand_computed_ratio():
    # pairs: patched 1 and 3, clean 2 and 4, corrupted 0 and 0.
    # point: (2 - 0) / (3 - 0) = 2/3. Resamples (both pair 1, one each, both pair 2):
    # 1/2, 2/3, 3/4 with probabilities 1/4, 1/2, 1/4 -> interval [1/2, 3/4].
    point, lo, hi = normalized_ci(np.array([[1.0], [3.0]]), [2.0, 4.0], [0.0, 0.0], n_boot=4000, seed=0)
    assert point[0] == pytest.approx(2 / 3)
    assert lo[0] == pytest.approx(0.5)
    assert hi[0] == pytest.approx(0.75)


def test_normalized_ci_zero_gap_is_nan():
    point, lo, hi = normalized_ci(np.array([[1.0], [2.0]]), [1.0, 1.0], [1.0, 1.0], n_boot=200)
    assert np.isnan(point).all() and np.isnan(lo).all() and np.isnan(hi).all()


def test_per_pair_normalized():
    x = np.array([[1.0, 2.0], [0.0, 4.0]])
    got = per_pair_normalized(x, [2.0, 4.0], [0.0, 0.0])
    np.testing.assert_allclose(got, [[0.5, 1.0], [0.0, 1.0]])
    assert np.isnan(per_pair_normalized(x, [1.0, 1.0], [1.0, 0.0])[0]).all()


def test_bootstrap_counts_rows_sum_to_n():
    c = bootstrap_counts(7, 300, seed=2)
    assert c.shape == (300, 7)
    assert (c.sum(axis=1) == 7).all()


def test_interval_class_and_words():
    cls = interval_class([0.1, -0.2, -0.5, np.nan], [0.4, 0.3, -0.1, 1.0])
    assert list(cls) == ["above", "uncertain", "below", "unknown"]
    assert describe_interval(0.62, 0.51, 0.73) == "62% (95% interval 51% to 73%)"
    assert describe_interval(1.5, 1.0, 2.0, pct=False) == "1.5 (95% interval 1 to 2)"
