"""Where each architecture keeps its components.

Paths are dotted module names exactly as the model printout shows them
(nnsight-style), so `model.layers.3.self_attn.o_proj` in an error message can
be found in `print(model)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UnsupportedArchitecture


@dataclass(frozen=True)
class FamilyPaths:
    family: str
    blocks: str        # the ModuleList of decoder blocks
    attn: str          # attention module, relative to a block
    attn_out: str      # attention output projection (its input holds per-head outputs)
    mlp: str           # MLP module, relative to a block
    final_norm: str
    unembed: str
    qkv: tuple = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # relative to a block
    # how q, k and v sit in those modules' outputs: "separate" (one module each), "thirds"
    # (one fused output: all q, then all k, then all v), "per_head" (fused, per head q|k|v)
    qkv_layout: str = "separate"


_LLAMA_LIKE = dict(attn="self_attn", attn_out="self_attn.o_proj", mlp="mlp",
                   final_norm="model.norm", unembed="lm_head", blocks="model.layers")

FAMILIES: dict[str, FamilyPaths] = {
    "gpt2": FamilyPaths("GPT-2", "transformer.h", "attn", "attn.c_proj", "mlp",
                        "transformer.ln_f", "lm_head", ("attn.c_attn",) * 3, "thirds"),
    "gpt_neox": FamilyPaths("GPT-NeoX (Pythia)", "gpt_neox.layers", "attention",
                            "attention.dense", "mlp", "gpt_neox.final_layer_norm", "lm_head",
                            ("attention.query_key_value",) * 3, "per_head"),
    "llama": FamilyPaths("Llama (incl. SmolLM)", **_LLAMA_LIKE),
    "mistral": FamilyPaths("Mistral", **_LLAMA_LIKE),
    "qwen2": FamilyPaths("Qwen2", **_LLAMA_LIKE),
    "qwen3": FamilyPaths("Qwen3", **_LLAMA_LIKE),
    "smollm3": FamilyPaths("SmolLM3", **_LLAMA_LIKE),
    "gemma": FamilyPaths("Gemma", **_LLAMA_LIKE),
    "gemma2": FamilyPaths("Gemma 2", **_LLAMA_LIKE),
    "gemma3_text": FamilyPaths("Gemma 3", **_LLAMA_LIKE),
}


def supported_architectures() -> str:
    return ", ".join(f"{p.family} [{k}]" for k, p in FAMILIES.items())


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    return root.get_submodule(path)


@dataclass
class ComponentMap:
    """Resolved modules of one loaded model, plus the shape facts sweeps need."""

    model_type: str
    paths: FamilyPaths
    blocks: list
    attn: list
    attn_out: list
    mlp: list
    q: list            # the modules whose outputs hold the queries, keys, values (may be one
    k: list            # fused module for all three: see FamilyPaths.qkv_layout)
    v: list
    final_norm: torch.nn.Module
    unembed: torch.nn.Module
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    vocab_size: int

    def module_path(self, component, layer: int) -> str:
        """The dotted path of a component's module (a sites.Component; None: the block)."""
        q, k, v = self.paths.qkv
        rel = {"blocks": None, "attn": self.paths.attn, "mlp": self.paths.mlp,
               "attn_out": self.paths.attn_out, "q": q, "k": k, "v": v}[
            component.modules if component else "blocks"]
        base = f"{self.paths.blocks}.{layer}"
        return base if rel is None else f"{base}.{rel}"


def config_value(config, *names, default=None):
    """The first of these config attributes that is set (families name them differently)."""
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def resolve_components(hf_model: torch.nn.Module) -> ComponentMap:
    config = hf_model.config
    model_type = getattr(config, "model_type", "?")
    paths = FAMILIES.get(model_type)
    if paths is None:
        raise UnsupportedArchitecture(
            f"The architecture '{model_type}' is not supported yet. Supported: "
            f"{supported_architectures()}. Pick a model of one of these families."
        )
    blocks = list(get_module(hf_model, paths.blocks))
    n_heads = config_value(config, "num_attention_heads", "n_head")
    d_model = config_value(config, "hidden_size", "n_embd")
    d_head = config_value(config, "head_dim", default=None) or d_model // n_heads
    attn_out = [get_module(b, paths.attn_out) for b in blocks]
    return ComponentMap(
        model_type=model_type,
        paths=paths,
        blocks=blocks,
        attn=[get_module(b, paths.attn) for b in blocks],
        attn_out=attn_out,
        mlp=[get_module(b, paths.mlp) for b in blocks],
        q=[get_module(b, paths.qkv[0]) for b in blocks],
        k=[get_module(b, paths.qkv[1]) for b in blocks],
        v=[get_module(b, paths.qkv[2]) for b in blocks],
        final_norm=get_module(hf_model, paths.final_norm),
        # transformers knows its own unembedding (NeoX renamed embed_out -> lm_head in v5)
        unembed=hf_model.get_output_embeddings(),
        n_layers=len(blocks),
        n_heads=n_heads,
        n_kv_heads=config_value(config, "num_key_value_heads", default=n_heads),
        d_head=d_head,
        d_model=d_model,
        d_mlp=config_value(config, "intermediate_size", "n_inner", default=4 * d_model) or 4 * d_model,
        vocab_size=config.vocab_size,
    )
