"""Attention probabilities as something to read and patch, on any supported family.

transformers computes attention inside a function chosen by name
(`config._attn_implementation`: eager, sdpa, flash…), so the probabilities are not
any module's input or output, and SDPA never forms them at all. While patterns are
read or written, the model runs `attention` below instead: eager attention
(scores, soft-capping, the additive mask, softmax in fp32, probabilities times
values), registered with transformers' AttentionInterface under IMPLEMENTATION,
with a hook between the softmax and the values. It gives the eager numbers on
every family and works the same for models loaded with SDPA.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

IMPLEMENTATION = "patchcore_eager"
_HOOK = "_patchcore_pattern_hook"   # attribute set on an attention module while a hook is on


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
              softcap=None, **kwargs):
    """Eager attention with a pattern hook: (output (B, T, H, d), probabilities (B, H, T, S))."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    hook = getattr(module, _HOOK, None)
    if hook is not None:
        probs = hook(probs)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    if IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(IMPLEMENTATION, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)


def _configs(hf) -> list:
    cfg = hf.config
    out = [cfg]
    for name in getattr(cfg, "sub_configs", {}) or {}:
        sub = getattr(cfg, name, None)
        if sub is not None:
            out.append(sub)
    return out


@contextmanager
def pattern_hooks(hf, attn_modules: list, hooks: dict):
    """Until the block ends, `hf` runs IMPLEMENTATION and attention module `layer` passes its
    probabilities (B, heads, queries, keys) through hooks[layer] (which returns them, changed
    or not). The caller holds the model's lock: this changes the model for every caller."""
    _register()
    configs = _configs(hf)
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = IMPLEMENTATION
        for layer, fn in hooks.items():
            setattr(attn_modules[layer], _HOOK, fn)
        yield
    finally:
        for layer in hooks:
            if hasattr(attn_modules[layer], _HOOK):
                delattr(attn_modules[layer], _HOOK)
        for c, impl in zip(configs, before):
            c._attn_implementation = impl
