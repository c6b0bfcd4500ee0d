"""Attribution patching (AtP): a first-order estimate of every cell of a sweep.

Exact patching needs one forward row per cell. AtP needs two forwards (the clean
and the corrupted prompt, run as one batch of two rows) and one backward pass:

    estimate(cell) = metric(base run) + sum over the cell's slice of
                     d metric / d activation (on the base run) * (source - base activation)

where the base run is the one patched into (corrupted for denoising, clean for
noising) and the source run the one copied from. The slice is the whole vector
at one position (layer x position sweeps), one head's part of it (head sweeps),
summed over all positions for sweeps that patch every position (`layer`, `head`).

It is exact where the metric is linear in the patched activation and a guide
elsewhere; `agreement()` compares it with exact patching, `check_top_k()` runs
the cells it ranks highest exactly. Known weak spots get warnings: the residual
stream, the first layer's MLP, and saturated attention (Kramár et al. 2024, "AtP*").
"""
from __future__ import annotations

import inspect
import time
from contextlib import ExitStack, contextmanager

import numpy as np
import pandas as pd
import torch

from .backends.shortcuts import _first
from .engine import run_cells
from .metrics import check_metric, compute_metric, top_tokens
from .models import LoadedModel
from .prompts import PreparedPair, PromptPair, prepare_pair
from .results import PatchResult, new_result, normalize
from .sites import Component, get_direction
from .sweeps import get_sweep

SATURATION = 0.99   # an attention head whose largest probability exceeds this is saturated


@contextmanager
def _eager_attention(hf):
    """Attention probabilities need the eager implementation; switch to it for one forward."""
    impl = getattr(hf.config, "_attn_implementation", None)
    switched = False
    if impl not in (None, "eager") and hasattr(hf, "set_attn_implementation"):
        try:
            hf.set_attn_implementation("eager")
            switched = True
        except Exception:  # noqa: BLE001 - no eager path: saturation is then not checked
            pass
    try:
        yield impl in (None, "eager") or switched
    finally:
        if switched:
            hf.set_attn_implementation(impl)


def _atp_forward(model: LoadedModel, ids: torch.Tensor, component: Component, base_row: int,
                 metric: str, answer_id: int, wrong_id: int):
    """One forward of both prompts with gradients, one backward of the base row's metric.

    Returns (last logits (2, V), activations per layer (2, T, D), gradients per layer (T, D)
    of the base row, attention maxima (layers, 2, heads) at the last position or None).
    """
    hf, c = model.hf, model.components
    acts: list = [None] * c.n_layers
    with ExitStack() as stack:
        # make the graph start at the embeddings, whether or not the weights require grad
        def leaf(m, args, output):
            return output.detach().requires_grad_(True) if not output.requires_grad else output
        stack.enter_context(hf.get_input_embeddings().register_forward_hook(leaf))
        for layer in range(c.n_layers):
            mod = component.module(c, layer)
            if component.hook == "input":
                def pre(m, args, layer=layer):
                    acts[layer] = args[0]
                stack.enter_context(mod.register_forward_pre_hook(pre))
            else:
                def post(m, args, output, layer=layer):
                    acts[layer] = _first(output)
                stack.enter_context(mod.register_forward_hook(post))
        attn_ok = stack.enter_context(_eager_attention(hf))
        kw = {"use_cache": False}
        if attn_ok:
            kw["output_attentions"] = True
        if "logits_to_keep" in inspect.signature(hf.forward).parameters:
            kw["logits_to_keep"] = 1
        out = hf(input_ids=ids.to(model.device), **kw)
    logits = out.logits[:, -1, :]
    value = compute_metric(metric, logits[base_row:base_row + 1], answer_id, wrong_id).sum()
    grads = torch.autograd.grad(value, acts, allow_unused=True)
    grads = [torch.zeros_like(a[base_row]) if g is None else g[base_row] for a, g in zip(acts, grads)]
    att = getattr(out, "attentions", None)
    amax = None
    if att and all(a is not None for a in att):
        amax = torch.stack([a[:, :, -1, :].max(dim=-1).values for a in att]).detach().float().cpu()
    return logits.detach(), [a.detach() for a in acts], [g.detach() for g in grads], amax


def attribution_scores(acts: list, grads: list, base_row: int, spec, components) -> np.ndarray:
    """Per-cell first-order effects, shaped like the sweep (float64)."""
    src_row = 1 - base_row
    per_layer = []
    for a, g in zip(acts, grads):
        delta = (a[src_row] - a[base_row]).double()
        contrib = spec.component.heads_view(g.double() * delta, components).sum(-1)   # (T, H)
        per_layer.append(contrib if spec.per_head else contrib.sum(-1))            # (T[, H])
    x = torch.stack(per_layer)                                               # (L, T[, H])
    if not spec.per_position:
        x = x.sum(1)
    return x.cpu().numpy()


def atp_warnings(spec, amax: torch.Tensor | None, n_tokens: int) -> list[str]:
    w = [spec.component.atp_note] if spec.component.atp_note else []
    if amax is None:
        w.append("Attention saturation could not be checked for this model (no attention "
                 "probabilities available).")
    else:
        sat = torch.nonzero(amax.max(dim=1).values > SATURATION).tolist()   # (layer, head)
        if sat:
            names = ", ".join(f"L{l}H{h}" for l, h in sat[:6]) + (" …" if len(sat) > 6 else "")
            w.append(f"{len(sat)} attention head(s) are saturated at the last position (largest "
                     f"attention probability > {SATURATION}): {names}. The gradient through a "
                     f"saturated softmax is nearly zero, so attribution patching can miss effects "
                     f"that act through these heads' attention pattern.")
    return w


def run_atp(model: LoadedModel, pair: PromptPair | PreparedPair, sweep: str = "layer_pos",
            direction: str = "denoise", metric: str = "logit_diff", *, cancel=None,
            on_wait=None) -> PatchResult:
    """Estimate every cell of a sweep with attribution patching (method='atp')."""
    spec = get_sweep(sweep)
    base_row = get_direction(direction).target_row      # the run patched into
    check_metric(metric)
    c = model.components
    prepared = pair if isinstance(pair, PreparedPair) else prepare_pair(model.tokenizer, pair)
    t0 = time.perf_counter()
    with model.locked(cancel, on_wait), torch.inference_mode(False), torch.enable_grad():
        # made here, not under a caller's inference_mode: autograd cannot save inference tensors
        ids = torch.tensor([prepared.clean_ids, prepared.corrupted_ids])
        logits, acts, grads, amax = _atp_forward(model, ids, spec.component, base_row, metric,
                                                 prepared.answer_id, prepared.wrong_id)
    metrics = compute_metric(metric, logits, prepared.answer_id, prepared.wrong_id).tolist()
    clean, corrupted = metrics[0], metrics[1]
    effects = attribution_scores(acts, grads, base_row, spec, c)
    values = metrics[base_row] + effects
    result = new_result(model, spec, direction, metric, values, clean, corrupted, prepared=prepared,
                        seconds=time.perf_counter() - t0, forward_rows=2, batch_size=2, method="atp",
                        clean_top=top_tokens(model.tokenizer, logits[0]),
                        corrupted_top=top_tokens(model.tokenizer, logits[1]))
    result.warnings.extend(atp_warnings(spec, amax, prepared.n_tokens))
    return result


# -- agreement with exact patching ------------------------------------------------------

def base_metric(r: PatchResult) -> float:
    """The unpatched value of the run being patched into (corrupted when denoising)."""
    return get_direction(r.direction).target_metric(r.clean_metric, r.corrupted_metric)


def effects(r: PatchResult) -> np.ndarray:
    """How far each cell moves the metric from the unpatched base run."""
    return np.asarray(r.values, dtype=np.float64) - base_metric(r)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant."""
    a = pd.Series(np.asarray(a, dtype=float).ravel())
    b = pd.Series(np.asarray(b, dtype=float).ravel())
    ok = a.notna() & b.notna()
    ra, rb = a[ok].rank(method="average"), b[ok].rank(method="average")
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_cells(values: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k cells with the largest |value| (ties: lower index first)."""
    v = np.nan_to_num(np.abs(np.asarray(values, dtype=float).ravel()), nan=-1.0)  # NaN ranks last
    k = min(k, v.size)
    return np.argsort(-v, kind="stable")[:k]


def agreement(estimate: PatchResult, exact: PatchResult, k: int = 10) -> dict:
    """How well an estimate (AtP) ranks cells compared with exact patching.

    spearman: rank correlation of the cells' effects; top_k_overlap: the share of the k
    cells with the largest |effect| that both methods put in their top k; also the
    largest and mean absolute difference of the normalised scores.
    """
    if estimate.values.shape != exact.values.shape:
        raise ValueError(f"Shapes differ: {estimate.values.shape} vs {exact.values.shape}; "
                         f"compare the same sweep on the same prompts.")
    ea, ee = effects(estimate), effects(exact)
    k = int(min(k, ea.size))
    ta, te = set(top_k_cells(ea, k).tolist()), set(top_k_cells(ee, k).tolist())
    diff = np.abs(estimate.normalized - exact.normalized)
    return {
        "n_cells": int(ea.size),
        "spearman": spearman(ea, ee),
        "k": k,
        "top_k_overlap": len(ta & te) / k if k else float("nan"),
        "top_k_shared": sorted(ta & te),
        "max_abs_diff_normalized": float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan"),
        "mean_abs_diff_normalized": float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan"),
    }


def agreement_text(rep: dict) -> str:
    rho = rep["spearman"]
    return (f"Attribution patching vs exact patching over {rep['n_cells']} cells: Spearman ρ = "
            f"{rho:.2f}; {round(rep['top_k_overlap'] * rep['k'])} of the top {rep['k']} cells agree "
            f"({rep['top_k_overlap']:.0%}); largest difference in normalised score "
            f"{rep['max_abs_diff_normalized']:.2f}.")


def check_top_k(model: LoadedModel, pair: PromptPair | PreparedPair, estimate: PatchResult,
                k: int = 10, *, backend=None, cancel=None, on_wait=None) -> pd.DataFrame:
    """Run exactly the k cells the estimate ranks highest (by |effect|).

    Returns one row per cell, highest estimate first: the sweep's axes, the token,
    the estimated and the exact value, both normalised, and their difference.
    """
    spec = get_sweep(estimate.sweep)
    c = model.components
    prepared = pair if isinstance(pair, PreparedPair) else prepare_pair(model.tokenizer, pair)
    flat = top_k_cells(effects(estimate), k)
    cells = spec.grid(c, prepared.n_tokens)[flat]
    exact, base, _ = run_cells(model, prepared, spec, estimate.direction, estimate.metric, cells,
                               backend=backend, cancel=cancel, on_wait=on_wait)
    est = np.asarray(estimate.values, dtype=float).ravel()[flat]
    idx = np.array(np.unravel_index(flat, estimate.values.shape)).T.reshape(len(flat), -1)
    df = pd.DataFrame(idx, columns=list(spec.axes))
    if "position" in spec.axes:
        df.insert(df.columns.get_loc("position") + 1, "token",
                  [prepared.clean_tokens[p] for p in df["position"]])
    df["atp"] = est
    df["exact"] = exact
    df["atp_normalized"] = normalize(est, base.clean_metric, base.corrupted_metric)
    df["exact_normalized"] = normalize(exact, base.clean_metric, base.corrupted_metric)
    df["difference"] = df["exact_normalized"] - df["atp_normalized"]
    return df
