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
- Grouping: `order()` sorts a batch's rows by first patched position, then layer
  (the engine runs them in that order and writes results back in its own), and
  `run()` splits each batch into forwards with a shared (first block, first
  position) corner, chosen by planner.plan_groups over a cost model.

The first use on a model checks each shortcut against a plain forward on a random
prompt (shortcuts.check_shortcuts); one that does not hold for a family (or fails) is
left out for that model, and the plain computation runs instead.
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack

import numpy as np
import torch

from ..attention import pattern_hooks
from ..models import LoadedModel
from ..planner import CALIBRATED_COSTS, CostModel, Group, cost_model, plan_groups
from ..sites import Component
from ..metrics import readout
from .base import Backend, Batch
from .prefix_cache import cache_of, slice_cache, stack_caches, widen_cache
from .shortcuts import (_SUPPORT, _first, _get_hidden, _replace_first, _set_hidden, _skip_block,
                        apply_writes, capture_head, check_shortcuts, last_position_block)


class HookBackend(Backend):
    """Runs baseline and patched forwards on a local model with torch hooks.

    reuse_prefix: take keys/values of positions before a forward's first patched
    position from the base prompt's cached run (exact; see module docstring).
    group: split each batch into forwards that share a first block and position.
    cost: the CostModel the grouping minimises (default: the one calibrated on this
    model by estimate.calibrate if any, else planner.cost_model() for the device).
    Both apply only to batches with skip_lower=True; skip_lower=False is the plain
    path (every row runs every layer at every position).
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
        self.last_groups: list[Group] = []   # the forwards of the latest run() call

    # -- modules -----------------------------------------------------------
    def _after_block(self, layer: int) -> torch.nn.Module:
        """The module whose input is the output of block `layer`."""
        return self.c.blocks[layer + 1] if layer + 1 < self.c.n_layers else self.c.final_norm

    def _forward(self, ids: torch.Tensor, **extra) -> torch.Tensor:
        kw = dict(self._kw)
        kw.update(extra)
        out = self.hf(input_ids=ids.to(self.model.device), **kw)
        return out.logits[:, -1, :]

    # -- baseline ------------------------------------------------------------
    def baseline(self, ids: torch.Tensor, component: Component):
        """Unpatched forward of several prompts; returns (last logits, per-layer activations)."""
        logits, acts = self.capture(ids, [component])
        return logits, acts[component.name]

    def capture(self, ids: torch.Tensor, components: list):
        """One unpatched forward recording every given component: (last logits, {name: per layer})."""
        L = self.c.n_layers
        acts = {comp.name: [None] * L for comp in components}
        with ExitStack() as stack:
            for comp in components:
                cache = acts[comp.name]
                if comp.hook == "pattern":
                    def keep(p, layer, cache=cache):
                        cache[layer] = p.detach().clone()
                        return p
                    stack.enter_context(pattern_hooks(self.hf, self.c.attn, {
                        layer: (lambda p, layer=layer, keep=keep: keep(p, layer)) for layer in range(L)}))
                    continue
                for layer in range(L):
                    mod = comp.module(self.c, layer)
                    if comp.hook == "input":
                        def pre(m, args, layer=layer, cache=cache):
                            cache[layer] = args[0].detach().clone()
                        stack.enter_context(mod.register_forward_pre_hook(pre))
                    else:
                        def post(m, args, output, layer=layer, cache=cache):
                            cache[layer] = _first(output).detach().clone()
                        stack.enter_context(mod.register_forward_hook(post))
            logits = self._forward(ids)
        return logits, acts

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
        return states, (cache_of(out) if self._cache_kw else None), out.logits[:, -1, :]

    def _base(self, base_ids: torch.Tensor):
        key = base_ids.cpu().numpy().tobytes()
        if key not in self._bases:
            if len(self._bases) > 64:
                self._bases.clear()
            self._bases[key] = self._base_run(base_ids)
        return self._bases[key]

    def _prefix_run(self, ids: torch.Tensor, p0: int):
        out = self.hf(input_ids=ids[:p0].view(1, -1).to(self.model.device),
                      **{**self._kw, "use_cache": True})
        return cache_of(out)
    def support(self, check: bool = True) -> dict | None:
        """Which exact shortcuts hold on this model (shortcuts.check_shortcuts; once per model).
        check=False: None when not checked yet."""
        sup = _SUPPORT.get(self.hf)
        if sup is not None or not check:
            return sup
        return check_shortcuts(self)

    def _last_position_block(self, stack: ExitStack) -> None:
        last_position_block(stack, self.c)

    def _capture_head(self, stack: ExitStack) -> list:
        return capture_head(stack, self.c)

    def _unembed(self, hidden) -> torch.Tensor:
        """Last-position logits from captured unembedding inputs (one or a list)."""
        h = torch.cat(hidden, 0) if isinstance(hidden, list) else hidden
        return self.c.unembed(h)[:, -1, :]

    def _fast(self, batch: Batch) -> bool:
        return bool(batch.skip_lower) and (self.reuse_prefix or self.group)

    def order(self, batch: Batch):
        """Rows by first patched position, then first block, then head: consecutive batches then
        share a high first position, so more of each forward comes from the cached prefix."""
        if not (batch.skip_lower and self.reuse_prefix):
            return None
        block, pos = batch.first_sites(self.c.n_layers)
        if not pos.any():
            return None
        head = np.full(batch.n, -1)
        for w in batch.writes:
            head[w.rows] = w.head
        return np.lexsort((head, block, pos))

    def plan(self, batch: Batch, support: dict | None = None) -> list[Group]:
        """The forwards run() will make for this batch (one prompt). Group.layer is the first
        block run on all rows, Group.pos the first position run.

        support: as from support() (None: check this model, two small forwards once).
        """
        n, T = batch.n, batch.ids.shape[-1]
        if not batch.skip_lower:
            return [Group(np.arange(n), 0, 0)]
        sup = support or self.support()
        reuse = self.reuse_prefix and sup["prefix"]
        if not sup["sliced"] and any(w.component.hook == "pattern" for w in batch.writes):
            reuse = False   # sliding-window caches keep fewer keys: patterns would not line up
        block, pos = batch.first_sites(self.c.n_layers)
        if not reuse:
            pos = np.zeros_like(pos)
        if not self.group:
            return [Group(np.arange(n), int(block.min()), int(pos.min()))]
        cells = np.stack([block, pos, np.full(n, -1)], axis=1)
        return plan_groups(cells, T, self.c.n_layers, shift=0, cm=self.cost, reuse_prefix=reuse,
                           run_lower=not sup["skip"], prefix_run_cost=reuse and not sup["sliced"],
                           late_head=sup["head"])

    # -- cached prefix ---------------------------------------------------------
    def _prefix_cache(self, base_ids: torch.Tensor, p0: int, rows: int, from_layer: int):
        """A fresh cache holding positions < p0 of base_ids, widened to `rows` from from_layer up."""
        key = (base_ids.cpu().numpy().tobytes(), p0)
        base = self._prefixes.get(key)
        if base is None:
            if len(self._prefixes) > 256:
                self._prefixes.clear()
            if self.support()["sliced"]:
                base = slice_cache(self._base(base_ids)[1], p0)
            else:
                base = self._prefix_run(base_ids, p0)
            self._prefixes[key] = base
        return widen_cache(base, rows, from_layer)

    # -- patched ---------------------------------------------------------------
    def run(self, batch: Batch) -> torch.Tensor:
        """Patched forwards, one batch row per row; readout (n, 3) in the batch's order."""
        n = batch.n
        if not self._fast(batch):
            self.last_groups = [Group(np.arange(n), 0, 0)]
            return self._readout(self._run(batch, None, 0), batch)
        groups = self.plan(batch)
        self.last_groups = groups
        late = self.support()["head"]
        if len(groups) == 1:
            g = groups[0]
            out = self._run(batch, g.layer, g.pos, late)
            return self._head_readout(out, batch) if late else self._readout(out, batch)
        out = None
        for g in groups:
            res = self._run(batch.subset(g.idx), g.layer, g.pos, late)
            if out is None:
                out = res.new_empty((n,) + tuple(res.shape[1:]))
            out[torch.as_tensor(g.idx, device=out.device)] = res
        # late head: one unembedding for the whole batch (its weights read once, not per forward)
        return self._head_readout(out, batch) if late else self._readout(out, batch)

    def _head_readout(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The readout from the unembedding's input (n, 1, D). A metric that needs no
        logsumexp (batch.need_lse False) gets the answer's and wrong token's logits alone: two
        rows of the unembedding per batch row instead of the whole vocabulary."""
        head = self.c.unembed
        if batch.need_lse or not isinstance(head, torch.nn.Linear) or head.weight.device.type == "meta":
            # (an offloaded head keeps its weights on 'meta' until its own call loads them)
            return self._readout(self._unembed(hidden), batch)
        h = hidden[:, -1, :]
        dev = head.weight.device
        a, w = torch.as_tensor(batch.answer, device=dev), torch.as_tensor(batch.wrong, device=dev)
        la = (h * head.weight[a].to(h.device, h.dtype)).sum(-1).float()
        lw = (h * head.weight[w].to(h.device, h.dtype)).sum(-1).float()
        if head.bias is not None:
            la, lw = la + head.bias[a].to(h.device).float(), lw + head.bias[w].to(h.device).float()
        return torch.stack([la, lw, torch.full_like(la, float("nan"))], dim=1)

    def record(self, batch: Batch, sites: list):
        """Plain forward (every row, every layer and position) recording `sites` as it goes."""
        got: dict = {}
        with ExitStack() as stack:
            for comp, layer in sites:
                mod = comp.module(self.c, layer)
                key = (comp.name, layer)
                if comp.hook == "input":
                    def pre(m, args, key=key):
                        got[key] = args[0].detach().clone()
                    stack.enter_context(mod.register_forward_pre_hook(pre))
                else:
                    def post(m, args, output, key=key):
                        got[key] = _first(output).detach().clone()
                    stack.enter_context(mod.register_forward_hook(post))
            logits = self._run(batch, None, 0)
        return self._readout(logits, batch), got

    @staticmethod
    def _readout(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return readout(logits, batch.answer, batch.wrong)

    def _hooks(self, stack: ExitStack, batch: Batch, fast: bool, p0: int) -> None:
        """Register every write of the batch on its module, vectorised per (layer, kind)."""
        patterns: dict = {}
        for w in batch.writes:
            comp = w.component
            per_module: dict = {}
            for layer, all_pos, all_head, idx in w.groups():
                t = lambda a: torch.as_tensor(a[idx])  # noqa: E731
                per_module.setdefault(layer, []).append(
                    (all_pos, all_head, t(w.rows), t(w.pos), t(w.head), t(w.src), w.table[layer]))
            for layer, groups in per_module.items():
                def write(x, groups=groups, comp=comp):
                    return apply_writes(x, comp, self.c, groups, p0)
                if comp.hook == "pattern":
                    prev = patterns.get(layer)
                    patterns[layer] = write if prev is None else (lambda x, a=prev, b=write: b(a(x)))
                elif comp.shift and fast:
                    # block l's output is the next module's input: write it there, so block l
                    # itself is not run on the batch
                    def pre_kw(m, args, kwargs, write=write):
                        return _set_hidden(args, kwargs, write(_get_hidden(args, kwargs)))
                    stack.enter_context(self._after_block(layer).register_forward_pre_hook(
                        pre_kw, with_kwargs=True))
                elif comp.hook == "input":
                    def pre(m, args, write=write):
                        return (write(args[0]),) + tuple(args[1:])
                    stack.enter_context(comp.module(self.c, layer).register_forward_pre_hook(pre))
                else:
                    def post(m, args, output, write=write):
                        return _replace_first(output, write(_first(output)))
                    stack.enter_context(comp.module(self.c, layer).register_forward_hook(post))
        if patterns:
            stack.enter_context(pattern_hooks(self.hf, self.c.attn, patterns))

    def _run(self, batch: Batch, start, p0, late_head: bool = False) -> torch.Tensor:
        """One forward. start=None: plain (all rows, all layers, all positions).

        Otherwise blocks below `start` (the first block that sees a patch) return the base
        run's outputs without computing (or run on one row where that shortcut does not
        hold), and positions < p0 come from the cache. Returns last-position logits, or with
        late_head the unembedding's input (n, 1, D).
        """
        n = batch.n
        fast = start is not None
        extra = {}
        prompts, row_prompt = np.unique(batch.prompt, return_inverse=True)
        one = len(prompts) == 1        # one base prompt: computed once, widened where patches land
        with ExitStack() as stack:
            if not fast:
                ids = batch.ids[torch.as_tensor(batch.prompt)]
            else:
                bases = [batch.ids[int(p)].view(-1) for p in prompts]
                ids = bases[0][p0:].view(1, -1) if one else \
                    torch.stack(bases)[torch.as_tensor(row_prompt)][:, p0:]
                # the first module that sees a patched value: there the hidden state is widened
                site = self.c.blocks[start] if start < self.c.n_layers else self.c.final_norm
                if p0 > 0:
                    extra = {self._cache_kw: self._prefix_cache(bases[0], p0, n, start) if one else
                             stack_caches([self._prefix_cache(b, p0, 1, 0) for b in bases], row_prompt),
                             "use_cache": True}
                if start > 0 and self.support()["skip"]:
                    states = [self._base(b)[0] for b in bases]
                    pick = torch.as_tensor(row_prompt)
                    for i in range(start):
                        s = states[0][i][:, p0:] if one else torch.cat([st[i][:, p0:] for st in states])[pick]
                        _skip_block(stack, self.c.blocks[i], s.clone() if i == start - 1 else s)
                if n > 1 and one:
                    def widen(m, args, kwargs):
                        h = _get_hidden(args, kwargs)
                        return _set_hidden(args, kwargs, h.expand(n, -1, -1).contiguous())
                    stack.enter_context(site.register_forward_pre_hook(widen, with_kwargs=True))
            self._hooks(stack, batch, fast, p0 if fast else 0)
            if fast and self.support()["last_block"]:
                self._last_position_block(stack)
            if late_head:
                got = self._capture_head(stack)
            logits = self._forward(ids, **extra)
        return got[0] if late_head else logits
