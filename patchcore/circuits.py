"""Circuit discovery: score every edge (EAP, EAP-IG), check the top ones exactly, measure faithfulness.

Base run = the run patched into (corrupted when denoising), source run = the other one.

EAP (Syed et al. 2023): the score of edge u→v is

    (source_u − ablated_u) · d metric / d (v's own residual input), summed over positions,

the gradient taken at the base run, averaged over pairs. ablated_u is the base run's output of
u (ablation corrupted), the mean over a reference set (mean) or zero (zero): with the
corrupted ablation, the first-order estimate of what patching that one edge does to the metric.

EAP-IG (Hanna et al. 2024): the same activation difference times the gradient averaged over
`steps` points on the straight line between the base and the source input embeddings (block 0's
input), at base + (k / steps)·(source − base) for k = 0 .. steps−1. With one step that is the
base run itself, i.e. EAP. When denoising these are the points of Hanna et al.'s code (from the
corrupted input towards the clean one).

Exact check (`check_top`): the receiver's input becomes base input + (source_u − ablated_u) and
nothing else is changed: the q/k/v of that head are recomputed from the new input with the
model's own norm and projection and written (the engine's q/k/v writes), an MLP receiver gets its
norm's output of the new input, logits the new final residual stream. One batch row per edge,
through engine.run_batch. Stored as `exact`: metric(patched) − metric(base), the same units as
the score.

Faithfulness: circuit_faith.py.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .ablations import RefSet
from .backends.base import Batch, Writes
from .circuit_faith import (ablated_outputs, ablation_masks, default_reference, log_grid,
                            normalised_curve, pair_curve, rows_per_forward, ticker)
from .circuit_graph import build_graph, norms
from .circuit_result import CircuitResult
from .circuit_trace import Prefix, receiver_grads, sender_outputs, trace
from .engine import batch_rows, make_backend, run_batch
from .errors import SweepError
from .interventions import prepare_pairs
from .metrics import check_metric, compute_metric, from_readout
from .paths import MLP_IN
from .results import stamp
from .sites import COMPONENTS, get_direction

METHODS = ("eap", "eap-ig")
CIRCUIT_ABLATIONS = ("corrupted", "mean", "zero")
DEFAULT_STEPS = 5
DEFAULT_EDGES = 100
DEFAULT_POINTS = 16
MAX_STEPS = 100


def _check_args(method, steps, ablation, edges, check_top):
    if method not in METHODS:
        raise SweepError(f"Unknown method '{method}'. Choose one of: {', '.join(METHODS)}.", field="method")
    if not 1 <= int(steps) <= MAX_STEPS:
        raise SweepError(f"steps must be from 1 to {MAX_STEPS}.", field="steps")
    if ablation not in CIRCUIT_ABLATIONS:
        raise SweepError(f"Circuits ablate edges with one of: {', '.join(CIRCUIT_ABLATIONS)} (not "
                         f"'{ablation}').", field="ablation")
    if int(edges) < 1 or int(check_top) < 0:
        raise SweepError("edges must be at least 1 and check_top at least 0.", field="edges")


def _capture(model, group, d):
    """Base then source rows of the pairs: (trace, sender outputs (2P, S, T, D), metrics (2P,))."""
    ids = torch.tensor([d.pick(p.clean_ids, p.corrupted_ids)[1] for p in group] +
                       [d.pick(p.clean_ids, p.corrupted_ids)[0] for p in group])
    return ids, trace(model, ids)


def _pair_scores(model, graph, pair, d, method, steps, metric, ablated, grad_rows, tick):
    """(S, R) float64 edge scores of one pair; its base and source metrics."""
    with model.locked(), torch.inference_mode():
        ids, rec = _capture(model, [pair], d)
        outs = sender_outputs(model, graph, rec)
        m = compute_metric(metric, rec["logits"], pair.answer_id, pair.wrong_id).double().cpu().numpy()
        delta = outs[1] - (outs[0] if ablated is None else ablated)
        base_in, src_in = rec["input"][:1], rec["input"][1:]
        del outs
    p0 = Prefix.start(model, pair, ablated is None)    # before p0 every delta is zero
    prefix = Prefix(model, ids[0].tolist(), p0) if p0 else None
    gsum = torch.zeros((graph.n_receivers, ids.shape[1] - p0, base_in.shape[-1]), dtype=torch.float64,
                       device=model.device)
    for start in range(0, steps, grad_rows):
        ks = list(range(start, min(steps, start + grad_rows)))
        embed = None
        if method == "eap-ig":
            alpha = torch.tensor([k / steps for k in ks], device=base_in.device, dtype=base_in.dtype)
            embed = base_in + alpha[:, None, None] * (src_in - base_in)
        with model.locked(), torch.inference_mode(False), torch.enable_grad():
            g_rec = trace(model, ids[[0] * len(ks)], embed=None if embed is None else embed.clone(),
                          grad=True, prefix=prefix)
            g = receiver_grads(model, graph, g_rec, metric, pair.answer_id, pair.wrong_id)
        gsum += g.double().sum(0)
        tick(len(ks))
    a = delta[:, p0:].reshape(graph.n_senders, -1).double()
    return (a @ gsum.reshape(graph.n_receivers, -1).T / steps).cpu().numpy(), m


def _check_edges(model, graph, backend, pair, d, rec, delta, senders, receivers, metric, base_metric,
                 batch_size, cancel, on_wait, chunk: int = 512) -> np.ndarray:
    """Exact effect (metric − base metric) of patching each edge (senders[i] → receivers[i]) alone."""
    c = model.components
    kinds = graph.receiver_kinds()
    comps = {"q": COMPONENTS["q"], "k": COMPONENTS["k"], "v": COMPONENTS["v"], "mlp": MLP_IN,
             "logits": COMPONENTS["resid"]}
    base_ids = torch.tensor([d.pick(pair.clean_ids, pair.corrupted_ids)[1]])
    out = np.empty(len(senders))
    for start in range(0, len(senders), chunk):
        s_idx, r_idx = senders[start:start + chunk], receivers[start:start + chunk]
        n = len(s_idx)
        by: dict = {}
        for row, (u, r) in enumerate(zip(s_idx, r_idx)):
            kind, layer, head = kinds[r]
            by.setdefault((kind, min(layer, c.n_layers - 1)), []).append((row, u, head))
        writes = []
        with model.locked(cancel, on_wait), torch.inference_mode():
            for (kind, layer), items in by.items():
                rows = np.array([i[0] for i in items])
                dx = delta[[i[1] for i in items]]                               # (n_l, T, D)
                attn_norm, mlp_norm = norms(model, layer)
                if kind in ("q", "k", "v"):
                    x = rec["attn_in"][layer][0] + dx
                    val = comps[kind].module(c, layer).forward(attn_norm.forward(x))
                elif kind == "mlp":
                    val = mlp_norm.forward(rec["mlp_in"][layer][0] + dx)
                else:
                    val = rec["final"][0] + dx
                table = [None] * c.n_layers
                table[layer] = _first_tensor(val)
                writes.append(Writes(comps[kind], rows, np.full(len(rows), layer), np.full(len(rows), -1),
                                     np.array([i[2] for i in items]), np.arange(len(rows)), table))
        batch = Batch(base_ids, np.zeros(n, dtype=np.int64), writes, np.full(n, pair.answer_id),
                      np.full(n, pair.wrong_id))
        got, _ = run_batch(model, batch, backend, batch_size or batch_rows(model, base_ids.shape[1]),
                           cancel=cancel, on_wait=on_wait)
        out[start:start + n] = from_readout(metric, got) - base_metric
    return out


def _first_tensor(x):
    return x if isinstance(x, torch.Tensor) else x[0]


def run_circuit(model, pairs, method: str = "eap", *, steps: int = DEFAULT_STEPS,
                direction: str = "denoise", metric: str = "logit_diff", ablation: str = "corrupted",
                edges: int = DEFAULT_EDGES, check_top: int = 0, curve_points: int = DEFAULT_POINTS,
                reference: RefSet | None = None, batch_size: int | None = None, progress=None,
                cancel=None, on_wait=None, backend=None) -> CircuitResult:
    """Score every edge of the model's graph over the pairs, check the top `check_top` edges exactly,
    and measure faithfulness for the top k edges, k on a log grid (with k = `edges`).

    pairs: a PromptPair, PreparedPair, a list of them, or a PairDataset. Returns a CircuitResult
    (edges sorted by |score|, the curve, the faithfulness of the top `edges`)."""
    d = get_direction(direction)
    check_metric(metric)
    _check_args(method, steps, ablation, edges, check_top)
    steps = int(steps) if method == "eap-ig" else 1
    graph = build_graph(model)
    prepared = prepare_pairs(model, pairs)
    reference = default_reference(model, ablation, d, prepared, reference)
    es, er = graph.edges()
    E, P = len(es), len(prepared)
    K, T_check = min(int(edges), E), min(int(check_top), E)
    ks = log_grid(E, curve_points, [K])
    tick = ticker(P * (steps + T_check + len(ks)), progress, cancel)

    backend = make_backend(model, backend)
    c = model.components
    lengths = sorted({p.n_tokens for p in prepared})
    groups = {T: [i for i, p in enumerate(prepared) if p.n_tokens == T] for T in lengths}
    ablated = {}
    notes = []
    t0 = time.perf_counter()
    full = np.zeros((graph.n_senders, graph.n_receivers))
    metrics = np.empty((P, 2))                    # base, source
    grad_rows = max(1, min(64, batch_rows(model, lengths[-1]) // c.n_layers))
    for T, idx in groups.items():
        ablated[T], note = ablated_outputs(model, graph, ablation, reference, T)
        if note:
            notes.append(note)
        for i in idx:
            got, metrics[i] = _pair_scores(model, graph, prepared[i], d, method, steps, metric,
                                           ablated[T], grad_rows, tick)
            full += got
    scores = full[es, er] / P
    order = np.argsort(-np.abs(scores), kind="stable")
    t1 = time.perf_counter()

    exact = np.full(E, np.nan)
    exact_sum = np.zeros(T_check)
    curve_vals = np.zeros((P, len(ks)))
    masks = ablation_masks(graph, order, ks, es, er)
    rows_run = P * (2 + steps) + P * (2 + T_check)
    t_check = 0.0
    for T, idx in groups.items():
        per_fwd = rows_per_forward(model, graph, T)
        for i in idx:
            pair = prepared[i]
            with model.locked(cancel, on_wait), torch.inference_mode():
                _, rec = _capture(model, [pair], d)
                outs = sender_outputs(model, graph, rec)
                delta = outs[1] - (outs[0] if ablated[T] is None else ablated[T])
            if T_check:
                tc = time.perf_counter()
                top = order[:T_check]
                exact_sum += _check_edges(model, graph, backend, pair, d, rec, delta, es[top], er[top],
                                          metric, metrics[i, 0], batch_size, cancel, on_wait)
                t_check += time.perf_counter() - tc
                tick(T_check)
            curve_vals[i], n = pair_curve(model, graph, pair, d, ablated[T], masks, metric, per_fwd,
                                          cancel, on_wait, tick)
            rows_run += n
    if T_check:
        exact[order[:T_check]] = exact_sum / P
    seconds = time.perf_counter() - t0
    clean = metrics[:, 1] if d.source_row == 0 else metrics[:, 0]
    corrupted = metrics[:, 0] if d.source_row == 0 else metrics[:, 1]
    senders, receivers = graph.senders(), graph.receivers()
    result = CircuitResult(
        model=model.label, method=method, steps=steps, direction=d.name, metric=metric,
        ablation=ablation, reference="; ".join(dict.fromkeys(notes)), n_pairs=P,
        n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, parallel_residual=graph.parallel,
        clean_metric=float(clean.mean()), corrupted_metric=float(corrupted.mean()),
        sender=[senders[s] for s in es[order]], receiver=[receivers[r] for r in er[order]],
        score=scores[order], exact=exact[order], top_k=K, check_top=T_check,
        curve=normalised_curve(ks, curve_vals.mean(0)),
        pairs=[p.pair.to_dict() for p in prepared], seconds=seconds,
        timings={"scores_seconds": t1 - t0, "check_seconds": t_check,
                 "curve_seconds": seconds - (t1 - t0) - t_check},
        forward_rows=int(rows_run), backend=backend.name, **stamp(model))
    result.warnings.extend(result.default_warnings())
    if int(edges) > E:
        result.warnings.append(f"{int(edges):,} edges were asked for, and the graph has {E:,}: the circuit "
                               f"is all of them.")
    return result
