"""Forwards of circuit discovery: what every sender wrote, and what every receiver's input is worth.

`trace` runs rows (B, T) through the model with hooks and records, per layer, the input of the
attention norm and of the MLP norm (the receivers' residual inputs), the attention output
projection's input (the heads), the MLP's output, block 0's input (`input`) and the final
norm's input (`logits`). `sender_outputs` turns a trace into every sender's output (B, S, T, D).

With grad=True the same forward keeps what the backward pass needs, and `receiver_grads`
returns d metric / d (each receiver's own copy of its residual input), (B, R, T, D):

- MLP and logits receivers: a zero tensor is added to the norm's input in front of them; its
  gradient is exactly the part that reaches the metric through that receiver.
- q/k/v receivers share one norm output, so the gradient of the projection's output slice of
  that head is taken back through the projection's slice (x @ M + b) and the norm at that
  row's own input (a vector-Jacobian product of the norm, one copy of the input per receiver):
  the gradient the head would see if its q, k or v read a residual stream of its own.

A `Prefix` skips the positions before the first token where the two prompts differ: there every
run is the base run (causal attention), so nothing differs and nothing adds to a score. Its keys
and values come from one run of the base prompt's prefix (transformers' cache), and the forwards
run the remaining positions only; records then hold those positions.
"""
from __future__ import annotations

import inspect
import weakref
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from .backends.hooks import HookBackend, _first, _get_hidden, _set_hidden
from .backends.prefix_cache import cache_of, widen_cache
from .circuit_graph import Graph, affine_map, norms
from .metrics import compute_metric
from .sites import COMPONENTS

HEAD = COMPONENTS["head"]
QKV = [COMPONENTS[k] for k in "qkv"]


@dataclass
class Maps:
    """The projections as matrices: per layer the output projection (H, d_head, D) and, per
    q/k/v, (M (D, n, d_head), b (n, d_head)) with heads split as the family lays them out."""
    out: list
    qkv: list


_MAPS: "weakref.WeakKeyDictionary[torch.nn.Module, Maps]" = weakref.WeakKeyDictionary()


def maps(model) -> Maps:
    """The model's projection matrices (read once per model; they share the weights' storage)."""
    got = _MAPS.get(model.hf)
    if got is not None:
        return got
    c = model.components
    like = next(model.hf.parameters())
    out, qkv = [], []
    with torch.no_grad():
        for layer in range(c.n_layers):
            m, _ = affine_map(c.attn_out[layer], c.n_heads * c.d_head, like)
            out.append(HEAD.heads_view(m.T, c).permute(1, 2, 0))           # (D, H, dh) -> (H, dh, D)
            per = {}
            for comp in QKV:
                m, b = affine_map(comp.module(c, layer), c.d_model, like)
                per[comp.name] = (comp.heads_view(m, c), comp.heads_view(b[None], c)[0])
            qkv.append(per)
    got = Maps(out, qkv)
    _MAPS[model.hf] = got
    return got


def _logits_kw(hf) -> dict:
    kw = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(hf.forward).parameters:
        kw["logits_to_keep"] = 1
    return kw


class Prefix:
    """The keys and values of a prompt's first p0 positions, for forwards of the positions after."""

    def __init__(self, model, ids: list, p0: int):
        params = inspect.signature(model.hf.forward).parameters
        self.kw = "cache" if "cache" in params else "past_key_values"
        self.p0 = p0
        with torch.inference_mode(False), torch.no_grad():   # usable by forwards with gradients
            out = model.hf(input_ids=torch.tensor([ids[:p0]], device=model.device), use_cache=True)
        self.cache = cache_of(out)

    def kwargs(self, rows: int) -> dict:
        return {self.kw: widen_cache(self.cache, rows, 0), "use_cache": True}

    @staticmethod
    def start(model, pair, usable: bool) -> int:
        """Where forwards of this pair may start (0: at the beginning): its first differing
        position, where the family's cached prefix is exact (the engine checks it once per model)."""
        if not usable or pair.first_diff <= 0 or HookBackend(model).support()["prefix"] is not True:
            return 0
        return pair.first_diff


def trace(model, ids: torch.Tensor, *, embed: torch.Tensor | None = None, grad: bool = False,
          prefix: Prefix | None = None) -> dict:
    """One forward of rows `ids` (B, T); `embed` (B, T, D) replaces block 0's input (the
    integrated-gradients path); with a prefix only positions p0.. run. Returns the records (see
    the module docstring) and 'logits' (B, V) at the last position. The caller holds the lock."""
    extra = {}
    if prefix is not None:
        ids, embed = ids[:, prefix.p0:], None if embed is None else embed[:, prefix.p0:]
        extra = prefix.kwargs(ids.shape[0])
    c = model.components
    L = c.n_layers
    rec = {"attn_in": [None] * L, "mlp_in": [None] * L, "z": [None] * L, "mlp": [None] * L,
           "proj": {}, "leaf_mlp": [None] * L}
    keep = (lambda t: t) if grad else (lambda t: t.detach())

    with ExitStack() as stack:
        def block0(m, args, kwargs):
            h = _get_hidden(args, kwargs)
            if embed is not None:
                h = embed.to(h.dtype)
            if grad:
                h = h.detach().requires_grad_(True)
            rec["input"] = h if grad else h.detach()
            return _set_hidden(args, kwargs, h)
        stack.enter_context(c.blocks[0].register_forward_pre_hook(block0, with_kwargs=True))
        for layer in range(L):
            attn_norm, mlp_norm = norms(model, layer)

            def attn_in(m, args, layer=layer):
                rec["attn_in"][layer] = args[0].detach()
            stack.enter_context(attn_norm.register_forward_pre_hook(attn_in))

            def mlp_in(m, args, layer=layer):
                rec["mlp_in"][layer] = args[0].detach()
                if grad:
                    leaf = torch.zeros_like(args[0]).requires_grad_(True)
                    rec["leaf_mlp"][layer] = leaf
                    return (args[0] + leaf,) + tuple(args[1:])
            stack.enter_context(mlp_norm.register_forward_pre_hook(mlp_in))
            if grad:
                for comp in QKV:
                    mod = comp.module(c, layer)
                    if (layer, id(mod)) in rec["proj"]:      # fused q/k/v: one module, one hook
                        continue
                    rec["proj"][(layer, id(mod))] = None

                    def proj(m, args, output, key=(layer, id(mod))):
                        rec["proj"][key] = _first(output)
                    stack.enter_context(mod.register_forward_hook(proj))
            else:
                def z(m, args, layer=layer):
                    rec["z"][layer] = args[0].detach()
                stack.enter_context(c.attn_out[layer].register_forward_pre_hook(z))

                def mlp_out(m, args, output, layer=layer):
                    rec["mlp"][layer] = _first(output).detach()
                stack.enter_context(c.mlp[layer].register_forward_hook(mlp_out))

        def final(m, args):
            rec["final"] = args[0].detach()
            if grad:
                rec["leaf_final"] = torch.zeros_like(args[0]).requires_grad_(True)
                return (args[0] + rec["leaf_final"],) + tuple(args[1:])
        stack.enter_context(c.final_norm.register_forward_pre_hook(final))
        out = model.hf(input_ids=ids.to(model.device), **{**_logits_kw(model.hf), **extra})
    rec["logits"] = keep(out.logits[:, -1, :])
    return rec


def sender_outputs(model, graph: Graph, rec: dict) -> torch.Tensor:
    """(B, S, T, D): every sender's output in a trace, in the graph's sender order."""
    c, mp = model.components, maps(model)
    parts = [rec["input"][:, None]]
    for layer in range(graph.n_layers):
        z = HEAD.heads_view(rec["z"][layer], c)                              # (B, T, H, dh)
        parts.append(torch.einsum("bthe,hed->bhtd", z, mp.out[layer].to(z.dtype)))
        parts.append(rec["mlp"][layer][:, None])
    return torch.cat(parts, dim=1)


def receiver_grads(model, graph: Graph, rec: dict, metric: str, answer, wrong) -> torch.Tensor:
    """(B, R, T, D): d metric(row) / d (each receiver's own residual input), from a grad trace."""
    c, mp = model.components, maps(model)
    total = compute_metric(metric, rec["logits"], answer, wrong).sum()
    keys = list(rec["proj"])
    targets = [rec["proj"][k] for k in keys] + rec["leaf_mlp"] + [rec["leaf_final"]]
    got = torch.autograd.grad(total, targets, allow_unused=True)
    zero = lambda t: torch.zeros_like(t)  # noqa: E731
    g_proj = {k: (g if g is not None else zero(t)).detach() for k, g, t in zip(keys, got, targets)}
    L = graph.n_layers
    g_mlp = [(g if g is not None else zero(t)).detach() for g, t in zip(got[len(keys):len(keys) + L],
                                                                      targets[len(keys):len(keys) + L])]
    g_final = got[-1] if got[-1] is not None else zero(targets[-1])
    x0 = rec["final"]
    out = x0.new_zeros((x0.shape[0], graph.n_receivers) + tuple(x0.shape[1:]))
    for layer in range(L):
        cots = []
        for comp in QKV:
            g = comp.heads_view(g_proj[(layer, id(comp.module(c, layer)))], c)   # (B, T, n, dh)
            m = mp.qkv[layer][comp.name][0].to(g.dtype)                          # (D, n, dh)
            cots.append(torch.einsum("btne,dne->bntd", g, m))
        cot = torch.cat(cots, dim=1)                                           # (B, Ra, T, D)
        x = rec["attn_in"][layer]
        with torch.enable_grad():
            xs = x[:, None].expand(-1, cot.shape[1], -1, -1).clone().requires_grad_(True)
            y = norms(model, layer)[0].forward(xs)
            out[:, graph.attn_receivers(layer)] = torch.autograd.grad(y, xs, cot)[0].detach()
        out[:, graph.mlp_receiver(layer)] = g_mlp[layer]
    out[:, graph.logits_receiver] = g_final.detach()
    return out
