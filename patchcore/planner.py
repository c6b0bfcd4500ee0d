"""Planning patched forwards: which rows share a forward, from a cost model.

A forward's rows share their first patched block and first patched position:
blocks below are served from the base run and positions before come from a
cached prefix (see backends/hooks.py). Fewer, larger forwards save fixed costs
(weight reads on a CPU, kernel launches on a GPU); smaller ones skip more work.
`plan_groups` finds the split with the least modelled cost.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

@dataclass(frozen=True)
class CostModel:
    """What one forward costs, in token-layers (one token through one block's matmuls).

    A block run on M token rows costs max(M, min_tokens) + layer_overhead. On a CPU the
    overhead is mostly reading the block's weights from memory (about 16 tokens' worth
    of arithmetic at a typical flops-to-bandwidth balance) plus Python; on a GPU it is
    kernel launches, and small products are no cheaper than min_tokens rows. Every
    forward also reads the unembedding (unembed_layers blocks' worth of weights) and
    computes one row of logits per patch.
    """
    min_tokens: float = 0.0
    layer_overhead: float = 16.0
    unembed_layers: float = 1.0

    def block(self, m: float) -> float:
        return max(m, self.min_tokens) + self.layer_overhead


@dataclass
class Group:
    """One forward: these cells (indices into the batch), sharing a lowest layer and position."""
    idx: np.ndarray
    layer: int
    pos: int


def token_layer_flops(components) -> float:
    """Floating-point operations of one token through one block (matmuls only)."""
    c = components
    attn = c.d_model * c.d_head * (2 * c.n_heads + 2 * c.n_kv_heads)
    mlp = 3 * c.d_model * c.d_mlp if c.model_type != "gpt2" and c.model_type != "gpt_neox" \
        else 2 * c.d_model * c.d_mlp
    return 2.0 * (attn + mlp)


def cost_model(components, device) -> CostModel:
    """Defaults per device type (rough; only the plan's shape depends on them)."""
    tlf = token_layer_flops(components)
    unembed = 2.0 * components.vocab_size * components.d_model / tlf
    kind = torch.device(device).type
    if kind == "cuda":   # ~100 us of launches per block call, small products cost the same
        return CostModel(min_tokens=1024.0, layer_overhead=1e10 / tlf, unembed_layers=1.0)
    if kind == "mps":
        return CostModel(min_tokens=256.0, layer_overhead=1e9 / tlf, unembed_layers=1.0)
    # CPU: weights streamed from memory per block call (~16 tokens) + ~0.3 ms of Python
    return CostModel(min_tokens=0.0, layer_overhead=16.0 + 2e7 / tlf, unembed_layers=unembed)


def forward_cost(rows: int, tokens: int, first_batched: int, n_layers: int, cm: CostModel,
                 run_lower: bool, late_head: bool = False) -> float:
    """Token-layers of one forward: `rows` rows over `tokens` positions from block first_batched
    up; below it one row (run_lower) or nothing (lower blocks served from the base run);
    then the unembedding (one row of logits per patch; late_head: done once for all the
    forwards of a batch, so its weights are not read per forward)."""
    fb = min(first_batched, n_layers)
    cost = (n_layers - fb) * cm.block(rows * tokens) + rows * cm.unembed_layers
    cost += (1 if late_head else cm.unembed_layers + 1) * cm.layer_overhead
    if run_lower:
        cost += fb * cm.block(tokens)
    return cost


def plan_groups(cells: np.ndarray, n_tokens: int, n_layers: int, shift: int = 0,
                cm: CostModel | None = None, reuse_prefix: bool = True, run_lower: bool = False,
                prefix_run_cost: bool = False, late_head: bool = False,
                max_merge: int = 8) -> list[Group]:
    """Split cells (n, 3) into forwards that minimise the modelled cost (forward_cost).

    A forward's rows share its lowest patched layer l0 and position p0: blocks from
    l0 + shift run on all rows for positions p0..T-1 (shift = 1 for residual patches,
    which land in the next block's input). prefix_run_cost: each distinct p0 > 0 also
    costs a one-row forward of the prefix. Positions are grouped in contiguous runs (up
    to max_merge distinct positions, or longer runs of power-of-two length or from the
    first position), layers in contiguous runs within each.
    """
    n = len(cells)
    if n == 0:
        return []
    cm = cm or CostModel()
    T, L = n_tokens, n_layers
    pos = cells[:, 1].copy()
    pos[pos < 0] = 0                      # 'all positions' patches start at position 0
    if not reuse_prefix:
        pos[:] = 0
    layer = cells[:, 0]
    upos, pinv = np.unique(pos, return_inverse=True)
    counts = np.zeros((len(upos), L + 1), dtype=np.int64)   # layer L: only the final norm sees it
    np.add.at(counts, (pinv, layer), 1)
    csum = np.vstack([np.zeros((1, L + 1), dtype=np.int64), np.cumsum(counts, axis=0)])

    def layer_split(a: int, b: int):
        """Best split of positions upos[a:b] into layer runs: (cost, [(l_lo, l_hi)])."""
        cnt = csum[b] - csum[a]
        lay = np.nonzero(cnt)[0]
        tok = T - int(upos[a])
        k = len(lay)
        pre = np.concatenate([[0], np.cumsum(cnt[lay])]).astype(np.float64)
        fb = np.minimum(lay + shift, L).astype(np.float64)        # first batched block per start
        lower = fb * cm.block(tok) if run_lower else np.zeros(k)
        fixed = (1 if late_head else cm.unembed_layers + 1) * cm.layer_overhead
        best = np.full(k + 1, np.inf)
        best[0] = 0.0
        arg = np.zeros(k + 1, dtype=np.int64)
        for m in range(1, k + 1):       # cells lay[i..m-1] in one forward, starting at lay[i]
            rows = pre[m] - pre[:m]
            cost = (best[:m] + (L - fb[:m]) * (np.maximum(rows * tok, cm.min_tokens) + cm.layer_overhead)
                    + fixed + rows * cm.unembed_layers + lower[:m])
            i = int(np.argmin(cost))
            best[m], arg[m] = cost[i], i
        runs, m = [], k
        while m > 0:
            i = int(arg[m])
            runs.append((int(lay[i]), int(lay[m - 1])))
            m = i
        return float(best[k]), runs[::-1]

    P = len(upos)
    best = [0.0] + [np.inf] * P
    arg: list = [None] * (P + 1)
    # a position group is any run of up to max_merge distinct positions, or a longer run
    # whose length is a power of two / starts at the first position (keeps the search small)
    for b in range(1, P + 1):
        starts = set(range(max(0, b - max_merge), b)) | {0}
        starts |= {b - 2 ** k for k in range(3, int(np.log2(max(b, 1))) + 1)}
        for a in sorted(starts):
            cost, runs = layer_split(a, b)
            if prefix_run_cost and upos[a] > 0:   # the one-row run that caches the prefix
                cost += forward_cost(1, int(upos[a]), 0, L, cm, False)
            if best[a] + cost < best[b]:
                best[b], arg[b] = best[a] + cost, (a, runs)
    groups, b = [], P
    while b > 0:
        a, runs = arg[b]
        in_pos = (pinv >= a) & (pinv < b)
        for lo, hi in runs:
            idx = np.nonzero(in_pos & (layer >= lo) & (layer <= hi))[0]
            groups.append(Group(idx, lo, int(upos[a])))
        b = a
    return groups[::-1]


# per transformers model: a cost model fitted to timed forwards (estimate.calibrate sets it)
CALIBRATED_COSTS: "weakref.WeakKeyDictionary[torch.nn.Module, CostModel]" = weakref.WeakKeyDictionary()
