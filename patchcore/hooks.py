"""The local backend: batched patching with plain PyTorch hooks on the HF model.

One forward pass carries many patches, one per batch row. Patches are written
with vectorised index assignments, one per (layer, forward), never per cell.

Exact shortcuts (each gives the same numbers as the plain path, up to float
rounding; tests/test_fast_paths.py checks every family, sweep and direction):

- Only the last position's logits are computed (`logits_to_keep=1`).
- Skip lower layers: a patch at layer l changes nothing below l, so the layers
  below a forward's lowest patched layer run once on ONE row, and the hidden
  state is widened to all rows where the first patch lands. A residual-stream
  patch at layer l is written into the *input* of block l+1 (the same tensor
  as the output of block l), so block l itself also runs on one row.
- Reuse the prefix: a patch at position p changes nothing before p (causal
  attention), so a forward whose patches all sit at positions >= p0 takes the
  keys/values of positions < p0 from a one-row run of the prompt prefix
  (transformers' own cache, widened to the batch rows for the layers that run
  batched) and runs only positions p0..T-1. The first use on a model checks
  the cache path against a plain forward; a family where it does not hold (or
  fails) falls back to the plain positions silently.
- Grouping: `order()` sorts a sweep's cells by position, then layer (the engine
  runs them in that order and writes results back in the sweep's order), and
  `patched()` splits each batch into forwards with a shared (lowest layer,
  lowest position) corner, chosen by a small dynamic programme over a cost
  model (token-layers of work plus a per-forward overhead).
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

# Fixed cost of one forward per layer (Python, kernel launches), in floating-point
# operations it could have done instead. Rough: ~0.3 ms per layer at ~50 GFLOP/s on a
# CPU; ~0.1 ms per layer at ~100 TFLOP/s on a GPU (where fewer, larger forwards win).
OVERHEAD_FLOPS = {"cpu": 2e7, "cuda": 1e10, "mps": 1e9}


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


def plan_groups(cells: np.ndarray, n_tokens: int, n_layers: int, shift: int = 0,
                overhead: float = 0.0, reuse_prefix: bool = True, max_merge: int = 8) -> list[Group]:
    """Split cells (n, 3) into forwards that minimise the modelled work.

    The work of a forward with r rows, lowest layer l0 and lowest position p0 is
    (T - p0) * (r * (L - l0 - shift) + l0 + shift) token-layers (batched rows above the
    first patch site, one row below it), plus `overhead` token-layers per forward.
    shift = 1 for residual patches (they land in the next block's input). Positions
    are grouped in contiguous runs (at most max_merge distinct positions), layers in
    contiguous runs within each position group.
    """
    n = len(cells)
    if n == 0:
        return []
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
        c = cnt[lay]
        tok = T - int(upos[a])
        k = len(lay)
        pre = np.concatenate([[0], np.cumsum(c)])
        best = [0.0] + [np.inf] * k
        arg = [0] * (k + 1)
        for m in range(1, k + 1):
            for i in range(m):
                l0 = int(lay[i]) + shift
                rows = int(pre[m] - pre[i])
                cost = best[i] + tok * (rows * max(L - l0, 0) + min(l0, L)) + overhead
                if cost < best[m]:
                    best[m], arg[m] = cost, i
        runs, m = [], k
        while m > 0:
            i = arg[m]
            runs.append((int(lay[i]), int(lay[m - 1])))
            m = i
        return best[k], runs[::-1]

    P = len(upos)
    best = [0.0] + [np.inf] * P
    arg: list = [None] * (P + 1)
    for b in range(1, P + 1):
        for a in range(max(0, b - max_merge), b):
            cost, runs = layer_split(a, b)
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


# transformers models on which the cached-prefix path was checked (True) or failed (False)
_PREFIX_OK: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


class HookBackend:
    """Runs baseline and patched forwards on a local model with torch hooks.

    reuse_prefix: take keys/values of positions before a forward's first patched
    position from a cached run of the prompt prefix (exact; see module docstring).
    group: split each batch into forwards that share a lowest layer/position.
    Both apply only with skip_lower=True; skip_lower=False is the plain path (every
    row runs every layer at every position).
    """

    name = "local"

    def __init__(self, model: LoadedModel, reuse_prefix: bool = True, group: bool = True):
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
        dev = torch.device(model.device).type
        self.overhead = OVERHEAD_FLOPS.get(dev, 1e9) / token_layer_flops(self.c)
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
             skip_lower: bool = True, prefix_ok: bool | None = None) -> list[Group]:
        """The forwards patched() will run for these cells.

        prefix_ok: whether the cached-prefix path works on this model (None: check it,
        which runs two small forwards once per model).
        """
        cells = np.asarray(cells)
        if not skip_lower:
            return [Group(np.arange(len(cells)), 0, 0)]
        if prefix_ok is None:
            prefix_ok = self._prefix_supported()
        reuse = self.reuse_prefix and prefix_ok
        shift = 1 if component == "resid" else 0
        if not self.group:
            pos = cells[:, 1]
            p0 = int(pos.min()) if reuse and (pos >= 0).all() else 0
            return [Group(np.arange(len(cells)), int(cells[:, 0].min()), p0)]
        return plan_groups(cells, n_tokens, self.c.n_layers, shift=shift,
                           overhead=self.overhead * self.c.n_layers, reuse_prefix=reuse)

    # -- cached prefix ---------------------------------------------------------
    def _prefix_run(self, ids: torch.Tensor, p0: int):
        out = self.hf(input_ids=ids[:p0].view(1, -1).to(self.model.device),
                      **{**self._kw, "use_cache": True})
        cache = getattr(out, "cache", None)
        return cache if cache is not None else getattr(out, "past_key_values", None)

    def _prefix_supported(self) -> bool:
        """Check once per model that prefix + suffix equals one plain forward."""
        if self._cache_kw is None:
            return False
        ok = _PREFIX_OK.get(self.hf)
        if ok is None:
            ok = False
            try:
                with torch.inference_mode():
                    g = torch.Generator().manual_seed(0)
                    ids = torch.randint(0, self.c.vocab_size, (12,), generator=g)
                    full = self._forward(ids.view(1, -1))
                    split = self._forward(ids[7:].view(1, -1), use_cache=True,
                                          **{self._cache_kw: self._prefix_run(ids, 7)})
                tol = (1e-3 if self.model.dtype == torch.float32 else 5e-2) * (1 + full.abs().max().item())
                ok = bool(torch.isfinite(full).all()) and (full - split).abs().max().item() <= tol
            except Exception:  # noqa: BLE001 - an architecture whose cache path differs: plain positions
                ok = False
            _PREFIX_OK[self.hf] = ok
        return ok

    def _prefix_cache(self, base_ids: torch.Tensor, p0: int, rows: int, from_layer: int):
        """A fresh cache holding positions < p0 of base_ids, widened to `rows` from from_layer up."""
        key = (base_ids.cpu().numpy().tobytes(), p0)
        base = self._prefixes.get(key)
        if base is None:
            if len(self._prefixes) > 256:
                self._prefixes.clear()
            base = self._prefixes[key] = self._prefix_run(base_ids, p0)
        cache = copy.copy(base)          # update() rebinds tensors, never writes into them
        cache.layers = [copy.copy(layer) for layer in base.layers]
        for i, layer in enumerate(cache.layers):
            keys = getattr(layer, "keys", None)
            if i >= from_layer and rows > 1 and keys is not None and keys.dim() == 4:
                layer.keys = keys.expand(rows, -1, -1, -1)
                layer.values = layer.values.expand(rows, -1, -1, -1)
        return cache

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
        if len(groups) == 1:
            g = groups[0]
            return self._run(base_ids, source, cells, component, g.layer, g.pos)
        out = None
        for g in groups:
            logits = self._run(base_ids, source, cells[g.idx], component, g.layer, g.pos)
            if out is None:
                out = logits.new_empty((len(cells), logits.shape[-1]))
            out[torch.as_tensor(g.idx, device=out.device)] = logits
        return out

    def _run(self, base_ids, source, cells, component, start, p0) -> torch.Tensor:
        """One forward. start=None: plain (all rows, all layers, all positions).

        Otherwise layers below `start` (and below start+1 for residual patches) run on
        one row, and positions < p0 come from the cached prefix.
        """
        n = cells.shape[0]
        nh = self.c.n_heads
        fast = start is not None
        extra = {}
        if not fast:
            ids = base_ids.view(1, -1).expand(n, -1)
        else:
            ids = base_ids[p0:].view(1, -1)
            # the first module that sees a patched value: there the hidden state is widened
            site = self._after_block(start) if component == "resid" else self.c.blocks[start]
            first_batched = start + 1 if component == "resid" else start
            if p0 > 0:
                extra = {self._cache_kw: self._prefix_cache(base_ids, p0, n, first_batched),
                         "use_cache": True}
        with ExitStack() as stack:
            if fast and n > 1:
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
                    # itself runs on one row
                    def pre_kw(m, args, kwargs, src=src, rows=rows, pos_t=pos_t):
                        h = apply_patch(_get_hidden(args, kwargs), src, rows, pos_t, None, nh, p0)
                        return _set_hidden(args, kwargs, h)
                    stack.enter_context(self._after_block(int(layer)).register_forward_pre_hook(
                        pre_kw, with_kwargs=True))
                else:
                    def post(m, args, output, src=src, rows=rows, pos_t=pos_t):
                        return _replace_first(output, apply_patch(_first(output), src, rows, pos_t, None, nh, p0))
                    stack.enter_context(self._module(component, int(layer)).register_forward_hook(post))
            logits = self._forward(ids, **extra)
        return logits
