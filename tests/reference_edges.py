"""An independent reference for circuit discovery: edge patching, EAP/EAP-IG and circuit forwards.

Plain PyTorch on the transformers model, one prompt per forward, nothing from patchcore (the q/k/v
slices come from reference_sites' own layout table). Written from the README's definitions:

- sender outputs: `input` = block 0's input; head L.H = that head's slice of the attention
  output projection's input times the projection's weight columns for it (no bias); mlp L =
  the MLP module's output
- a receiver's residual input: the input of the norm in front of it (attention norm for q/k/v,
  MLP norm for an MLP, the final norm for logits)
- edge patch u→v: v's input becomes base input + (source_u − base_u); q/k/v are recomputed with
  the model's norm and projection and only that head's slice is replaced
- EAP: d metric / d alpha at alpha = 0, where v's input is x_v + sum_u alpha_u (source_u − base_u)
  (one forward and backward per receiver: a directional derivative, no per-head gradients)
- circuit forward: each receiver's input rebuilt from scratch as its constant part (base input
  minus the base senders' outputs) + kept senders' current outputs + ablated senders' base outputs

Nodes: ("input",), ("head", L, H), ("mlp", L); receivers ("q"|"k"|"v", L, head), ("mlp", L),
("logits",); k/v heads count key/value heads.
"""
from __future__ import annotations

import contextlib

import torch

import reference_sites as rs

NORMS = {"gpt2": ("ln_1", "ln_2"), "gpt_neox": ("input_layernorm", "post_attention_layernorm")}
FINAL = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}


def _block(hf, layer):
    return hf.get_submodule(rs.TABLE[hf.config.model_type]["blocks"])[layer]


def _norm(hf, which, layer=None):
    t = hf.config.model_type
    if which == "final":
        return hf.get_submodule(FINAL.get(t, "model.norm"))
    names = NORMS.get(t, ("input_layernorm", "post_attention_layernorm"))
    return _block(hf, layer).get_submodule(names[0 if which == "attn" else 1])


def _parallel(hf):
    return hf.config.model_type == "gpt_neox" and bool(getattr(hf.config, "use_parallel_residual", False))


def nodes(hf):
    """(senders, receivers) in the reference's own order."""
    f = rs.facts(hf)
    senders, receivers = [("input",)], []
    for layer in range(f["layers"]):
        senders += [("head", layer, h) for h in range(f["heads"])] + [("mlp", layer)]
        receivers += [("q", layer, h) for h in range(f["heads"])]
        receivers += [(k, layer, g) for k in "kv" for g in range(f["kv"])] + [("mlp", layer)]
    return senders, receivers + [("logits",)]


def is_edge(hf, u, v) -> bool:
    if v[0] == "logits" or u[0] == "input":
        return True
    if v[0] == "mlp":
        return u[1] < v[1] or (u[1] == v[1] and u[0] == "head" and not _parallel(hf))
    return u[1] < v[1]


def run(hf, ids, *, embed=None):
    """Last-position logits (float64) and records of one prompt (batch of one)."""
    f = rs.facts(hf)
    rec = {"z": {}, "mlp": {}, "attn": {}, "mlp_in": {}}
    with contextlib.ExitStack() as stack:
        def first(m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if embed is not None:
                h = embed.clone()
            rec["input"] = h[0].detach().clone()
            if args:
                return (h,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}
        stack.callback(_block(hf, 0).register_forward_pre_hook(first, with_kwargs=True).remove)
        for layer in range(f["layers"]):
            for key, mod, pre in (("z", rs._module(hf, "head", layer), True), ("mlp", rs._module(hf, "mlp", layer), False),
                                  ("attn", _norm(hf, "attn", layer), True), ("mlp_in", _norm(hf, "mlp", layer), True)):
                if pre:
                    stack.callback(mod.register_forward_pre_hook(
                        lambda m, a, key=key, layer=layer: rec[key].__setitem__(layer, a[0][0].detach().clone())).remove)
                else:
                    stack.callback(mod.register_forward_hook(
                        lambda m, a, o, key=key, layer=layer: rec[key].__setitem__(layer, rs._tensor(o)[0].detach().clone())).remove)
        stack.callback(_norm(hf, "final").register_forward_pre_hook(
            lambda m, a: rec.__setitem__("final", a[0][0].detach().clone())).remove)
        logits = hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].detach().double()
    return logits, rec


def sender_output(hf, rec, u):
    if u[0] == "input":
        return rec["input"]
    if u[0] == "mlp":
        return rec["mlp"][u[1]]
    dh = rs.facts(hf)["d_head"]
    z = rec["z"][u[1]][:, u[2] * dh:(u[2] + 1) * dh]
    proj = rs._module(hf, "head", u[1])
    w = proj.weight
    if isinstance(proj, torch.nn.Linear):          # y = x W^T: the head's columns of W
        return z @ w[:, u[2] * dh:(u[2] + 1) * dh].T
    return z @ w[u[2] * dh:(u[2] + 1) * dh, :]     # GPT-2 Conv1D: y = x W


@contextlib.contextmanager
def receiver_input(hf, v, new_input):
    """While open, receiver v computes from new_input(x) instead of its residual input x."""
    with contextlib.ExitStack() as stack:
        if v[0] in ("mlp", "logits"):
            norm = _norm(hf, "final") if v[0] == "logits" else _norm(hf, "mlp", v[1])
            stack.callback(norm.register_forward_pre_hook(
                lambda m, a: (new_input(a[0][0])[None],) + tuple(a[1:])).remove)
        else:
            kind, layer, head = v
            seen = {}
            stack.callback(_norm(hf, "attn", layer).register_forward_pre_hook(
                lambda m, a: seen.__setitem__("x", a[0][0])).remove)
            sl = rs.feature_slice(hf, kind, head)
            proj = rs._module(hf, kind, layer)

            def swap(m, a, out):
                y = rs._tensor(out).clone()
                # .forward: the modules' own hooks (this one included) must not fire again
                y[0, :, sl] = proj.forward(_norm(hf, "attn", layer).forward(new_input(seen["x"])[None]))[0, :, sl]
                return rs._swap(out, y)
            stack.callback(proj.register_forward_hook(swap).remove)
        yield


def edge_patches(hf, base_ids, source_ids, answer, wrong, edges, metric="logit_diff"):
    """Per edge (u, v): metric(base run with only edge u→v patched) − metric(base run)."""
    base_logits, base = run(hf, base_ids)
    _, src = run(hf, source_ids)
    out = []
    for u, v in edges:
        delta = sender_output(hf, src, u) - sender_output(hf, base, u)
        with receiver_input(hf, v, lambda x: x + delta):
            logits = hf(input_ids=torch.tensor([base_ids]), use_cache=False).logits[0, -1].detach().double()
        out.append(rs.metric(metric, logits, answer, wrong) - rs.metric(metric, base_logits, answer, wrong))
    return out


def _metric_t(name, logits, answer, wrong):
    if name == "logit_diff":
        return logits[answer] - logits[wrong]
    lp = torch.log_softmax(logits.double(), -1)[answer]
    return lp.exp() if name == "prob" else lp


def eap_scores(hf, base_ids, source_ids, answer, wrong, metric="logit_diff", steps=None):
    """{(u, v): score} for every edge; steps=None: EAP at the base run; else EAP-IG with the
    gradient averaged over base + k/steps (source − base) of block 0's input, k = 0..steps-1."""
    _, base = run(hf, base_ids)
    _, src = run(hf, source_ids)
    senders, receivers = nodes(hf)
    points = [None] if steps is None else [base["input"] + k / steps * (src["input"] - base["input"])
                                           for k in range(steps)]
    out = {}
    for v in receivers:
        mine = [u for u in senders if is_edge(hf, u, v)]
        deltas = torch.stack([sender_output(hf, src, u) - sender_output(hf, base, u) for u in mine]).detach()
        total = torch.zeros(len(mine), dtype=torch.float64)
        for emb in points:
            alpha = torch.zeros(len(mine), requires_grad=True)
            with torch.enable_grad(), receiver_input(hf, v, lambda x: x + torch.einsum("u,utd->td", alpha, deltas)):
                ctx = contextlib.nullcontext() if emb is None else _embed(hf, emb)
                with ctx:
                    logits = hf(input_ids=torch.tensor([base_ids]), use_cache=False).logits[0, -1]
                _metric_t(metric, logits, answer, wrong).backward()
            total += alpha.grad.double()
        for u, s in zip(mine, total / len(points)):
            out[(u, v)] = float(s)
    return out


@contextlib.contextmanager
def _embed(hf, emb):
    def first(m, args, kwargs):
        if args:
            return (emb[None].clone(),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": emb[None].clone()}
    handle = _block(hf, 0).register_forward_pre_hook(first, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def circuit_metric(hf, base_ids, source_ids, answer, wrong, kept, metric="logit_diff"):
    """Metric of the source prompt where every edge not in `kept` (a set of (u, v)) carries the
    base run's value of its sender (the corrupted ablation)."""
    _, base = run(hf, base_ids)
    senders, receivers = nodes(hf)
    base_in = {v: _base_input(base, v) for v in receivers}
    cur = {}
    with contextlib.ExitStack() as stack:
        def rebuild(v):
            mine = [u for u in senders if is_edge(hf, u, v)]
            const = base_in[v] - sum(sender_output(hf, base, u) for u in mine)
            return lambda x: const + sum(cur[u] if (u, v) in kept else sender_output(hf, base, u)
                                         for u in mine)
        for v in receivers:
            stack.enter_context(receiver_input(hf, v, rebuild(v)))
        f = rs.facts(hf)
        rec = {"z": {}, "mlp": {}}

        def first(m, args, kwargs):
            rec["input"] = (args[0] if args else kwargs["hidden_states"])[0]
            cur[("input",)] = rec["input"]
        stack.callback(_block(hf, 0).register_forward_pre_hook(first, with_kwargs=True).remove)
        for layer in range(f["layers"]):
            def heads(m, a, layer=layer):
                rec["z"][layer] = a[0][0]
                for h in range(f["heads"]):
                    cur[("head", layer, h)] = sender_output(hf, rec, ("head", layer, h))
            stack.callback(rs._module(hf, "head", layer).register_forward_pre_hook(heads).remove)

            def mlp(m, a, o, layer=layer):
                cur[("mlp", layer)] = rs._tensor(o)[0]
            stack.callback(rs._module(hf, "mlp", layer).register_forward_hook(mlp).remove)
        logits = hf(input_ids=torch.tensor([source_ids]), use_cache=False).logits[0, -1].detach().double()
    return rs.metric(metric, logits, answer, wrong)


def _base_input(rec, v):
    if v[0] == "logits":
        return rec["final"]
    return rec["mlp_in"][v[1]] if v[0] == "mlp" else rec["attn"][v[1]]
