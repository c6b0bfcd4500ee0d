"""Tiny random-weight models of every supported family, built offline from configs.

They share the embedded model's tokenizer (loaded from patchcore's converted
cache), so real prompts like the IOI pair tokenize exactly as in the product.
"""
from __future__ import annotations

import functools

import torch
import transformers as tf

from patchcore.models import LoadedModel, wrap_model

VOCAB = 49152  # the embedded SmolLM2 tokenizer's vocabulary
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128,
                                 bos_token_id=0, eos_token_id=0),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=3, num_attention_heads=4,
                                         max_position_embeddings=128, rotary_pct=0.25),
    "llama": lambda: tf.LlamaConfig(**_COMMON),
    "mistral": lambda: tf.MistralConfig(**_COMMON),
    "qwen2": lambda: tf.Qwen2Config(**_COMMON),
    "qwen3": lambda: tf.Qwen3Config(**_COMMON, head_dim=16),
    "gemma": lambda: tf.GemmaConfig(**_COMMON, head_dim=16),
    "gemma2": lambda: tf.Gemma2Config(**_COMMON, head_dim=16, sliding_window=8),
    # head_dim deliberately != hidden/heads: the per-head slice must follow head_dim
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_COMMON, head_dim=24, sliding_window=8),
}
FAMILIES = list(CONFIGS)


@functools.lru_cache(maxsize=1)
def embedded_tokenizer():
    from patchcore.models import load_embedded_tokenizer
    return load_embedded_tokenizer()


def build_hf(family: str, seed: int = 0, attn_implementation: str = "eager"):
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config._attn_implementation = attn_implementation
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # random init is tiny; scale weights up so patches move the metric visibly
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return model.eval()


def tiny_model(family: str, seed: int = 0) -> LoadedModel:
    return wrap_model(build_hf(family, seed), embedded_tokenizer(), label=f"tiny-{family}")
