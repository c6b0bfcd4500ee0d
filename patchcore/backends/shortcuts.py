"""The pieces the hook backend is built from: module inputs and outputs, vectorised writes,
forward overrides, and the check of which exact shortcuts hold on a model.

Every shortcut is checked once per architecture on a random prompt against a plain
forward (check_shortcuts); one that does not hold for a family (or fails) is left out for
that model, and the plain computation runs instead. The outcome is kept per machine
(machine_cache), so a new process does not check again.
"""
from __future__ import annotations

import weakref
from contextlib import ExitStack

import torch

from .. import machine_cache
from ..sites import Component
from .prefix_cache import slice_cache, widen_cache


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


def apply_writes(x: torch.Tensor, component: Component, components, groups, offset: int = 0,
                 copy_x: bool = True) -> torch.Tensor:
    """x (B, t, W) with the writes of one module applied, positions offset.. (cached prefix);
    patterns: x (B, heads, t, T).

    groups: [(all_pos, all_head, rows, pos, heads, src, table)], index tensors of equal
    length; table (S, T, W) holds the values (row src[j] of it goes into row rows[j])."""
    if copy_x:
        x = x.clone(memory_format=torch.contiguous_format)
    x4 = component.heads_view(x, components)
    for all_pos, all_head, rows, pos, heads, src, table in groups:
        s4 = component.heads_view(table.to(device=x.device, dtype=x.dtype), components)[:, offset:]
        rows, src = rows.to(x.device), src.to(x.device)
        if all_pos:
            if all_head:
                x4[rows] = s4[src]
            else:
                heads = heads.to(x.device)
                x4[rows, :, heads] = s4[src, :, heads]
            continue
        pos = pos.to(x.device) - offset
        if all_head:
            x4[rows, pos] = s4[src, pos]
        else:
            heads = heads.to(x.device)
            x4[rows, pos, heads] = s4[src, pos, heads]
    return x


SHORTCUTS = ("prefix", "sliced", "skip", "head", "last_block")  # see check_shortcuts
# per transformers model: which shortcuts were checked to hold (see HookBackend.support)
_SUPPORT: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


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


def check_shortcuts(b) -> dict:
    """Which shortcuts hold on the hook backend b's model (cached per model and per machine).

    prefix: a prompt run as prefix (cached keys/values) + rest equals one forward;
    sliced: the prefix cache may be cut from the whole prompt's cache (no sliding
    window), so no prefix runs are needed; skip: blocks may be replaced by the base
    run's outputs; head: the logits are the unembedding of the last hidden state and
    nothing else (no final soft-capping), so the forwards of a batch can share one
    unembedding; last_block: the last block's MLP, attention output projection and (where
    separate) query projection may run on the last position only.
    """
    sup = _SUPPORT.get(b.hf)
    if sup is not None:
        return sup
    key = machine_cache.model_key(b.model, "support")
    known = machine_cache.get("support", key)
    if isinstance(known, dict) and set(known) == set(SHORTCUTS):
        _SUPPORT[b.hf] = known
        return known
    sup = dict.fromkeys(SHORTCUTS, False)
    with torch.inference_mode():
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, b.c.vocab_size, (12,), generator=g)
        try:
            states, full_cache, full = b._base_run(ids)
        except Exception:  # noqa: BLE001
            _SUPPORT[b.hf] = sup
            return sup
        tol = (1e-3 if b.model.dtype == torch.float32 else 5e-2) * (1 + full.abs().max().item())
        try:   # in low precision the same prompt in a batch of two is already off by this much
            twin = b._forward(ids.view(1, -1).expand(2, -1))[1:]
            tol = max(tol, 4 * (full - twin).abs().max().item())
        except Exception:  # noqa: BLE001
            pass

        def same(run) -> bool:
            try:
                got = run()
                return bool(torch.isfinite(full).all()) and (full - got).abs().max().item() <= tol
            except Exception:  # noqa: BLE001 - this family's code path differs: no shortcut
                return False

        def with_cache(cache):
            return lambda: b._forward(ids[7:].view(1, -1), use_cache=True,
                                         **{b._cache_kw: widen_cache(cache, 1, 0)})

        if b._cache_kw is not None:
            sup["prefix"] = same(with_cache(b._prefix_run(ids, 7)))
            sliced = slice_cache(full_cache, 7)
            sup["sliced"] = sup["prefix"] and sliced is not None and same(with_cache(sliced))

        def skipped():
            with ExitStack() as stack:
                for i in range(b.c.n_layers // 2 + 1):
                    _skip_block(stack, b.c.blocks[i], states[i].clone())
                return b._forward(ids.view(1, -1))
        sup["skip"] = same(skipped)

        def late_head():
            with ExitStack() as stack:
                h = capture_head(stack, b.c)
                b._forward(ids.view(1, -1))
            return b._unembed(h)
        sup["head"] = same(late_head)

        def last_block():
            with ExitStack() as stack:
                last_position_block(stack, b.c)
                return b._forward(ids.view(1, -1))
        sup["last_block"] = same(last_block)
    _SUPPORT[b.hf] = sup
    machine_cache.put("support", key, sup)
    return sup



def last_position_block(stack: ExitStack, components) -> None:
    """Until the stack closes, the last block computes its MLP, its attention output projection
    and (where it is a module of its own) its query projection on the last position only, and
    gives zeros elsewhere: only the last position's logits are read, and the other positions'
    queries and outputs in the last block feed nothing else (their keys and values, which the
    last position attends to, are computed as before). Exact for the logits; checked per model
    (check_shortcuts). About a fifth of a block's work per row, saved on every row."""
    last = [components.mlp[-1], components.attn_out[-1]]
    if components.paths.qkv_layout == "separate":
        last.append(components.q[-1])
    for module in last:
        _last_only(stack, module)


def _last_only(stack: ExitStack, module: torch.nn.Module) -> None:
    # the module's forward as called now: on an accelerate-placed model that is accelerate's
    # wrapper, which brings an offloaded layer's weights in (the class's forward would not)
    forward = module.forward

    def last_only(x, *args, **kwargs):
        out = forward(x[:, -1:], *args, **kwargs)
        full = out.new_zeros(x.shape[:-1] + out.shape[-1:])
        full[:, -1:] = out
        return full
    _override_forward(stack, module, last_only)


def capture_head(stack: ExitStack, components) -> list:
    """Until the stack closes, the unembedding records its input and returns zeros."""
    got: list = []

    def capture(h, *args, **kwargs):
        got.append(h)
        return h.new_zeros(1, 1, 1).expand(h.shape[0], h.shape[1], components.vocab_size)
    _override_forward(stack, components.unembed, capture)
    return got
