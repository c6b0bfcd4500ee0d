"""Issue 5 in a real browser: 50 IOI pairs, both directions, intervals and the quadrant view."""
from __future__ import annotations

import numpy as np
import pytest

from browser_harness import DATASET_PAIRS, DATASET_S

pytestmark = [pytest.mark.browser, pytest.mark.timeout(DATASET_S + 300)]


def test_fifty_pair_dataset_both_directions(dataset_run):
    s, df = dataset_run.session, dataset_run.csv
    print(f"{DATASET_PAIRS}-pair IOI dataset, both directions: {dataset_run.seconds:.0f} s from click to result")
    text = s.main.inner_text()
    assert f"{DATASET_PAIRS} pairs" in text and "both directions" in text, text[:500]
    # the download: means with 95% intervals, both directions, cells over roles
    assert set(df.direction) == {"denoise", "noise"}
    assert (df.n_pairs == DATASET_PAIRS).all()
    for d, part in df.groupby("direction"):
        assert len(part) == 30 * part.position.nunique()
        assert {"S1", "IO", "S2", "END"} <= set(part.token), set(part.token)
        v, lo, hi = part.value.to_numpy(), part.ci_low.to_numpy(), part.ci_high.to_numpy()
        assert np.all(lo <= v + 1e-9) and np.all(v <= hi + 1e-9), f"{d}: an interval misses its mean"
        assert np.any(hi - lo > 1e-6), f"{d}: no interval has any width"
    # the name-mover story on the embedded model: restoring S2 early and END late carries the
    # answer (denoising means > 0.5 somewhere in each)
    den = df[df.direction == "denoise"]
    assert den[den.token == "S2"].normalized.max() > 0.5
    assert den[den.token == "END"].normalized.max() > 0.5
    # two heatmaps side by side (denoise, noise), and the quadrant chart
    assert "Denoising" in text and "Noising" in text
    assert "needed and enough" in text.lower() or "needed but not enough" in text.lower(), text[-2000:]
    s.assert_clean("after the dataset run")
    s.screenshot("datasets")
