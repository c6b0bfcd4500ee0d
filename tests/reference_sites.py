"""An independent reference for patching SETS of sites, any value, q/k/v and attention patterns.

Plain PyTorch, one forward per intervention, batch of one, full logits; nothing from
patchcore is imported. Written from the README's semantics:

- resid L = output of decoder block L; attn / mlp L = output of the attention / MLP module
- head L.H = slice [H*d_head, (H+1)*d_head) of the input of the attention output projection
- q / k / v L.H = head H's slice of the query / key / value projection's output; k and v
  count key/value heads. Fused projections: GPT-2's c_attn is [all q | all k | all v];
  GPT-NeoX's query_key_value is, per head, [q | k | v].
- pattern L.H@P = row P (the query position) of head H's attention probabilities; without
  @P every row. Read and written at torch.nn.functional.softmax inside eager attention
  (each layer calls it once per forward, in layer order), so the model must run eager.

A write is (component, layer, head or None, position or None, value): `value` is a full
activation of that component at that layer, (T, W) or, for patterns, (heads, T, T); the
site's slice of it replaces the run's.
"""
from __future__ import annotations

import contextlib

import torch

_LLAMA = {"blocks": "model.layers", "attn": "self_attn", "head": "self_attn.o_proj", "mlp": "mlp",
          "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "qkv": "split"}
TABLE = {
    "gpt2": {"blocks": "transformer.h", "attn": "attn", "head": "attn.c_proj", "mlp": "mlp",
             "q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "qkv": "thirds"},
    "gpt_neox": {"blocks": "gpt_neox.layers", "attn": "attention", "head": "attention.dense",
                 "mlp": "mlp", "q": "attention.query_key_value", "k": "attention.query_key_value",
                 "v": "attention.query_key_value", "qkv": "interleaved"},
    **{t: _LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
}


def facts(hf):
    cfg = hf.config
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    d_head = getattr(cfg, "head_dim", None) or hidden // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    layers = len(hf.get_submodule(TABLE[cfg.model_type]["blocks"]))
    return {"layers": layers, "heads": heads, "kv": kv, "d_head": d_head}


def _module(hf, component: str, layer: int):
    t = TABLE[hf.config.model_type]
    block = hf.get_submodule(t["blocks"])[layer]
    return block if component == "resid" else block.get_submodule(t[component])


def feature_slice(hf, component: str, head, mistakes=()) -> slice:
    """Which features of the component's tensor belong to `head` (None: all of them)."""
    f = facts(hf)
    dh = f["d_head"]
    if head is None or component in ("resid", "attn", "mlp"):
        return slice(None)
    if component == "head":
        return slice(head * dh, (head + 1) * dh)
    layout = TABLE[hf.config.model_type]["qkv"]
    which = "qkv".index(component)
    if layout == "thirds":
        width = f["heads"] * dh
        return slice(which * width + head * dh, which * width + (head + 1) * dh)
    if layout == "interleaved":
        start = head * 3 * dh + which * dh
        return slice(start, start + dh)
    # separate projections; 'kv_by_query_head' is the classic mistake of counting k/v heads
    # like query heads (wrong under grouped-query attention)
    h = head
    if component in ("k", "v") and "kv_by_query_head" in mistakes:
        h = head * f["kv"] // f["heads"]
    return slice(h * dh, (h + 1) * dh)


@contextlib.contextmanager
def _softmax_hook(fn):
    """Every torch.nn.functional.softmax call of the forward goes through fn(layer, probs)."""
    real = torch.nn.functional.softmax
    calls = [0]

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        layer = calls[0]
        calls[0] += 1
        return fn(layer, out)
    torch.nn.functional.softmax = wrapped
    try:
        yield
    finally:
        torch.nn.functional.softmax = real


def _tensor(x):
    return x if torch.is_tensor(x) else x[0]


def _swap(output, new):
    return new if torch.is_tensor(output) else (new,) + tuple(output[1:])


def capture(hf, ids, component: str):
    """(last logits (V,), per layer the component's activation: (T, W), patterns (heads, T, T))."""
    n = facts(hf)["layers"]
    acts = [None] * n
    with contextlib.ExitStack() as stack:
        if component == "pattern":
            def keep(layer, p):
                acts[layer] = p[0].detach().clone()
                return p
            stack.enter_context(_softmax_hook(keep))
        else:
            for layer in range(n):
                mod = _module(hf, component, layer)
                if component == "head":
                    def pre(m, args, layer=layer):
                        acts[layer] = args[0][0].detach().clone()
                    stack.callback(mod.register_forward_pre_hook(pre).remove)
                else:
                    def post(m, args, out, layer=layer):
                        acts[layer] = _tensor(out)[0].detach().clone()
                    stack.callback(mod.register_forward_hook(post).remove)
        logits = hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].detach().double()
    return logits, acts


def patched_logits(hf, ids, writes, mistakes=()):
    """One forward of `ids` with every write applied; last-position logits (float64)."""
    by_site: dict = {}
    for comp, layer, head, pos, value in writes:
        by_site.setdefault((comp, layer), []).append((head, pos, value))

    def apply(x, comp, items):
        x = x.clone()
        for head, pos, value in items:
            p = slice(None) if pos is None else pos
            v = value.to(x.dtype)
            if comp == "pattern":
                h = slice(None) if head is None else head
                x[0, h, p, :] = v[h, p, :]
            else:
                f = feature_slice(hf, comp, head, mistakes)
                x[0, p, f] = v[p, f]
        return x

    with contextlib.ExitStack() as stack:
        patterns = {layer: items for (comp, layer), items in by_site.items() if comp == "pattern"}
        if patterns:
            stack.enter_context(_softmax_hook(
                lambda layer, probs: apply(probs, "pattern", patterns[layer]) if layer in patterns else probs))
        for (comp, layer), items in by_site.items():
            if comp == "pattern":
                continue
            mod = _module(hf, comp, layer)
            if comp == "head":
                def pre(m, args, comp=comp, items=items):
                    return (apply(args[0], comp, items),) + tuple(args[1:])
                stack.callback(mod.register_forward_pre_hook(pre).remove)
            else:
                def post(m, args, out, comp=comp, items=items):
                    return _swap(out, apply(_tensor(out), comp, items))
                stack.callback(mod.register_forward_hook(post).remove)
        return hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].detach().double()


def metric(name: str, logits, answer: int, wrong: int) -> float:
    if name == "logit_diff":
        return float(logits[answer] - logits[wrong])
    if name == "prob":
        return float(torch.softmax(logits, -1)[answer])
    if name == "logprob":
        return float(torch.log_softmax(logits, -1)[answer])
    raise ValueError(name)
