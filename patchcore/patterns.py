"""Where attention heads look: the attention probabilities of one layer's heads on both prompts of
a pair, and, for the heads a result ranks highest, the tokens the last position attends to.

The first thing a researcher opens after a head heatmap: a head that matters and attends from
the last token to the second 'Mary' tells a different story from one that attends to itself.
The probabilities are read through patchcore.attention (eager attention with a hook between the
softmax and the values), so they are the same numbers on every family, SDPA models included.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .attention import pattern_hooks
from .prompts import PreparedPair
from .sites import get_direction


@dataclass
class Patterns:
    """Attention probabilities of one layer on a pair: clean and corrupted, (heads, query, key)."""
    layer: int
    clean: np.ndarray
    corrupted: np.ndarray
    clean_tokens: list
    corrupted_tokens: list


def attention_patterns(model, prepared: PreparedPair, layer: int, cancel=None, on_wait=None) -> Patterns:
    """One forward of both prompts (holding the model's lock) reading layer `layer`'s attention."""
    c = model.components
    if not 0 <= layer < c.n_layers:
        raise ValueError(f"layer {layer} is not in 0..{c.n_layers - 1}")
    seen = {}

    def keep(p):
        seen["p"] = p.detach().float().cpu()
        return p

    ids = torch.tensor([prepared.clean_ids, prepared.corrupted_ids], device=model.device)
    with model.locked(cancel=cancel, on_wait=on_wait), torch.inference_mode(), \
            pattern_hooks(model.hf, c.attn, {layer: keep}):
        try:
            model.hf(input_ids=ids, use_cache=False, logits_to_keep=1)
        except TypeError:
            model.hf(input_ids=ids, use_cache=False)
    p = seen["p"].numpy()
    return Patterns(layer, p[0], p[1], list(prepared.clean_tokens), list(prepared.corrupted_tokens))


def query_heads(result, head: int, n_heads: int, n_kv_heads: int) -> list[int]:
    """The query heads a result's head index stands for: itself, or, on a key/value-head axis,
    every query head that shares that key/value head."""
    if "kv_head" not in result.axes:
        return [head]
    group = max(1, n_heads // max(1, n_kv_heads))
    return list(range(head * group, min(n_heads, (head + 1) * group)))


def top_heads(result, k: int = 5) -> list[tuple[int, int, float]]:
    """(layer, head, effect) of the k cells with the largest effect in a head result (a head's
    best position counts for layer × position × head results). The effect is the share of the
    clean behaviour restored (denoising) or destroyed (noising)."""
    axis = "head" if "head" in result.axes else "kv_head" if "kv_head" in result.axes else None
    if axis is None:
        return []
    e = np.asarray(get_direction(result.direction).effect(result.normalized), dtype=float)
    e = np.where(np.isfinite(e), e, -np.inf)
    if "position" in result.axes:
        e = e.max(axis=result.axes.index("position"))   # (layer, head)
    order = np.argsort(-e.reshape(-1))[:k]
    out = []
    for i in order:
        layer, head = np.unravel_index(int(i), e.shape)
        if np.isfinite(e[layer, head]):
            out.append((int(layer), int(head), float(e[layer, head])))
    return out


def attends_to(probs: np.ndarray, tokens: list, query: int = -1, k: int = 3) -> list[tuple[int, str, float]]:
    """(position, token, probability) of the k keys one query position attends to most."""
    row = probs[query]
    order = np.argsort(-row)[:k]
    return [(int(i), tokens[int(i)], float(row[i])) for i in order]


def describe(p: Patterns, head: int, query: int = -1) -> str:
    """One sentence: where the head looks from the query position, in both runs."""
    def words(probs, tokens):
        return ", ".join(f"{tok.strip() or tok!r} (position {i}, {pr:.0%})"
                         for i, tok, pr in attends_to(probs, tokens, query, 2))
    q = query % p.clean.shape[1]
    return (f"From position {q} ({p.clean_tokens[q]!r}), head {p.layer}.{head} attends most to "
            f"{words(p.clean[head], p.clean_tokens)} in the clean run, and to "
            f"{words(p.corrupted[head], p.corrupted_tokens)} in the corrupted run.")
