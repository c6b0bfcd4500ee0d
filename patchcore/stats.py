"""Statistics over pairs: per-cell means and percentile-bootstrap confidence intervals.

All functions take per-pair samples with the pair axis first, ``(N, *cells)``,
and are vectorised: one bootstrap draw is a row of resampling counts, so the
means of all draws are one matrix product ``counts @ samples``. NaN samples
(a pair where a cell could not be computed) are left out of that pair's cell.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95
_MAX_BOOT_CELLS = 4_000_000  # n_boot × cells per chunk (~32 MB of float64)


def bootstrap_counts(n: int, n_boot: int = DEFAULT_N_BOOT, seed: int | None = 0) -> np.ndarray:
    """(n_boot, n) resampling counts: row b says how often each pair is drawn in resample b."""
    if n < 1:
        raise ValueError("need at least one sample")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _flat(samples) -> tuple[np.ndarray, tuple]:
    a = np.asarray(samples, dtype=np.float64)
    if a.ndim == 0 or a.shape[0] == 0:
        raise ValueError("samples need a non-empty pair axis first")
    return a.reshape(a.shape[0], -1), a.shape[1:]


def _weighted_means(counts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Means under each row of counts, ignoring NaN: (B, n) × (n, C) -> (B, C)."""
    ok = np.isfinite(x)
    num = counts @ np.where(ok, x, 0.0)
    den = counts @ ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _percentiles(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        if np.isnan(boot).any():
            lo, hi = np.nanquantile(boot, [alpha, 1.0 - alpha], axis=0)
        else:
            lo, hi = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
    return lo, hi


def mean_ci(samples, n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
            seed: int | None = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell mean over pairs and its percentile-bootstrap interval (low, high).

    With one pair the interval is that one value (nothing to resample).
    """
    x, shape = _flat(samples)
    n, c = x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        mean = np.nanmean(x, axis=0)
    counts = bootstrap_counts(n, n_boot, seed)
    lo, hi = np.empty(c), np.empty(c)
    step = max(1, _MAX_BOOT_CELLS // max(1, n_boot))
    for a in range(0, c, step):
        boot = _weighted_means(counts, x[:, a:a + step])
        lo[a:a + step], hi[a:a + step] = _percentiles(boot, level)
    # the percentile interval of a mean always contains the mean up to rounding; make it exact
    lo = np.fmin(lo, mean)
    hi = np.fmax(hi, mean)
    return mean.reshape(shape), lo.reshape(shape), hi.reshape(shape)


def normalized_ci(samples, clean, corrupted, n_boot: int = DEFAULT_N_BOOT,
                  level: float = DEFAULT_LEVEL, seed: int | None = 0,
                  gap_eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised score of the means and its bootstrap interval.

    score = (mean patched - mean corrupted) / (mean clean - mean corrupted): the
    same formula as one pair, applied to the dataset's means. Each bootstrap
    draw resamples whole pairs, so the clean and corrupted means move with the
    patched ones. NaN where the mean gap is ~0.
    """
    x, shape = _flat(samples)
    clean = np.asarray(clean, dtype=np.float64).reshape(-1)
    corrupted = np.asarray(corrupted, dtype=np.float64).reshape(-1)
    n, c = x.shape
    if clean.shape[0] != n or corrupted.shape[0] != n:
        raise ValueError("clean and corrupted need one value per pair")

    def score(m, cl, co):
        gap = cl - co
        bad = ~np.isfinite(gap) | (np.abs(gap) < gap_eps)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bad, np.nan, (m - co) / np.where(bad, 1.0, gap))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = score(np.nanmean(x, axis=0), clean.mean(), corrupted.mean())
    counts = bootstrap_counts(n, n_boot, seed)
    cl_b = (counts @ clean / n)[:, None]
    co_b = (counts @ corrupted / n)[:, None]
    lo, hi = np.empty(c), np.empty(c)
    step = max(1, _MAX_BOOT_CELLS // max(1, n_boot))
    for a in range(0, c, step):
        boot = score(_weighted_means(counts, x[:, a:a + step]), cl_b, co_b)
        lo[a:a + step], hi[a:a + step] = _percentiles(boot, level)
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(point), np.fmin(lo, point), np.nan)
        hi = np.where(np.isfinite(point), np.fmax(hi, point), np.nan)
    return point.reshape(shape), lo.reshape(shape), hi.reshape(shape)


def per_pair_normalized(samples, clean, corrupted, gap_eps: float = 1e-6) -> np.ndarray:
    """Each pair's own normalised score (its own clean and corrupted values); NaN for a ~0 gap."""
    x = np.asarray(samples, dtype=np.float64)
    shape = (-1,) + (1,) * (x.ndim - 1)
    cl = np.asarray(clean, dtype=np.float64).reshape(shape)
    co = np.asarray(corrupted, dtype=np.float64).reshape(shape)
    gap = cl - co
    bad = ~np.isfinite(gap) | (np.abs(gap) < gap_eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bad, np.nan, (x - co) / np.where(bad, 1.0, gap))


def interval_class(low, high, threshold: float = 0.0) -> np.ndarray:
    """'above' / 'below' where the whole interval is on one side of threshold, else 'uncertain'."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    out = np.full(low.shape, "uncertain", dtype=object)
    out[low > threshold] = "above"
    out[high < threshold] = "below"
    out[~(np.isfinite(low) & np.isfinite(high))] = "unknown"
    return out


def describe_interval(mean: float, low: float, high: float, pct: bool = True,
                      level: float = DEFAULT_LEVEL) -> str:
    """'62% (95% interval 51% to 73%)', or plain numbers with pct=False."""
    if not all(map(math.isfinite, (mean, low, high))):
        return "n/a"
    lv = f"{level * 100:.0f}%"
    if pct:
        return f"{mean * 100:.0f}% ({lv} interval {low * 100:.0f}% to {high * 100:.0f}%)"
    return f"{mean:.3g} ({lv} interval {low:.3g} to {high:.3g})"
