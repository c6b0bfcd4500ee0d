"""Faithfulness: how much of the behaviour a set of edges carries on its own.

A circuit forward runs the SOURCE prompt (clean when denoising) and gives every receiver the input

    its residual input in this forward − Σ over ablated edges u→v of (current_u − ablated_u)

where current_u is sender u's output in this very forward and ablated_u the base run's output
(ablation corrupted; the corrupted prompt when denoising), the mean over a reference set
(mean) or zero (zero). Edges in the circuit keep their value, every other edge is ablated (as
EAP-IG's evaluation does). No edge kept: every receiver reads the ablated residual stream (with
the corrupted ablation: the base run); every edge kept: the source run, unchanged.

Faithfulness of k edges = (metric(top k) − metric(none)) / (metric(all) − metric(none)), means
over pairs, so 0 edges give exactly 0 and all edges exactly 1 (both are forwards of their own,
and tests check them against the plain runs). The curve takes k on a log grid.

Rows: one per edge set; with the corrupted ablation row 0 is the base prompt, run plainly, and
its senders' outputs are the ablated values of the other rows (nothing to store between passes).
"""
from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import torch

from .backends.hooks import _first, _get_hidden
from .circuit_graph import Graph, norms
from .circuit_trace import HEAD, QKV, _logits_kw, maps
from .metrics import compute_metric


def log_grid(n_edges: int, points: int, extra=()) -> list[int]:
    """0, the number of edges, `extra` and about `points` sizes spread evenly in log k between."""
    ks = {0, int(n_edges)} | {int(k) for k in extra if 0 <= int(k) <= n_edges}
    if n_edges > 0 and points > 0:
        ks |= {int(round(x)) for x in np.logspace(0, np.log10(n_edges), points)}
    return sorted(ks)


def ablation_masks(graph: Graph, order: np.ndarray, ks: list[int], edges_s: np.ndarray,
                   edges_r: np.ndarray) -> torch.Tensor:
    """(len(ks), S, R) float: 1 where an edge is ablated when the top k edges (by `order`, indices
    into the edge list) are kept."""
    out = torch.zeros((len(ks), graph.n_senders, graph.n_receivers))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    for i, k in enumerate(ks):
        off = rank >= k
        out[i, edges_s[off], edges_r[off]] = 1.0
    return out


def circuit_forward(model, graph: Graph, ids: torch.Tensor, ablate: torch.Tensor,
                    ablated: torch.Tensor | None, answer: int, wrong: int, metric: str,
                    prefix=None) -> np.ndarray:
    """Metric per row of a circuit forward. ids (B, T); ablate (B, S, R) (1 = edge ablated);
    ablated (S, T, D) the ablated outputs, or None: row 0's own outputs (row 0 must ablate
    nothing; only then may a circuit_trace.Prefix skip the positions where all rows are the
    base run). The caller holds the model's lock and inference mode."""
    c, mp = model.components, maps(model)
    extra = {}
    if prefix is not None:
        ids, extra = ids[:, prefix.p0:], prefix.kwargs(ids.shape[0])
    B, T = ids.shape
    S = graph.n_senders
    dev = model.device
    out = torch.zeros((B, S, T, c.d_model), device=dev, dtype=model.dtype)
    ab = ablate.to(device=dev, dtype=model.dtype)
    pending: dict = {}

    fixed = None if ablated is None else ablated.to(dev, model.dtype)

    def adjust(n: int, recv) -> torch.Tensor | None:
        """Σ over the first n senders of ablate · (current − ablated), for receivers `recv`
        (two contractions: the difference (B, n, T, D) is never formed)."""
        a = ab[:, :n, recv]
        if not bool(a.any()):
            return None
        base = out[0, :n] if fixed is None else fixed[:n]
        return (torch.einsum("bn...,bntd->b...td", a, out[:, :n])
                - torch.einsum("bn...,ntd->b...td", a, base))

    with ExitStack() as stack:
        def block0(m, args, kwargs):
            out[:, 0] = _get_hidden(args, kwargs)
        stack.enter_context(c.blocks[0].register_forward_pre_hook(block0, with_kwargs=True))
        for layer in range(c.n_layers):
            attn_norm, mlp_norm = norms(model, layer)

            def attn_in(m, args, layer=layer, norm=attn_norm):
                adj = adjust(graph.senders_before(layer), graph.attn_receivers(layer))  # (B, Ra, T, D)
                if adj is None:
                    return
                x = args[0]
                dn = norm.forward(x[:, None] - adj) - norm.forward(x)[:, None]
                start = 0
                for comp in QKV:
                    m_, _ = mp.qkv[layer][comp.name]
                    n = m_.shape[1]
                    pending[(layer, comp.name)] = torch.einsum("bntd,dne->btne", dn[:, start:start + n],
                                                               m_.to(dn.dtype))
                    start += n
            stack.enter_context(attn_norm.register_forward_pre_hook(attn_in))
            mods = {}
            for comp in QKV:
                mods.setdefault(id(comp.module(c, layer)), (comp.module(c, layer), []))[1].append(comp)
            for mod, comps in mods.values():
                def proj(m, args, output, layer=layer, comps=comps):
                    if not any((layer, k.name) in pending for k in comps):
                        return None
                    y = _first(output).clone()
                    for k in comps:
                        delta = pending.pop((layer, k.name), None)
                        if delta is not None:
                            k.heads_view(y, c).add_(delta)
                    return y if isinstance(output, torch.Tensor) else (y,) + tuple(output[1:])
                stack.enter_context(mod.register_forward_hook(proj))

            def heads(m, args, layer=layer):
                z = HEAD.heads_view(args[0], c)
                first = graph.head_sender(layer, 0)
                out[:, first:first + c.n_heads] = torch.einsum("bthe,hed->bhtd", z,
                                                               mp.out[layer].to(z.dtype))
            stack.enter_context(c.attn_out[layer].register_forward_pre_hook(heads))

            def mlp_in(m, args, layer=layer):
                adj = adjust(graph.senders_before(layer, mlp=True), graph.mlp_receiver(layer))
                return None if adj is None else (args[0] - adj,) + tuple(args[1:])
            stack.enter_context(mlp_norm.register_forward_pre_hook(mlp_in))

            def mlp_out(m, args, output, layer=layer):
                out[:, graph.mlp_sender(layer)] = _first(output)
            stack.enter_context(c.mlp[layer].register_forward_hook(mlp_out))

        def final(m, args):
            adj = adjust(S, graph.logits_receiver)
            return None if adj is None else (args[0] - adj,) + tuple(args[1:])
        stack.enter_context(c.final_norm.register_forward_pre_hook(final))
        logits = model.hf(input_ids=ids.to(dev), **{**_logits_kw(model.hf), **extra}).logits[:, -1, :]
    return compute_metric(metric, logits, answer, wrong).double().cpu().numpy()


def rows_per_forward(model, graph: Graph, n_tokens: int, budget_mb: int = 512) -> int:
    """Circuit-forward rows that fit: each row keeps every sender's output (S, T, D)."""
    elem = torch.finfo(model.dtype).bits // 8
    per_row = 3 * graph.n_senders * n_tokens * model.components.d_model * elem
    return int(max(2, min(256, budget_mb * 2**20 // per_row)))
