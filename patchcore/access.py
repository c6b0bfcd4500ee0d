"""Who may load which model from the local disk.

A dashboard that listens only on 127.0.0.1 is used by the person who started it, so any path on
that machine is theirs to load. A dashboard served to a network must not let visitors read
arbitrary files of the server: there, local models load only from the folders the server's
administrator lists in ``PATCHCORE_MODEL_DIRS`` (os.pathsep-separated). Hub ids and the
embedded model are always allowed.
"""
from __future__ import annotations

import os
from pathlib import Path

from .models import EMBEDDED, ModelLoadError, looks_like_path

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(address: str | None) -> bool:
    """True when a server bound to `address` is reachable only from this machine.

    An empty address means "every interface" (Streamlit's default), which is not loopback."""
    return bool(address) and (address in LOOPBACK or address.startswith("127."))


def allowed_model_dirs(env: str | None = None) -> list[Path]:
    raw = os.environ.get("PATCHCORE_MODEL_DIRS", "") if env is None else env
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def check_model_access(name: str, served_on: str | None, dirs: list[Path] | None = None) -> None:
    """Raise ModelLoadError when `name` is a local path this server must not load."""
    if name == EMBEDDED or not looks_like_path(name) or is_loopback(served_on):
        return
    dirs = allowed_model_dirs() if dirs is None else dirs
    # resolve() follows symlinks and '..', so a path cannot step out of an allowed folder
    target = Path(name).expanduser().resolve()
    if any(target == d or d in target.parents for d in dirs):
        return
    where = (f"the folders set in PATCHCORE_MODEL_DIRS ({', '.join(map(str, dirs))})" if dirs else
             "folders its administrator lists in PATCHCORE_MODEL_DIRS (none are set)")
    raise ModelLoadError(
        f"This dashboard is served to other machines, so it loads local models only from {where}. "
        f"Use a hub id (e.g. openai-community/gpt2) or the embedded model, or ask the person who "
        f"runs the server to add the folder.")
