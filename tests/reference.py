"""An independent, deliberately naive reference for activation patching.

One forward pass per patch, batch size 1, full logits, hooks written here from
scratch. Nothing from patchcore's engine, hooks, components, sweeps or metrics
is used: module paths, sweep axes and metrics follow DESIGN.md's semantics
section directly, so a mistake in the engine cannot hide in shared code.

- residual at layer l   = output of decoder block l
- attn / mlp at layer l = output of the block's attention / MLP module
- head h at layer l     = slice [h*d_head:(h+1)*d_head] of the INPUT of the
                          attention output projection (d_head = config.head_dim
                          when set, else hidden / heads)
- denoise: clean activations written into the corrupted run; noise: the reverse.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

# model_type -> (decoder blocks, attention, attention output projection, MLP), as in DESIGN.md
_LLAMA = ("model.layers", "self_attn", "self_attn.o_proj", "mlp")
PATHS = {
    "gpt2": ("transformer.h", "attn", "attn.c_proj", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "attention.dense", "mlp"),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "gemma": _LLAMA, "gemma2": _LLAMA, "gemma3_text": _LLAMA,
}

# sweep -> (component, one patch per position?, one patch per head?)
SWEEP_TABLE = {
    "layer": ("resid", False, False),
    "layer_pos": ("resid", True, False),
    "attn_pos": ("attn", True, False),
    "mlp_pos": ("mlp", True, False),
    "head": ("head", False, True),
    "head_pos": ("head", True, True),
}

# Known-wrong variants, used only to prove the comparison has teeth.
MISTAKES = ("head_slice", "block_input", "swap_direction", "next_position")


def _config_int(config, *names):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return int(v)
    raise AttributeError(f"config has none of {names}")


def shape_facts(hf):
    cfg = hf.config
    n_heads = _config_int(cfg, "num_attention_heads", "n_head")
    d_model = _config_int(cfg, "hidden_size", "n_embd")
    head_dim = getattr(cfg, "head_dim", None)
    d_head = int(head_dim) if head_dim else d_model // n_heads
    blocks = hf.get_submodule(PATHS[cfg.model_type][0])
    return len(blocks), n_heads, d_head, d_model


def target_module(hf, component: str, layer: int, mistakes=()):
    blocks_path, attn, attn_out, mlp = PATHS[hf.config.model_type]
    block = hf.get_submodule(blocks_path)[layer]
    if component == "resid":
        return block
    return block.get_submodule({"attn": attn, "mlp": mlp, "head": attn_out}[component])


def _tensor_of(output):
    return output if torch.is_tensor(output) else output[0]


def _with_tensor(output, new):
    if torch.is_tensor(output):
        return new
    return (new,) + tuple(output[1:])


def _input_of(args, kwargs):
    return args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))


def _replace_input(args, kwargs, new):
    if args:
        return (new,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    key = next(k for k, v in kwargs.items() if torch.is_tensor(v))
    kwargs[key] = new
    return args, kwargs


def _last_logits(hf, ids) -> torch.Tensor:
    out = hf(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0, -1].detach().float().clone()


def capture(hf, ids, component: str, mistakes=()):
    """One unpatched forward; returns (last logits, per-layer activation (T, D) of `component`)."""
    n_layers = shape_facts(hf)[0]
    acts = [None] * n_layers
    handles = []
    try:
        for layer in range(n_layers):
            mod = target_module(hf, component, layer)
            if component == "head":
                def pre(m, args, kwargs, layer=layer):
                    acts[layer] = _input_of(args, kwargs)[0].detach().clone()
                handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            elif component == "resid" and "block_input" in mistakes:
                def pre(m, args, kwargs, layer=layer):
                    acts[layer] = _input_of(args, kwargs)[0].detach().clone()
                handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(m, args, output, layer=layer):
                    acts[layer] = _tensor_of(output)[0].detach().clone()
                handles.append(mod.register_forward_hook(post))
        logits = _last_logits(hf, ids)
    finally:
        for h in handles:
            h.remove()
    return logits, acts


def patched_logits(hf, ids, component: str, layer: int, position, head, source, mistakes=()):
    """One forward of `ids` with ONE patch: source (T, D) written at (layer, position, head).

    position / head None means all positions / the whole vector.
    """
    _, n_heads, d_head, _ = shape_facts(hf)
    if "head_slice" in mistakes:  # the classic bug: ignore config.head_dim
        d_head = shape_facts(hf)[3] // n_heads
    if "next_position" in mistakes and position is not None:
        position = min(position + 1, len(ids) - 1)
    pos = slice(None) if position is None else position
    feat = slice(None) if head is None else slice(head * d_head, (head + 1) * d_head)

    def write(x):
        x = x.clone()
        x[0, pos, feat] = source[pos, feat].to(x.dtype)
        return x

    mod = target_module(hf, component, layer)
    if component == "head" or (component == "resid" and "block_input" in mistakes):
        def pre(m, args, kwargs):
            return _replace_input(args, kwargs, write(_input_of(args, kwargs)))
        handle = mod.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(m, args, output):
            return _with_tensor(output, write(_tensor_of(output)))
        handle = mod.register_forward_hook(post)
    try:
        return _last_logits(hf, ids)
    finally:
        handle.remove()


def metric_of(name: str, logits: torch.Tensor, answer_id: int, wrong_id: int) -> float:
    logits = logits.double()
    if name == "logit_diff":
        return float(logits[answer_id] - logits[wrong_id])
    if name == "prob":
        return float(torch.softmax(logits, -1)[answer_id])
    if name == "logprob":
        return float(torch.log_softmax(logits, -1)[answer_id])
    raise ValueError(name)


def tokenize_pair(tokenizer, pair):
    """Token ids as the tokenizer gives them by default; answer/wrong as single tokens."""
    clean = list(tokenizer(pair.clean)["input_ids"])
    corrupted = list(tokenizer(pair.corrupted)["input_ids"])
    answer = tokenizer(pair.answer, add_special_tokens=False)["input_ids"]
    wrong = tokenizer(pair.wrong, add_special_tokens=False)["input_ids"]
    assert len(clean) == len(corrupted) and len(answer) == 1 and len(wrong) == 1
    return clean, corrupted, answer[0], wrong[0]


def sweep_cells(sweep: str, n_layers: int, n_positions: int, n_heads: int):
    """(shape, list of (layer, position|None, head|None)) in C order over the sweep's axes."""
    component, per_pos, per_head = SWEEP_TABLE[sweep]
    axes = [range(n_layers)] + ([range(n_positions)] if per_pos else []) + \
        ([range(n_heads)] if per_head else [])
    shape = tuple(len(a) for a in axes)
    cells = []
    for combo in itertools.product(*axes):
        layer = combo[0]
        position = combo[1] if per_pos else None
        head = combo[-1] if per_head else None
        cells.append((layer, position, head))
    return shape, cells


class Reference:
    """Per-patch logits of one sweep; metrics are computed from them on request."""

    def __init__(self, hf, tokenizer, pair, sweep: str, direction: str, cells=None, mistakes=()):
        assert direction in ("denoise", "noise")
        if "swap_direction" in mistakes:
            direction = "noise" if direction == "denoise" else "denoise"
        self.clean_ids, self.corrupted_ids, self.answer_id, self.wrong_id = tokenize_pair(tokenizer, pair)
        component, _, _ = SWEEP_TABLE[sweep]
        n_layers, n_heads, _, _ = shape_facts(hf)
        self.shape, all_cells = sweep_cells(sweep, n_layers, len(self.clean_ids), n_heads)
        with torch.no_grad():
            self.clean_logits, clean_acts = capture(hf, self.clean_ids, component, mistakes)
            self.corrupted_logits, corrupted_acts = capture(hf, self.corrupted_ids, component, mistakes)
            if direction == "denoise":
                base_ids, source = self.corrupted_ids, clean_acts
            else:
                base_ids, source = self.clean_ids, corrupted_acts
            self.cells = all_cells if cells is None else cells
            self.logits = [patched_logits(hf, base_ids, component, layer, pos, head, source[layer], mistakes)
                           for layer, pos, head in self.cells]

    def metric(self, name: str):
        """(clean, corrupted, values) with values shaped like run_sweep's (when all cells ran)."""
        vals = np.array([metric_of(name, lg, self.answer_id, self.wrong_id) for lg in self.logits])
        if len(self.cells) == int(np.prod(self.shape)):
            vals = vals.reshape(self.shape)
        return (metric_of(name, self.clean_logits, self.answer_id, self.wrong_id),
                metric_of(name, self.corrupted_logits, self.answer_id, self.wrong_id), vals)


def reference_sweep(hf, tokenizer, pair, sweep: str, direction: str = "denoise",
                    metric: str = "logit_diff", mistakes=()):
    """Convenience: (clean metric, corrupted metric, values in run_sweep's axis order)."""
    return Reference(hf, tokenizer, pair, sweep, direction, mistakes=mistakes).metric(metric)
