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

from .backends.shortcuts import _first, _get_hidden
from .ablations import RefSet, ioi_reference
from .circuit_graph import Graph, build_graph, norms
from .circuit_trace import HEAD, QKV, Prefix, _logits_kw, maps, sender_outputs, trace
from .errors import Cancelled, SweepError
from .metrics import compute_metric
from .prompts import PromptPair
from .sites import get_direction


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


def ticker(total: int, progress=None, cancel=None):
    """tick(n): n more units done; reports progress(done, total) and raises Cancelled on cancel()."""
    done = [0]

    def tick(n: int) -> None:
        if cancel is not None and cancel():
            raise Cancelled()
        done[0] += n
        if progress:
            progress(done[0], total)
    return tick


def default_reference(model, ablation: str, d, prepared: list, reference: RefSet | None):
    """The reference set of a mean ablation: the dataset's prompts, or the generated IOI set."""
    if ablation != "mean" or reference is not None:
        return reference
    from .interventions import dataset_reference
    return dataset_reference("mean", d.name, prepared) if len(prepared) > 1 else ioi_reference(model.tokenizer)


def ablated_outputs(model, graph: Graph, ablation: str, reference: RefSet | None, T: int):
    """(S, T, D) ablated sender outputs for prompts of T tokens (None: each pair's base run), note.

    mean: position by position over the reference prompts of T tokens; where there are none, one
    mean over every token of all of them."""
    if ablation == "corrupted":
        return None, ""
    if ablation == "zero":
        return torch.zeros((graph.n_senders, T, model.components.d_model), device=model.device,
                           dtype=model.dtype), ""
    same = reference.of_length(T)
    prompts = same or reference.prompts
    total, count = None, 0
    for i in range(0, len(prompts), 8):
        chunk = prompts[i:i + 8]
        for n in sorted({len(p) for p in chunk}):
            ids = torch.tensor([p for p in chunk if len(p) == n])
            with model.locked(), torch.inference_mode():
                outs = sender_outputs(model, graph, trace(model, ids))
                s = (outs.sum(0) if same else outs.sum((0, 2))[:, None]).double()
            total = s if total is None else total + s
            count += len(ids) if same else len(ids) * n
    mean = (total / count).to(model.dtype)
    if same:
        return mean, f"mean over {len(same)} prompts of {reference.label} with {T} tokens"
    return (mean.expand(-1, T, -1).clone(),
            f"mean over every token of {len(prompts)} prompts of {reference.label} (none has {T} tokens)")


def pair_curve(model, graph: Graph, pair, d, ablated, masks: torch.Tensor, metric: str, per_forward: int,
               cancel=None, on_wait=None, tick=None) -> tuple[np.ndarray, int]:
    """One pair's metric for each edge set (masks (G, S, R), 1 = ablated); and the rows run."""
    base_ids, src_ids = d.pick(pair.clean_ids, pair.corrupted_ids)[1], d.pick(pair.clean_ids, pair.corrupted_ids)[0]
    lead = 1 if ablated is None else 0             # row 0: the base run, ablating nothing
    p0 = Prefix.start(model, pair, lead == 1)
    prefix = Prefix(model, base_ids, p0) if p0 else None
    out, rows = np.empty(len(masks)), 0
    for s in range(0, len(masks), per_forward - lead):
        part = list(range(s, min(len(masks), s + per_forward - lead)))
        ids = torch.tensor([base_ids] * lead + [src_ids] * len(part))
        ab = masks[part]
        if lead:
            ab = torch.cat([torch.zeros_like(ab[:1]), ab])
        with model.locked(cancel, on_wait), torch.inference_mode():
            vals = circuit_forward(model, graph, ids, ab, ablated, pair.answer_id, pair.wrong_id, metric, prefix)
        out[part] = vals[lead:]
        rows += len(ids)
        if tick:
            tick(len(part))
    return out, rows


def normalised_curve(ks: list[int], means: np.ndarray) -> list[dict]:
    """[{edges, faithfulness, metric}]: (metric − metric(0 edges)) / (metric(all) − metric(0 edges));
    ks[0] must be 0 and ks[-1] all edges. NaN where the two ends are the same."""
    gap = means[-1] - means[0]
    faith = (means - means[0]) / gap if abs(gap) > 1e-9 else np.full(len(ks), np.nan)
    return [{"edges": int(k), "faithfulness": float(f) + 0.0, "metric": float(v)}
            for k, f, v in zip(ks, faith, means)]


def circuit_faithfulness(model, result, ks, *, pairs=None, reference: RefSet | None = None,
                         progress=None, cancel=None, on_wait=None) -> list[dict]:
    """Faithfulness of the top k edges of a CircuitResult for each k in `ks` (0 and all edges are
    added: they normalise), on the result's own pairs unless others are given; the result's
    direction, metric and ablation (mean: over the pairs' prompts unless `reference` is given).
    Returns [{edges, faithfulness, metric}] with k ascending."""
    from .interventions import prepare_pairs
    d = get_direction(result.direction)
    graph = build_graph(model)
    if (graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.parallel) != (
            result.n_layers, result.n_heads, result.n_kv_heads, result.parallel_residual):
        raise SweepError("This circuit was found on another model; load that model to measure it.",
                         field="model")
    prepared = prepare_pairs(model, pairs if pairs is not None else
                        [PromptPair(*(p[k] for k in ("clean", "corrupted", "answer", "wrong"))) for p in result.pairs])
    es, er = graph.edges()
    index = {(s, r): i for i, (s, r) in enumerate(zip(es.tolist(), er.tolist()))}
    send = {n: i for i, n in enumerate(graph.senders())}
    recv = {n: i for i, n in enumerate(graph.receivers())}
    order = np.array([index[(send[s], recv[r])] for s, r in zip(result.sender, result.receiver)])
    ks = log_grid(len(es), 0, [int(k) for k in ks])
    masks = ablation_masks(graph, order, ks, es, er)
    reference = default_reference(model, result.ablation, d, prepared, reference)
    vals, ablated = np.empty((len(prepared), len(ks))), {}
    tick = ticker(len(prepared) * len(ks), progress, cancel)
    for i, pair in enumerate(prepared):
        T = pair.n_tokens
        if T not in ablated:
            ablated[T] = ablated_outputs(model, graph, result.ablation, reference, T)[0]
        vals[i], _ = pair_curve(model, graph, pair, d, ablated[T], masks, result.metric,
                                rows_per_forward(model, graph, T), cancel, on_wait, tick)
    return normalised_curve(ks, vals.mean(0))
