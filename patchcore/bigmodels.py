"""Models larger than one device: memory estimates before loading, and the refusal with options.

estimate_memory(...) counts the parameters from the config alone (the architecture
is built on the meta device: no weights, no download beyond config.json) and adds
the working memory a patching run needs. check_fits(...) compares that with what
this machine has free and returns None, or one message that names the options:
a smaller dtype, a device map (GPUs + CPU memory + disk offload, via accelerate),
or NDIF (docs/ndif.md).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .components import config_value as _cfg
from .errors import ModelLoadError

BYTES_PER_PARAM = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
GIB = 2**30
# Torch/CUDA context, allocator slack, tokenizer, Python: a fixed allowance on top.
FIXED_OVERHEAD = 512 * 2**20
EMBEDDED_PARAMS = 134_515_008  # SmolLM2-135M (tied embeddings), counted from its config


@dataclass
class MemoryEstimate:
    n_params: int
    dtype: str
    weights: int        # bytes of weights in `dtype`
    working: int        # activations of one patching batch + the baseline cache + overhead
    n_layers: int = 0
    d_model: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.working


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in BYTES_PER_PARAM:
        raise ModelLoadError(f"Unknown dtype '{dtype}'. Choose fp32, bf16 or fp16.")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


def load_config(model: str, revision: str | None = None, trust_remote_code: bool = False):
    """A model's config (folder, .gguf file, hub id or 'embedded') without its weights."""
    from transformers import AutoConfig

    from .models import EMBEDDED, cache_dir, embedded_model_file

    try:
        if model == EMBEDDED:
            converted = cache_dir() / "embedded-smollm2-135m-instruct-q4_1-v1"
            if (converted / "config.json").is_file():
                return AutoConfig.from_pretrained(converted)
            gguf = embedded_model_file()
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        path = Path(model).expanduser()
        if model.endswith(".gguf"):
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        kwargs = {"trust_remote_code": trust_remote_code}
        if revision:
            kwargs["revision"] = revision
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else model, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        from .models import _friendly_load_error
        raise _friendly_load_error(model, exc) from exc


_COUNTS: dict = {}


def count_parameters(config) -> int:
    """Parameters of the causal-LM built from `config`, counted on the meta device (exact)."""
    from transformers import AutoModelForCausalLM

    try:
        key = config.to_json_string()
    except Exception:  # noqa: BLE001
        key = None
    if key is not None and key in _COUNTS:
        return _COUNTS[key]
    try:
        from accelerate import init_empty_weights
        with init_empty_weights():
            meta = AutoModelForCausalLM.from_config(config)
        meta.tie_weights()  # init_empty_weights leaves tied embeddings untied
        n = sum(p.numel() for p in meta.parameters())  # tied weights count once
    except Exception:  # noqa: BLE001 - unusual architecture: a formula from the config
        n = _formula_parameters(config)
    if key is not None:
        _COUNTS[key] = n
    return n


def _formula_parameters(config) -> int:
    d = int(_cfg(config, "hidden_size", "n_embd", "d_model"))
    layers = int(_cfg(config, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_cfg(config, "num_attention_heads", "n_head"))
    kv = int(_cfg(config, "num_key_value_heads", default=heads))
    dh = int(_cfg(config, "head_dim", default=d // heads) or d // heads)
    f = int(_cfg(config, "intermediate_size", "n_inner", default=4 * d) or 4 * d)
    v = int(config.vocab_size)
    gated = getattr(config, "model_type", "") not in ("gpt2", "gpt_neox")
    attn = d * heads * dh + 2 * d * kv * dh + heads * dh * d
    mlp = (3 if gated else 2) * d * f
    embed = v * d * (1 if getattr(config, "tie_word_embeddings", True) else 2)
    return embed + layers * (attn + mlp + 4 * d) + 2 * d


def _params_and_config(source, revision=None, trust_remote_code=False):
    """(n_params, config or None) for a config, a model id/folder/.gguf, an nn.Module or a LoadedModel."""
    from .models import EMBEDDED

    hf = getattr(source, "hf", source)  # LoadedModel -> its module
    if isinstance(hf, torch.nn.Module):
        return sum(p.numel() for p in hf.parameters()), getattr(hf, "config", None)
    if isinstance(source, dict):
        from transformers import AutoConfig
        data = dict(source)
        source = AutoConfig.for_model(data.pop("model_type"), **data)
    if isinstance(source, str):
        config = load_config(source, revision, trust_remote_code)
        if source == EMBEDDED:
            return EMBEDDED_PARAMS, config
        return count_parameters(config), config
    return count_parameters(source), source


def describe_memory(source, dtype="fp32", *, n_tokens: int = 64, revision: str | None = None,
                    trust_remote_code: bool = False) -> MemoryEstimate:
    """Weights in `dtype` plus the working memory of one patching run on `n_tokens` tokens."""
    from .engine import DEFAULT_MEMORY_BUDGET_MB

    name = _dtype_name(dtype)
    elem = BYTES_PER_PARAM[name]
    n_params, config = _params_and_config(source, revision, trust_remote_code)
    weights = n_params * elem
    layers = int(_cfg(config, "num_hidden_layers", "n_layer", default=0) or 0) if config is not None else 0
    d = int(_cfg(config, "hidden_size", "n_embd", default=0) or 0) if config is not None else 0
    # the engine sizes each patching batch to its memory budget; the baseline cache
    # (clean + corrupted activations of every layer) and a fixed allowance come on top
    cache = 2 * layers * n_tokens * d * 4
    working = DEFAULT_MEMORY_BUDGET_MB * 2**20 + cache + FIXED_OVERHEAD + weights // 20
    return MemoryEstimate(n_params=n_params, dtype=name, weights=weights, working=working,
                          n_layers=layers, d_model=d)


def estimate_memory(config_or_model_id, dtype="fp32", **kwargs) -> int:
    """Bytes a patching run of this model needs: parameters × bytes per parameter + working memory."""
    return describe_memory(config_or_model_id, dtype, **kwargs).total


# -- what this machine has ----------------------------------------------------------

def available_memory(device: str = "auto", device_map: str | tuple | dict | None = None) -> dict:
    """Free bytes by place: {'gpu': ..., 'cpu': ..., 'disk': ...} (only the places the load can use)."""
    import psutil

    from .models import cache_dir

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict = {}
    if device == "cuda" and torch.cuda.is_available():
        frees = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
        out["gpu"] = sum(frees) if device_map else frees[0]
    if device in ("cpu", "mps") or device_map:
        out["cpu"] = int(psutil.virtual_memory().available)
    if device_map:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        out["disk"] = int(shutil.disk_usage(folder).free)
    return out


def _gb(n: int) -> str:
    return f"{n / GIB:.1f} GB" if n >= GIB / 10 else f"{n / 2**20:.0f} MB"


def check_fits(config_or_model_id, dtype="fp32", device: str = "auto", *, device_map=None,
               n_tokens: int = 64, available: dict | int | None = None, name: str | None = None,
               revision: str | None = None, trust_remote_code: bool = False) -> str | None:
    """None when the model fits; otherwise one message that refuses it and names the options.

    `available` overrides what this machine reports (bytes, or {'gpu'|'cpu'|'disk': bytes}).
    With a device map the model may use all GPUs, CPU memory and disk offload together.
    """
    est = describe_memory(config_or_model_id, dtype, n_tokens=n_tokens, revision=revision,
                          trust_remote_code=trust_remote_code)
    if available is None:
        available = available_memory(device, device_map)
    elif isinstance(available, int):
        available = {"gpu" if device == "cuda" else "cpu": available}
    if not available:
        return None
    if device_map:
        # weights may spill down to disk, but the working memory must sit in GPU/CPU memory
        fast = available.get("gpu", 0) + available.get("cpu", 0)
        fits = est.working <= fast and est.total <= fast + available.get("disk", 0)
        have = fast + available.get("disk", 0)
        where = "across GPU memory, CPU memory and disk"
    else:
        have = max(available.values())
        fits = est.total <= have
        where = "in GPU memory" if "gpu" in available else "in memory"
    if fits:
        return None
    label = name or (config_or_model_id if isinstance(config_or_model_id, str) else
                     getattr(getattr(config_or_model_id, "config", config_or_model_id),
                             "_name_or_path", "") or "This model")
    options = []
    if est.dtype == "fp32":
        half = describe_memory(config_or_model_id, "bf16", n_tokens=n_tokens, revision=revision,
                               trust_remote_code=trust_remote_code)
        fits_half = half.total <= (have if not device_map else fast + available.get("disk", 0))
        options.append(f"load it in bf16 (about {_gb(half.total)}"
                       f"{', which fits' if fits_half else ', still too big'})")
    if not device_map:
        options.append("spread it over GPUs, CPU memory and disk with a device map "
                       "(device_map 'auto', optionally a max_memory budget; disk offload is slow)")
    options.append("run it on NDIF, which serves large models remotely (see docs/ndif.md)")
    return (f"'{label}' needs about {_gb(est.total)} in {est.dtype} "
            f"({est.n_params / 1e9:.2f} B parameters = {_gb(est.weights)}, plus "
            f"{_gb(est.working)} working memory), but only {_gb(have)} is free {where}. "
            f"Options: " + "; ".join(options) + ".")
