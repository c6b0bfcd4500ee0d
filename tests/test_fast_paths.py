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
from patchcore.backends.base import sweep_batch
from patchcore.backends.hooks import HookBackend
from patchcore.planner import CostModel, forward_cost, plan_groups
from patchcore.prompts import prepare_pair

from tiny import FAMILIES, build_hf, embedded_tokenizer, tiny_model

TOL = 1e-4
SWEEPS = list(pc.SWEEPS)
DIRECTIONS = ["denoise", "noise"]



class Fallbacks(HookBackend):
    """The paths a family takes when a shortcut check fails: lower blocks run on one
    row instead of being served from the base run, prefixes come from prefix runs, and
    every forward computes its own logits."""

    def support(self, check=True):
        sup = super().support(check)
        return None if sup is None else {**sup, "sliced": False, "skip": False, "head": False}


# Tiny models are all fixed costs, so their default plan is one forward per batch. A
# cost model without fixed costs makes the plan split batches into many forwards with
# different lowest layers and positions, as on a real model.
FINE = CostModel(min_tokens=0.0, layer_overhead=3.0, unembed_layers=1.0)

# name -> (backend class, its options, run_sweep options)
FAST = {
    "skip_lower": (HookBackend, dict(reuse_prefix=False, group=False), {}),
    "grouped": (HookBackend, dict(reuse_prefix=False, group=True, cost=FINE), {}),
    "prefix": (HookBackend, dict(reuse_prefix=True, group=False), {}),
    "fallbacks": (Fallbacks, dict(cost=FINE), {}),
    "all": (HookBackend, dict(), {}),
    "all_fine_bs13": (HookBackend, dict(cost=FINE), dict(batch_size=13)),
}


pytestmark = pytest.mark.usefixtures("single_thread_module")


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
    """All shortcuts together for every sweep and direction (with the default plan, and
    with a fine plan cut into batches of 13); each alone on the position sweeps."""
    m = model(family)
    for sweep in SWEEPS:
        for direction in DIRECTIONS:
            ref = plain(family, sweep, direction)
            assert np.isfinite(ref).all()
            for name, (cls, opts, kw) in FAST.items():
                if not name.startswith("all") and (direction == "noise" or sweep in ("layer", "head")):
                    continue  # shortcuts one by one: position sweeps, denoising (keeps the suite short)
                got = pc.run_sweep(m, pc.DEFAULT_PAIR, sweep, direction,
                                   backend=cls(m, **opts), **kw).values
                err = float(np.abs(got - ref).max())
                assert err <= TOL, f"{family} {sweep} {direction} {name}: max |diff| {err:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_shortcuts_are_used(family):
    """Every family passes the shortcut checks, and a position sweep takes them."""
    m = model(family)
    b = HookBackend(m, cost=FINE)
    prepared = prepare_pair(m.tokenizer, pc.DEFAULT_PAIR)
    cells = pc.SWEEPS["layer_pos"].cells(m.components.n_layers, prepared.n_tokens, m.components.n_heads)
    base = pc.run_baseline(m, prepared, component="resid")
    sup = b.support()
    assert sup["prefix"] and sup["skip"] and sup["last_block"]
    # sliding-window caches keep only the window: their prefixes need prefix runs
    assert sup["sliced"] == (family not in ("gemma2", "gemma3_text", "mistral"))
    assert sup["head"] == (family != "gemma2")      # Gemma 2 soft-caps its final logits
    calls, last_out = [], []
    hook = m.components.mlp[0].register_forward_pre_hook(lambda mod, a: calls.append(1))
    out_hook = m.components.attn_out[-1].register_forward_hook(lambda mod, a, out: last_out.append(out))
    try:
        with torch.inference_mode():
            b._base(torch.tensor(prepared.corrupted_ids))       # the base prompt's own run
            calls.clear()
            last_out.clear()
            b.run(sweep_batch(torch.tensor(prepared.corrupted_ids), pc.SWEEPS["layer_pos"].component,
                              cells, [a[0] for a in base.cache], prepared.answer_id, prepared.wrong_id))
    finally:
        hook.remove()
        out_hook.remove()
    # the batch's last block computes its attention output at the last position only (prefix
    # runs, where sliding windows need them, come first and compute everything)
    o = last_out[-1]
    assert o.shape[1] > 1 and not o[:, :-1].any() and o[:, -1].abs().sum() > 0
    for mod in (m.components.mlp[-1], m.components.attn_out[-1], m.components.q[-1]):
        assert "forward" not in mod.__dict__                   # restored
    assert max(g.pos for g in b.last_groups) > 0 and len(b.last_groups) > 1
    # block 0 computed only in prefix runs (sliding-window models), never for the batch
    assert len(calls) == (0 if sup["sliced"] else len({g.pos for g in b.last_groups if g.pos > 0}))
    assert all("forward" not in blk.__dict__ for blk in m.components.blocks)   # restored


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("sweep", ["layer_pos", "head_pos", "mlp_pos"])
def test_sdpa_attention(family, sweep):
    """The embedded model runs on sdpa attention: its masks take another code path."""
    m = model(family, "sdpa")
    ref = plain(family, sweep, "denoise", "sdpa")
    got = pc.run_sweep(m, pc.DEFAULT_PAIR, sweep, "denoise", batch_size=7,
                       backend=HookBackend(m, cost=FINE)).values
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
    got = pc.run_sweep(m, pc.DEFAULT_PAIR, "layer_pos", "denoise", backend=WrongPrefix(m, cost=FINE)).values
    assert float(np.abs(got - ref).max()) > 1e-3


def test_plan_groups_partition_and_corners():
    rng = np.random.default_rng(0)
    L, T, H = 6, 11, 3
    for sweep in SWEEPS:
        cells = pc.SWEEPS[sweep].cells(L, T, H)
        cells = cells[rng.permutation(len(cells))][: max(1, len(cells) // 2)]
        for shift in (0, 1):
            groups = plan_groups(cells, T, L, shift=shift, cm=CostModel(4.0, 2.0))
            idx = np.concatenate([g.idx for g in groups])
            assert sorted(idx.tolist()) == list(range(len(cells)))          # each cell once
            for g in groups:
                assert (cells[g.idx, 0] >= g.layer).all()
                pos = np.where(cells[g.idx, 1] < 0, 0, cells[g.idx, 1])
                assert (pos >= g.pos).all()


def test_plan_groups_beats_one_forward():
    """On a layer x position grid the plan models much less work than one batched forward."""
    L, T = 12, 16
    cells = pc.SWEEPS["layer_pos"].cells(L, T, 1)
    cm = CostModel(8.0, 2.0)
    groups = plan_groups(cells, T, L, shift=1, cm=cm)
    planned = sum(forward_cost(len(g.idx), T - g.pos, g.layer + 1, L, cm, False) for g in groups)
    assert planned < 0.45 * forward_cost(len(cells), T, 0, L, cm, False)
    assert len(groups) > 4


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
        batch = lambda fast: sweep_batch(ids, spec.component, cells, src, prepared.answer_id,  # noqa: E731
                                         prepared.wrong_id, skip_lower=fast)
        with torch.inference_mode():
            ref = HookBackend(m, reuse_prefix=False, group=False).run(batch(False))
            # a fixed cost model: the model's calibrated one depends on how busy the machine was
            # when an earlier test timed it, and may plan one forward from position 0
            b = HookBackend(m, cost=FINE)
            fast = b.run(batch(True))
        assert max(g.pos for g in b.last_groups) > 0
        # readout (answer logit, wrong logit, logsumexp), not the metric, of a 30-layer model
        assert float((ref - fast).abs().max()) <= 1e-3
        dref = ref[:, 0] - ref[:, 1]
        dfast = fast[:, 0] - fast[:, 1]
        assert float((dref - dfast).abs().max()) <= TOL
