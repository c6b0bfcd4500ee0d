"""The local backend: batched patching with plain PyTorch hooks on the HF model.

One forward pass carries many patches, one per batch row. Patches are written
with vectorised index assignments, one per (layer, forward), never per cell.

Exact shortcuts (each gives the same numbers as the plain path, up to float
rounding; tests/test_fast_paths.py checks every family, sweep and direction):

- Only the last position's logits are computed (`logits_to_keep=1`).
- Skip lower layers: a patch at layer l changes nothing below l. The blocks below
  a forward's first patch site return the base prompt's own outputs (recorded once
  per prompt) without computing, and the hidden state is widened to all rows where
  the first patch lands. A residual-stream patch at layer l is written into the
  *input* of block l+1 (the same tensor as block l's output), so block l is not run
  on the batch either.
- Reuse the prefix: a patch at position p changes nothing before p (causal
  attention), so a forward whose patches all sit at positions >= p0 takes the
  keys/values of positions < p0 from the base prompt's cache (transformers' own
  cache: cut from the whole prompt's cache, or, for sliding-window models, from a
  one-row run of the prefix), widened to the batch rows, and runs only positions
  p0..T-1.
- Grouping: `order()` sorts a sweep's cells by position, then layer (the engine
  runs them in that order and writes results back in the sweep's order), and
  `patched()` splits each batch into forwards with a shared (lowest layer,
  lowest position) corner, chosen by a small dynamic programme over a cost model
  (CostModel: work in token-layers plus a fixed cost per block call and per
  forward; on a CPU mostly reading weights from memory).

The first use on a model checks each shortcut against a plain forward on a random
prompt (HookBackend.support); one that does not hold for a family (or fails) is
left out for that model, and the plain computation runs instead.
"""
from __future__ import annotations

import copy
import inspect
import weakref
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from .models import LoadedModel


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_first(output, new):
    if isinstance(output, torch.Tensor):
        return new
    return (new,) + tuple(output[1:])


def _get_hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _set_hidden(args, kwargs, new):
    if args:
        return (new,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = new
    return args, kwargs


def apply_patch(x: torch.Tensor, src: torch.Tensor, rows, pos, heads, n_heads: int,
                offset: int = 0, copy_x: bool = True) -> torch.Tensor:
    """Return x (B, t, D) with src (T, D) written into the given rows.

    rows, pos, heads are 1-D index tensors of equal length (pos/heads may be None,
    meaning all positions / the whole vector). pos are positions in the prompt; x
    holds prompt positions offset..offset+t-1 (offset > 0 when a cached prefix is reused).
    """
    if copy_x:
        x = x.clone(memory_format=torch.contiguous_format)
    src = src.to(device=x.device, dtype=x.dtype)  # device-mapped models: the layer's own device
    src = src[offset:] if offset else src
    rows = rows.to(x.device)
    if pos is not None:
        pos = pos.to(x.device) - offset
    if heads is None:
        if pos is None:
            x[rows] = src
        else:
            x[rows, pos] = src[pos]
        return x
    heads = heads.to(x.device)
    b, t, d = x.shape
    x4 = x.view(b, t, n_heads, d // n_heads)
    s4 = src.reshape(t, n_heads, d // n_heads)
    if pos is None:
        x4[rows, :, heads] = s4.permute(1, 0, 2)[heads]
    else:
        x4[rows, pos, heads] = s4[pos, heads]
    return x


# -- planning -------------------------------------------------------------------

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
    counts = np.zeros((len(upos), L), dtype=np.int64)
    np.add.at(counts, (pinv, layer), 1)
    csum = np.vstack([np.zeros((1, L), dtype=np.int64), np.cumsum(counts, axis=0)])

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

# per transformers model: which shortcuts were checked to hold (see HookBackend.support)
_SUPPORT: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _slice_cache(full, p0: int):
    """A cache of the first p0 positions, cut from a cache of the whole prompt.

    Only for caches whose layers all keep every position (no sliding window): their
    state is just keys and values. Others return None (a prefix run is needed).
    """
    layers = getattr(full, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    cache = copy.copy(full)
    cache.layers = []
    for layer in layers:
        cut = copy.copy(layer)
        cut.keys = layer.keys[..., :p0, :]
        cut.values = layer.values[..., :p0, :]
        cache.layers.append(cut)
    return cache


def _widen_cache(base, rows: int, from_layer: int):
    """A fresh copy of a cache, its layers from from_layer up widened to `rows` rows."""
    cache = copy.copy(base)          # update() rebinds tensors, never writes into them
    cache.layers = [copy.copy(layer) for layer in base.layers]
    for i, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None)
        if i >= from_layer and rows > 1 and keys is not None and keys.dim() == 4:
            layer.keys = keys.expand(rows, -1, -1, -1)
            layer.values = layer.values.expand(rows, -1, -1, -1)
    return cache


def _override_forward(stack: ExitStack, module: torch.nn.Module, forward) -> None:
    """Until the stack closes, calling `module` runs `forward` instead of its own."""
    had = "forward" in module.__dict__
    old = module.__dict__.get("forward")
    module.forward = forward

    def restore():
        if had:
            module.forward = old
        else:
            del module.forward
    stack.callback(restore)


def _skip_block(stack: ExitStack, block: torch.nn.Module, output: torch.Tensor) -> None:
    """Until the stack closes, calling `block` returns `output` without computing anything."""
    _override_forward(stack, block, lambda *args, **kwargs: output)


class HookBackend:
    """Runs baseline and patched forwards on a local model with torch hooks.

    reuse_prefix: take keys/values of positions before a forward's first patched
    position from the base prompt's cached run (exact; see module docstring).
    group: split each batch into forwards that share a lowest layer/position.
    cost: the CostModel the grouping minimises (default: the one calibrated on this
    model by estimate.calibrate if any, else cost_model() for the device).
    Both apply only with skip_lower=True; skip_lower=False is the plain path (every
    row runs every layer at every position).
    """

    name = "local"

    def __init__(self, model: LoadedModel, reuse_prefix: bool = True, group: bool = True,
                 cost: CostModel | None = None):
        self.model = model
        self.hf = model.hf
        self.c = model.components
        self.reuse_prefix = reuse_prefix
        self.group = group
        params = inspect.signature(self.hf.forward).parameters
        self._kw = {"use_cache": False}
        if "logits_to_keep" in params:  # only the last position's logits are read
            self._kw["logits_to_keep"] = 1
        # transformers 5.x renamed past_key_values -> cache
        self._cache_kw = "cache" if "cache" in params else (
            "past_key_values" if "past_key_values" in params else None)
        self._prefixes: dict = {}
        self._bases: dict = {}
        self.cost = cost or CALIBRATED_COSTS.get(self.hf) or cost_model(self.c, model.device)
        self.last_groups: list[Group] = []   # the forwards of the latest patched() call

    # -- modules -----------------------------------------------------------
    def _module(self, component: str, layer: int) -> torch.nn.Module:
        return {"resid": self.c.blocks, "attn": self.c.attn, "mlp": self.c.mlp,
                "head": self.c.attn_out}[component][layer]

    def _after_block(self, layer: int) -> torch.nn.Module:
        """The module whose input is the output of block `layer`."""
        return self.c.blocks[layer + 1] if layer + 1 < self.c.n_layers else self.c.final_norm

    def _forward(self, ids: torch.Tensor, **extra) -> torch.Tensor:
        kw = dict(self._kw)
        kw.update(extra)
        out = self.hf(input_ids=ids.to(self.model.device), **kw)
        return out.logits[:, -1, :]

    # -- baseline ------------------------------------------------------------
    def baseline(self, rows_ids: torch.Tensor, component: str):
        """Unpatched forward of several prompts; returns (last logits, per-layer activations)."""
        cache: list = [None] * self.c.n_layers
        with ExitStack() as stack:
            for layer in range(self.c.n_layers):
                mod = self._module(component, layer)
                if component == "head":
                    def pre(m, args, layer=layer):
                        cache[layer] = args[0].detach().clone()
                    stack.enter_context(mod.register_forward_pre_hook(pre))
                else:
                    def post(m, args, output, layer=layer):
                        cache[layer] = _first(output).detach().clone()
                    stack.enter_context(mod.register_forward_hook(post))
            logits = self._forward(rows_ids)
        return logits, cache

    # -- what this model supports ------------------------------------------------
    def _base_run(self, ids: torch.Tensor):
        """One row, whole prompt: (block outputs (1, T, D) per layer, cache, last logits)."""
        states: list = [None] * self.c.n_layers
        with ExitStack() as stack:
            for i, block in enumerate(self.c.blocks):
                def post(m, args, output, i=i):
                    states[i] = _first(output).detach()
                stack.enter_context(block.register_forward_hook(post))
            kw = {**self._kw, "use_cache": self._cache_kw is not None}
            out = self.hf(input_ids=ids.view(1, -1).to(self.model.device), **kw)
        return states, (_cache_of(out) if self._cache_kw else None), out.logits[:, -1, :]

    def _base(self, base_ids: torch.Tensor):
        key = base_ids.cpu().numpy().tobytes()
        if key not in self._bases:
            if len(self._bases) > 4:
                self._bases.clear()
            self._bases[key] = self._base_run(base_ids)
        return self._bases[key]

    def _prefix_run(self, ids: torch.Tensor, p0: int):
        out = self.hf(input_ids=ids[:p0].view(1, -1).to(self.model.device),
                      **{**self._kw, "use_cache": True})
        return _cache_of(out)

    def support(self, check: bool = True) -> dict | None:
        """Which shortcuts hold on this model, checked once per model on a random prompt.

        prefix: a prompt run as prefix (cached keys/values) + rest equals one forward;
        sliced: the prefix cache may be cut from the whole prompt's cache (no sliding
        window), so no prefix runs are needed; skip: blocks may be replaced by the base
        run's outputs; head: the logits are the unembedding of the last hidden state and
        nothing else (no final soft-capping), so the forwards of a batch can share one
        unembedding. check=False: None when not checked yet.
        """
        sup = _SUPPORT.get(self.hf)
        if sup is not None or not check:
            return sup
        sup = {"prefix": False, "sliced": False, "skip": False, "head": False}
        with torch.inference_mode():
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, self.c.vocab_size, (12,), generator=g)
            try:
                states, full_cache, full = self._base_run(ids)
            except Exception:  # noqa: BLE001
                _SUPPORT[self.hf] = sup
                return sup
            tol = (1e-3 if self.model.dtype == torch.float32 else 5e-2) * (1 + full.abs().max().item())

            def same(run) -> bool:
                try:
                    got = run()
                    return bool(torch.isfinite(full).all()) and (full - got).abs().max().item() <= tol
                except Exception:  # noqa: BLE001 - this family's code path differs: no shortcut
                    return False

            def with_cache(cache):
                return lambda: self._forward(ids[7:].view(1, -1), use_cache=True,
                                             **{self._cache_kw: _widen_cache(cache, 1, 0)})

            if self._cache_kw is not None:
                sup["prefix"] = same(with_cache(self._prefix_run(ids, 7)))
                sliced = _slice_cache(full_cache, 7)
                sup["sliced"] = sup["prefix"] and sliced is not None and same(with_cache(sliced))

            def skipped():
                with ExitStack() as stack:
                    for i in range(self.c.n_layers // 2 + 1):
                        _skip_block(stack, self.c.blocks[i], states[i].clone())
                    return self._forward(ids.view(1, -1))
            sup["skip"] = same(skipped)

            def late_head():
                with ExitStack() as stack:
                    h = self._capture_head(stack)
                    self._forward(ids.view(1, -1))
                return self._unembed(h)
            sup["head"] = same(late_head)
        _SUPPORT[self.hf] = sup
        return sup

    def _capture_head(self, stack: ExitStack) -> list:
        """Until the stack closes, the unembedding records its input and returns zeros."""
        got: list = []

        def capture(h, *args, **kwargs):
            got.append(h)
            return h.new_zeros(1, 1, 1).expand(h.shape[0], h.shape[1], self.c.vocab_size)
        _override_forward(stack, self.c.unembed, capture)
        return got

    def _unembed(self, hidden) -> torch.Tensor:
        """Last-position logits from captured unembedding inputs (one or a list)."""
        h = torch.cat(hidden, 0) if isinstance(hidden, list) else hidden
        return self.c.unembed(h)[:, -1, :]

    # -- planning ------------------------------------------------------------
    def _fast(self, skip_lower: bool) -> bool:
        return bool(skip_lower) and (self.reuse_prefix or self.group)

    def order(self, cells: np.ndarray, component: str, skip_lower: bool = True):
        """A permutation of the sweep's cells to run them in (None: the sweep's own order).

        Position-major, then layer, then head: consecutive batches then share a high
        lowest position, so more of each forward is served from the cached prefix.
        """
        if not (skip_lower and self.reuse_prefix) or (cells[:, 1] < 0).all():
            return None
        return np.lexsort((cells[:, 2], cells[:, 0], cells[:, 1]))

    def plan(self, cells: np.ndarray, n_tokens: int, component: str,
             skip_lower: bool = True, support: dict | None = None) -> list[Group]:
        """The forwards patched() will run for these cells.

        support: as from support() (None: check this model, two small forwards once).
        """
        cells = np.asarray(cells)
        if not skip_lower:
            return [Group(np.arange(len(cells)), 0, 0)]
        sup = support or self.support()
        reuse = self.reuse_prefix and sup["prefix"]
        shift = 1 if component == "resid" else 0
        if not self.group:
            pos = cells[:, 1]
            p0 = int(pos.min()) if reuse and (pos >= 0).all() else 0
            return [Group(np.arange(len(cells)), int(cells[:, 0].min()), p0)]
        return plan_groups(cells, n_tokens, self.c.n_layers, shift=shift, cm=self.cost,
                           reuse_prefix=reuse, run_lower=not sup["skip"],
                           prefix_run_cost=reuse and not sup["sliced"], late_head=sup["head"])

    # -- cached prefix ---------------------------------------------------------
    def _prefix_cache(self, base_ids: torch.Tensor, p0: int, rows: int, from_layer: int):
        """A fresh cache holding positions < p0 of base_ids, widened to `rows` from from_layer up."""
        key = (base_ids.cpu().numpy().tobytes(), p0)
        base = self._prefixes.get(key)
        if base is None:
            if len(self._prefixes) > 256:
                self._prefixes.clear()
            if self.support()["sliced"]:
                base = _slice_cache(self._base(base_ids)[1], p0)
            else:
                base = self._prefix_run(base_ids, p0)
            self._prefixes[key] = base
        return _widen_cache(base, rows, from_layer)

    # -- patched ---------------------------------------------------------------
    def patched(self, base_ids: torch.Tensor, source: list, cells: np.ndarray,
                component: str, skip_lower: bool = True) -> torch.Tensor:
        """Forwards with one patch per row. cells: (n, 3) of (layer, position, head), -1 = all.

        Returns last-position logits (n, vocab) in the order of `cells`. skip_lower=False
        runs the plain path: one forward, every row through every layer and position.
        """
        cells = np.asarray(cells)
        base_ids = base_ids.view(-1)
        if not self._fast(skip_lower):
            self.last_groups = [Group(np.arange(len(cells)), 0, 0)]
            return self._run(base_ids, source, cells, component, None, 0)
        groups = self.plan(cells, base_ids.numel(), component, skip_lower)
        self.last_groups = groups
        late = self.support()["head"]
        if len(groups) == 1:
            g = groups[0]
            out = self._run(base_ids, source, cells, component, g.layer, g.pos, late)
            return self._unembed(out) if late else out
        out = None
        for g in groups:
            res = self._run(base_ids, source, cells[g.idx], component, g.layer, g.pos, late)
            if out is None:
                out = res.new_empty((len(cells),) + tuple(res.shape[1:]))
            out[torch.as_tensor(g.idx, device=out.device)] = res
        # late head: one unembedding for the whole batch (its weights read once, not per forward)
        return self._unembed(out) if late else out

    def _run(self, base_ids, source, cells, component, start, p0, late_head: bool = False) -> torch.Tensor:
        """One forward. start=None: plain (all rows, all layers, all positions).

        Otherwise blocks below the first patch site (block `start`, or start+1 for
        residual patches) return the base run's outputs without computing (or run on one
        row where that shortcut does not hold), and positions < p0 come from the cache.
        Returns last-position logits, or with late_head the unembedding's input (n, 1, D).
        """
        n = cells.shape[0]
        nh = self.c.n_heads
        fast = start is not None
        extra = {}
        with ExitStack() as stack:
            if not fast:
                ids = base_ids.view(1, -1).expand(n, -1)
            else:
                ids = base_ids[p0:].view(1, -1)
                first_batched = start + 1 if component == "resid" else start
                # the first module that sees a patched value: there the hidden state is widened
                site = self._after_block(start) if component == "resid" else self.c.blocks[start]
                if p0 > 0:
                    extra = {self._cache_kw: self._prefix_cache(base_ids, p0, n, first_batched),
                             "use_cache": True}
                if first_batched > 0 and self.support()["skip"]:
                    states = self._base(base_ids)[0]
                    for i in range(first_batched):
                        _skip_block(stack, self.c.blocks[i], states[i][:, p0:].clone()
                                    if i == first_batched - 1 else states[i][:, p0:])
                if n > 1:
                    def widen(m, args, kwargs):
                        h = _get_hidden(args, kwargs)
                        return _set_hidden(args, kwargs, h.expand(n, -1, -1).contiguous())
                    stack.enter_context(site.register_forward_pre_hook(widen, with_kwargs=True))
            for layer in np.unique(cells[:, 0]):
                sel = cells[:, 0] == layer
                rows = torch.as_tensor(np.nonzero(sel)[0])
                pos, heads = cells[sel, 1], cells[sel, 2]
                pos_t = None if pos[0] < 0 else torch.as_tensor(pos)
                heads_t = None if heads[0] < 0 else torch.as_tensor(heads)
                src = source[int(layer)]
                if component == "head":
                    def pre(m, args, src=src, rows=rows, pos_t=pos_t, heads_t=heads_t):
                        return (apply_patch(args[0], src, rows, pos_t, heads_t, nh, p0),) + tuple(args[1:])
                    stack.enter_context(self.c.attn_out[int(layer)].register_forward_pre_hook(pre))
                elif component == "resid" and fast:
                    # block l's output is the next module's input: patch it there, so block l
                    # itself is not run on the batch
                    def pre_kw(m, args, kwargs, src=src, rows=rows, pos_t=pos_t):
                        h = apply_patch(_get_hidden(args, kwargs), src, rows, pos_t, None, nh, p0)
                        return _set_hidden(args, kwargs, h)
                    stack.enter_context(self._after_block(int(layer)).register_forward_pre_hook(
                        pre_kw, with_kwargs=True))
                else:
                    def post(m, args, output, src=src, rows=rows, pos_t=pos_t):
                        return _replace_first(output, apply_patch(_first(output), src, rows, pos_t, None, nh, p0))
                    stack.enter_context(self._module(component, int(layer)).register_forward_hook(post))
            if late_head:
                got = self._capture_head(stack)
            logits = self._forward(ids, **extra)
        return got[0] if late_head else logits
