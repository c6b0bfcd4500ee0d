"""Who may load which model, and run whose code, on the server.

A dashboard that listens only on 127.0.0.1 is used by the person who started it, so any path on
that machine is theirs to load and any repository's code theirs to trust. A dashboard served to
a network must not let visitors read arbitrary files of the server or run code on it:

- local models load only from the folders the server's administrator lists in
  ``PATCHCORE_MODEL_DIRS`` (os.pathsep-separated);
- ``trust_remote_code`` (Python code from a model's repository, run in the server process) only
  for the repositories the administrator lists in ``PATCHCORE_TRUST_REMOTE_CODE`` (hub ids or
  model folders, separated by commas, spaces or os.pathsep).

Hub ids and the embedded model are always allowed. A link (a shared URL) may name only the
embedded model or a hub id, never something that exists on the server's disk.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .models import EMBEDDED, ModelLoadError, looks_like_path

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MODEL_DIRS_ENV = "PATCHCORE_MODEL_DIRS"
REMOTE_CODE_ENV = "PATCHCORE_TRUST_REMOTE_CODE"
# owner/name (or a bare legacy name such as "gpt2"), as the hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def is_loopback(address: str | None) -> bool:
    """True when a server bound to `address` is reachable only from this machine.

    An empty address means "every interface" (Streamlit's default), which is not loopback."""
    return bool(address) and (address in LOOPBACK or address.startswith("127."))


def allowed_model_dirs(env: str | None = None) -> list[Path]:
    raw = os.environ.get(MODEL_DIRS_ENV, "") if env is None else env
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
    where = (f"the folders set in {MODEL_DIRS_ENV} ({', '.join(map(str, dirs))})" if dirs else
             f"folders its administrator lists in {MODEL_DIRS_ENV} (none are set)")
    _refuse(f"loads local models only from {where}. Use a hub id (e.g. openai-community/gpt2) or "
            f"the embedded model, or ask the person who runs the server to add the folder.", "model")


def _refuse(what: str, field: str):
    raise ModelLoadError(f"This dashboard is served to other machines, so it {what}", field=field)


# ---------------------------------------------------------------- trust_remote_code

def allowed_remote_code(env: str | None = None) -> list[str]:
    """The repositories whose code this server may run (PATCHCORE_TRUST_REMOTE_CODE)."""
    raw = os.environ.get(REMOTE_CODE_ENV, "") if env is None else env
    return [p for p in re.split(r"[,\s" + re.escape(os.pathsep) + r"]+", raw) if p]


def _same_repo(name: str, entry: str) -> bool:
    if looks_like_path(name) or looks_like_path(entry):  # folders: the same folder on disk
        return Path(name).expanduser().resolve() == Path(entry).expanduser().resolve()
    return name.casefold() == entry.casefold()  # the hub treats ids case-insensitively


def remote_code_allowed(name: str, served_on: str | None, allowed: list[str] | None = None) -> bool:
    """May a session of a server bound to `served_on` load `name` with trust_remote_code?"""
    if is_loopback(served_on):
        return True
    allowed = allowed_remote_code() if allowed is None else allowed
    return bool(name) and any(_same_repo(name, entry) for entry in allowed)


def remote_code_rule(served_on: str | None, allowed: list[str] | None = None) -> str:
    """One sentence for the Model page: on this server, whose code may run, and who can change it."""
    allowed = allowed_remote_code() if allowed is None else allowed
    if is_loopback(served_on):
        return "Only people at this machine can use this dashboard, so the choice is yours."
    if allowed:
        return (f"This dashboard is served to other machines, so it runs remote code only for the "
                f"repositories listed in {REMOTE_CODE_ENV} by the person who runs the server: "
                f"{', '.join(allowed)}.")
    return (f"This dashboard is served to other machines, so it never runs code from a model's "
            f"repository. The person who runs the server can allow it for repositories they trust "
            f"by listing them in {REMOTE_CODE_ENV} (e.g. {REMOTE_CODE_ENV}=owner/name) before "
            f"starting it.")


def check_remote_code(name: str, trust_remote_code: bool, served_on: str | None,
                      allowed: list[str] | None = None) -> None:
    """Raise ModelLoadError when this server must not run `name`'s repository code."""
    if not trust_remote_code or remote_code_allowed(name, served_on, allowed):
        return
    allowed = allowed_remote_code() if allowed is None else allowed
    listed = (f"It allows it only for: {', '.join(allowed)}" if allowed else
              f"No repository is listed in {REMOTE_CODE_ENV}")
    _refuse(f"does not run code from '{name}' (trust_remote_code). {listed}. Untick “Trust remote "
            f"code”, or ask the person who runs the server to add the repository to "
            f"{REMOTE_CODE_ENV}.", "trust_remote_code")


def remote_code_hint(name: str, served_on: str | None) -> str:
    """What to add to a "needs custom code" message on this server ('' when the visitor may tick it)."""
    if remote_code_allowed(name, served_on):
        return ""
    return (f" This dashboard is served to other machines, so it runs a repository's code only "
            f"when the person who runs the server lists it in {REMOTE_CODE_ENV}.")


def check_load(name: str, trust_remote_code: bool, served_on: str | None) -> None:
    """Every rule a server bound to `served_on` applies before loading a model."""
    check_model_access(name, served_on)
    check_remote_code(name, trust_remote_code, served_on)


# ---------------------------------------------------------------- links

def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def link_model_problem(name: str) -> str | None:
    """Why a link (URL) may not name this model, or None. A link names the embedded model or a hub
    id; never a path, and never a name that exists on the server's disk (`docs` is a folder there,
    which transformers would read instead of the hub)."""
    if name == EMBEDDED:
        return None
    if not is_hub_id(name) or looks_like_path(name):
        return ("a link can name the embedded model or a hub id like 'openai-community/gpt2', "
                "not a file path; choose local models on the Model page")
    return None


def check_link_model(name: str) -> None:
    """Raise ModelLoadError when a model named by a link is not a hub id (or is a local path now)."""
    problem = link_model_problem(name)
    if problem:
        raise ModelLoadError(f"The link names the model '{name}', which is not allowed: {problem}.",
                             field="model")
