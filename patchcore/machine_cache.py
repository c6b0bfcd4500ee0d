"""What this machine has learnt about a model, kept between runs of patchcore.

Which backend shortcuts hold for a model's architecture (backends/hooks.py support), the
calibrated speed of this machine on it (estimate.calibrate), and how far estimates were off
(estimate.learn): small JSON files in the data folder, next to the run history, so the
first sweep in a new process pays no extra forwards. Keys name the architecture (its
config), the dtype, the device and the library versions, never the weights. Reading or
writing them can never fail a run.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

_LOCK = threading.Lock()
_MEMORY: dict = {}


def model_key(model, *extra) -> str:
    """The model's architecture, dtype and device, and the versions that run it."""
    import torch
    import transformers

    try:
        config = model.hf.config.to_json_string(use_diff=False)
    except Exception:  # noqa: BLE001
        config = repr(model.hf.config)
    device = str(model.device)
    if torch.device(device).type == "cuda":
        device += ":" + torch.cuda.get_device_name(torch.device(device))
    placed = getattr(model.hf, "hf_device_map", None)
    if placed:   # split between devices or disk: other code paths, its own entries
        device += "|" + json.dumps(placed, sort_keys=True, default=str)
    text = "|".join([config, str(model.dtype), device, torch.__version__, transformers.__version__,
                     *map(str, extra)])
    return hashlib.sha1(text.encode()).hexdigest()


def _path(name: str):
    from .history import data_dir
    return data_dir() / f"{name}.json"


def _table(name: str) -> dict:
    if name not in _MEMORY:
        try:
            _MEMORY[name] = json.loads(_path(name).read_text())
        except (OSError, ValueError):
            _MEMORY[name] = {}
    return _MEMORY[name]


def get(name: str, key: str, default=None):
    with _LOCK:
        return _table(name).get(key, default)


def put(name: str, key: str, value) -> None:
    with _LOCK:
        table = _table(name)
        table[key] = value
        try:
            path = _path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(json.dumps(table))
            os.replace(tmp, path)
        except OSError:
            pass   # a cache: never an error


def forget() -> None:
    """Drop what was read into memory (a new process reads the files again)."""
    with _LOCK:
        _MEMORY.clear()
