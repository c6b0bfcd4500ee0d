"""transformers key/value caches of a prompt's prefix, for forwards that skip those positions.

A patch at position p changes nothing before p (causal attention), so the keys and
values of positions < p can come from the unpatched prompt's own run.
"""
from __future__ import annotations

import copy

import torch


def cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def slice_cache(full, p0: int):
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


def widen_cache(base, rows: int, from_layer: int):
    """A fresh copy of a cache, its layers from from_layer up widened to `rows` rows."""
    cache = copy.copy(base)          # update() rebinds tensors, never writes into them
    cache.layers = [copy.copy(layer) for layer in base.layers]
    for i, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None)
        if i >= from_layer and rows > 1 and keys is not None and keys.dim() == 4:
            layer.keys = keys.expand(rows, -1, -1, -1)
            layer.values = layer.values.expand(rows, -1, -1, -1)
    return cache


def stack_caches(caches: list, index) -> object:
    """One cache for a batch whose row r continues prompt index[r]: every layer's keys and
    values gathered from the one-row caches of the prompts."""
    pick = torch.as_tensor(index)
    cache = copy.copy(caches[0])
    cache.layers = [copy.copy(layer) for layer in caches[0].layers]
    for i, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.dim() == 4:
            layer.keys = torch.cat([c.layers[i].keys for c in caches])[pick]
            layer.values = torch.cat([c.layers[i].values for c in caches])[pick]
    return cache
