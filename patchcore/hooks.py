"""The local backend: batched patching with plain PyTorch hooks on the HF model.

One forward pass carries many patches, one per batch row. Patches are written
with vectorised index assignments, one per (layer, batch), never per cell.
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack

import numpy as np
import torch

from .models import LoadedModel


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_first(output, new):
    if isinstance(output, torch.Tensor):
        return new
    return (new,) + tuple(output[1:])


def apply_patch(x: torch.Tensor, src: torch.Tensor, rows, pos, heads, n_heads: int) -> torch.Tensor:
    """Return a copy of x (B, T, D) with src (T, D) written into the given rows.

    rows, pos, heads are 1-D index tensors of equal length (pos/heads may be None,
    meaning all positions / the whole vector).
    """
    x = x.clone(memory_format=torch.contiguous_format)
    src = src.to(x.dtype)
    if heads is None:
        if pos is None:
            x[rows] = src
        else:
            x[rows, pos] = src[pos]
        return x
    b, t, d = x.shape
    x4 = x.view(b, t, n_heads, d // n_heads)
    s4 = src.reshape(t, n_heads, d // n_heads)
    if pos is None:
        x4[rows, :, heads] = s4.permute(1, 0, 2)[heads]
    else:
        x4[rows, pos, heads] = s4[pos, heads]
    return x


class HookBackend:
    """Runs baseline and patched forwards on a local model with torch hooks."""

    name = "local"

    def __init__(self, model: LoadedModel):
        self.model = model
        self.hf = model.hf
        self.c = model.components
        params = inspect.signature(self.hf.forward).parameters
        self._kw = {"use_cache": False}
        if "logits_to_keep" in params:  # only the last position's logits are read
            self._kw["logits_to_keep"] = 1

    # -- modules -----------------------------------------------------------
    def _module(self, component: str, layer: int) -> torch.nn.Module:
        return {"resid": self.c.blocks, "attn": self.c.attn, "mlp": self.c.mlp,
                "head": self.c.attn_out}[component][layer]

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.hf(input_ids=ids.to(self.model.device), **self._kw)
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

    # -- patched ---------------------------------------------------------------
    def patched(self, base_ids: torch.Tensor, source: list, cells: np.ndarray,
                component: str, skip_lower: bool = True) -> torch.Tensor:
        """One forward with one patch per row. cells: (n, 3) of (layer, position, head), -1 = all.

        With skip_lower, layers below the batch's lowest patched layer run once on a
        single row, and the hidden state is copied to all rows at that layer: a patch
        at layer l cannot change anything below l.
        """
        n = cells.shape[0]
        dev = self.model.device
        start = int(cells[:, 0].min()) if skip_lower else 0
        ids = base_ids.view(1, -1) if skip_lower else base_ids.view(1, -1).expand(n, -1)
        with ExitStack() as stack:
            if skip_lower:
                def widen(m, args, kwargs):
                    if args:
                        return (args[0].expand(n, -1, -1).contiguous(),) + tuple(args[1:]), kwargs
                    kwargs = dict(kwargs)
                    kwargs["hidden_states"] = kwargs["hidden_states"].expand(n, -1, -1).contiguous()
                    return args, kwargs
                stack.enter_context(self.c.blocks[start].register_forward_pre_hook(widen, with_kwargs=True))
            for layer in np.unique(cells[:, 0]):
                sel = cells[:, 0] == layer
                rows = torch.as_tensor(np.nonzero(sel)[0], device=dev)
                pos = cells[sel, 1]
                heads = cells[sel, 2]
                pos_t = None if pos[0] < 0 else torch.as_tensor(pos, device=dev)
                heads_t = None if heads[0] < 0 else torch.as_tensor(heads, device=dev)
                src = source[int(layer)]
                mod = self._module(component, int(layer))
                nh = self.c.n_heads
                if component == "head":
                    def pre(m, args, src=src, rows=rows, pos_t=pos_t, heads_t=heads_t):
                        return (apply_patch(args[0], src, rows, pos_t, heads_t, nh),) + tuple(args[1:])
                    stack.enter_context(mod.register_forward_pre_hook(pre))
                else:
                    def post(m, args, output, src=src, rows=rows, pos_t=pos_t):
                        return _replace_first(output, apply_patch(_first(output), src, rows, pos_t, None, nh))
                    stack.enter_context(mod.register_forward_hook(post))
            logits = self._forward(ids)
        return logits
