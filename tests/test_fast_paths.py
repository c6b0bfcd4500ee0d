"""Every fast path of the local backend gives the plain path's numbers (fp32, <= 1e-4).

Plain path: skip_lower=False, no prefix reuse, no grouping: every row runs every
layer at every position in one forward. Fast paths: skipping lower layers, the
cached prefix (positions before the first patch), grouping cells into forwards,
and the engine's position-major order, alone and together, with batch sizes that
cut the sweep at awkward places.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import patchcore as pc
from patchcore.hooks import _PREFIX_OK, HookBackend, plan_groups
from patchcore.prompts import prepare_pair

from tiny import FAMILIES, build_hf, embedded_tokenizer, tiny_model

TOL = 1e-4
SWEEPS = list(pc.SWEEPS)
DIRECTIONS = ["denoise", "noise"]

# name -> (HookBackend options, run_sweep options)
FAST = {
    "skip_lower": (dict(reuse_prefix=False, group=False), {}),
    "grouped": (dict(reuse_prefix=False, group=True), {}),
    "prefix": (dict(reuse_prefix=True, group=False), {}),
    "all": (dict(), {}),
    "all_bs13": (dict(), dict(batch_size=13)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Correctness only: one torch thread is much faster on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def model(family: str, attn: str = "eager"):
    if attn == "eager":
        return tiny_model(family)
    return pc.wrap_model(build_hf(family, attn_implementation=attn), embedded_tokenizer(),
                         label=f"tiny-{family}-{attn}")


@functools.lru_cache(maxsize=None)
def plain(family: str, sweep: str, direction: str, attn: str = "eager") -> np.ndarray:
    m = model(family, attn)
    r = pc.run_sweep(m, pc.DEFAULT_PAIR, sweep, direction, skip_lower=False,
                     backend=HookBackend(m, reuse_prefix=False, group=False))
    return r.values


@pytest.mark.parametrize("family", FAMILIES)
def test_every_fast_path_equals_plain(family):
    """All shortcuts together for every sweep and direction; each alone when denoising."""
    m = model(family)
    for sweep in SWEEPS:
        for direction in DIRECTIONS:
            ref = plain(family, sweep, direction)
            assert np.isfinite(ref).all()
            for name, (opts, kw) in FAST.items():
                if direction == "noise" and not name.startswith("all"):
                    continue  # shortcuts one by one: denoising only (keeps the suite short)
                got = pc.run_sweep(m, pc.DEFAULT_PAIR, sweep, direction,
                                   backend=HookBackend(m, **opts), **kw).values
                err = float(np.abs(got - ref).max())
                assert err <= TOL, f"{family} {sweep} {direction} {name}: max |diff| {err:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_path_is_used(family):
    """The cached-prefix path is accepted for every family, and a position sweep uses it."""
    m = model(family)
    b = HookBackend(m)
    prepared = prepare_pair(m.tokenizer, pc.DEFAULT_PAIR)
    cells = pc.SWEEPS["layer_pos"].cells(m.components.n_layers, prepared.n_tokens, m.components.n_heads)
    base = pc.run_baseline(m, prepared, component="resid")
    with torch.inference_mode():
        b.patched(torch.tensor(prepared.corrupted_ids), [a[0] for a in base.cache], cells, "resid")
    assert _PREFIX_OK.get(m.hf) is True
    assert max(g.pos for g in b.last_groups) > 0
    assert len(b.last_groups) > 1


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("sweep", ["layer_pos", "head_pos", "mlp_pos"])
def test_sdpa_attention(family, sweep):
    """The embedded model runs on sdpa attention: its masks take another code path."""
    m = model(family, "sdpa")
    ref = plain(family, sweep, "denoise", "sdpa")
    got = pc.run_sweep(m, pc.DEFAULT_PAIR, sweep, "denoise", batch_size=7).values
    assert float(np.abs(got - ref).max()) <= TOL
    # and sdpa agrees with eager attention on the same weights
    assert float(np.abs(got - plain(family, sweep, "denoise")).max()) <= TOL


def test_wrong_prefix_is_caught():
    """The comparison has teeth: a cache built from the wrong tokens changes the numbers."""
    m = model("llama")

    class WrongPrefix(HookBackend):
        def _prefix_cache(self, base_ids, p0, rows, from_layer):
            return super()._prefix_cache(base_ids.flip(0), p0, rows, from_layer)

    ref = plain("llama", "layer_pos", "denoise")
    got = pc.run_sweep(m, pc.DEFAULT_PAIR, "layer_pos", "denoise", backend=WrongPrefix(m)).values
    assert float(np.abs(got - ref).max()) > 1e-3


def test_plan_groups_partition_and_corners():
    rng = np.random.default_rng(0)
    L, T, H = 6, 11, 3
    for sweep in SWEEPS:
        cells = pc.SWEEPS[sweep].cells(L, T, H)
        cells = cells[rng.permutation(len(cells))][: max(1, len(cells) // 2)]
        for shift in (0, 1):
            groups = plan_groups(cells, T, L, shift=shift, overhead=5.0)
            idx = np.concatenate([g.idx for g in groups])
            assert sorted(idx.tolist()) == list(range(len(cells)))          # each cell once
            for g in groups:
                assert (cells[g.idx, 0] >= g.layer).all()
                pos = np.where(cells[g.idx, 1] < 0, 0, cells[g.idx, 1])
                assert (pos >= g.pos).all()


def test_plan_groups_beats_one_forward():
    """On a layer x position grid the plan models less work than one batched forward."""
    L, T = 12, 16
    cells = pc.SWEEPS["layer_pos"].cells(L, T, 1)

    def work(groups, shift=1):
        return sum((T - g.pos) * (len(g.idx) * (L - min(g.layer + shift, L)) + min(g.layer + shift, L))
                   for g in groups)

    groups = plan_groups(cells, T, L, shift=1, overhead=L * 2.0)
    assert work(groups) < 0.45 * len(cells) * T * L


@pytest.mark.embedded
def test_embedded_fast_equals_plain(embedded):
    """The embedded model (sdpa, grouped-query attention, 30 layers) on a spread of cells."""
    m = embedded
    prepared = prepare_pair(m.tokenizer, pc.DEFAULT_PAIR)
    c = m.components
    for sweep in ("layer_pos", "head_pos"):
        spec = pc.SWEEPS[sweep]
        cells = spec.cells(c.n_layers, prepared.n_tokens, c.n_heads)
        cells = cells[np.random.default_rng(1).choice(len(cells), 12, replace=False)]
        base = pc.run_baseline(m, prepared, component=spec.component)
        src = [a[0] for a in base.cache]
        ids = torch.tensor(prepared.corrupted_ids)
        with torch.inference_mode():
            ref = HookBackend(m, reuse_prefix=False, group=False).patched(ids, src, cells, spec.component, False)
            b = HookBackend(m)
            fast = b.patched(ids, src, cells, spec.component, True)
        assert max(g.pos for g in b.last_groups) > 0
        assert float((ref - fast).abs().max()) <= 1e-3   # logits (not metric) of a 30-layer model
        dref = ref[:, prepared.answer_id] - ref[:, prepared.wrong_id]
        dfast = fast[:, prepared.answer_id] - fast[:, prepared.wrong_id]
        assert float((dref - dfast).abs().max()) <= TOL
