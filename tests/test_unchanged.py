"""unchanged_cells: which patches would write exactly the value already there (never run)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from patchcore.engine import unchanged_cells
from patchcore.sweeps import SWEEPS

L, T, H, DH = 3, 5, 2, 4
HEADS = SimpleNamespace(n_heads=H, n_kv_heads=H)  # the head counts unchanged_cells reads


@pytest.fixture
def cache():
    """Clean and corrupted activations equal before position 3, except head 1 at layer 1, pos 1."""
    torch.manual_seed(0)
    out = []
    for layer in range(L):
        a = torch.randn(2, T, H * DH)
        a[1] = a[0]
        a[1, 3:] += 1
        if layer == 1:
            a[1, 1, DH:] += 1e-7   # a tiny difference still counts: equality is bit for bit
        out.append(a)
    return out


def one_by_one(cache, cells, component):
    out = []
    for layer, pos, head in cells:
        x, y = cache[layer][0], cache[layer][1]
        if pos >= 0:
            x, y = x[pos:pos + 1], y[pos:pos + 1]
        if component == "head" and head >= 0:
            x, y = x[:, head * DH:(head + 1) * DH], y[:, head * DH:(head + 1) * DH]
        out.append(bool(torch.equal(x, y)))
    return np.array(out)


# a synthetic (2, T, H * DH) cache: the sweeps whose activations are that shape
PLAIN = [s for s, spec in SWEEPS.items() if spec.component.view in ("whole", "heads")]


@pytest.mark.parametrize("sweep", PLAIN)
def test_matches_a_cell_by_cell_check(cache, sweep):
    spec = SWEEPS[sweep]
    cells = spec.cells(L, T, H)
    got = unchanged_cells(cache, cells, spec.component, HEADS)
    np.testing.assert_array_equal(got, one_by_one(cache, cells, spec.component.name))


def test_counts(cache):
    count = {s: int(unchanged_cells(cache, SWEEPS[s].cells(L, T, H), SWEEPS[s].component, HEADS).sum())
             for s in PLAIN}
    # per position: 3 layers x 3 equal positions, minus the one differing cell (layer 1, pos 1)
    assert count["layer_pos"] == 3 * 3 - 1
    assert count["head_pos"] == 3 * 3 * 2 - 1       # only head 1 differs there
    assert count["head"] == 0 and count["layer"] == 0
