"""The NDIF client: API keys, job submission and status, and errors in plain words.

NDIF (https://ndif.us) runs nnsight requests on models too big for this machine.
The key comes from the caller, NDIF_API_KEY or nnsight's config, and never
reaches a message, a log or an export (`scrub`).
"""
from __future__ import annotations

import os
import time

from ..errors import Cancelled, PatchError

NDIF_KEY_URL = "https://login.ndif.us"
NDIF_STATUS_URL = "https://nnsight.net/status/"
DEFAULT_TIMEOUT_S = float(os.environ.get("PATCHCORE_REMOTE_TIMEOUT_S", "1800"))


class RemoteError(PatchError):
    """A remote (NDIF) run failed; the message says what to do."""


# -- errors ----------------------------------------------------------------------

def scrub(text: str, secret: str | None) -> str:
    """Never let the API key reach a message, a log or an export."""
    text = str(text)
    if secret:
        text = text.replace(secret, "<api key>")
    return text


def no_key_error() -> RemoteError:
    return RemoteError(
        "Running on NDIF needs an API key. Get one (free) at "
        f"{NDIF_KEY_URL}, then set NDIF_API_KEY in the environment or enter it on the "
        "Model page. The key is kept only for this session.", field="api_key")


_NETWORK_TYPES = ("ConnectError", "ConnectTimeout", "NetworkError", "ReadError", "gaierror",
                  "WebSocketConnectionClosedException", "WebSocketAddressException",
                  "ConnectionRefusedError", "ConnectionResetError")
_NETWORK_TEXT = ("connection refused", "connection reset", "name or service not known",
                 "temporary failure in name", "network is unreachable", "nodename nor servname",
                 "failed to establish", "no route to host", "remote end closed",
                 "connection aborted", "getaddrinfo", "connection closed")
_NOT_SERVED_TEXT = ("not served", "not deployed", "isn't deployed", "no deployment", "not running",
                    "model not found", "unknown model", "is not available", "not currently available",
                    "not hosted", "no model")


def friendly_remote_error(exc: BaseException, model_id: str | None, secret: str | None = None,
                          timeout_s: float | None = None) -> RemoteError:
    """Translate anything raised on the way to, on, or back from NDIF into one sentence."""
    if isinstance(exc, RemoteError):
        return exc
    name = model_id or "this model"
    text = scrub(f"{type(exc).__name__}: {exc}", secret)
    low = text.lower()
    first = scrub(str(exc), secret).strip().splitlines()
    first = first[0][:300] if first else type(exc).__name__
    chain = [exc] + [e for e in (exc.__cause__, exc.__context__) if e is not None]
    if any(type(e).__name__ in _NETWORK_TYPES for e in chain) or any(s in low for s in _NETWORK_TEXT):
        return RemoteError("Could not reach NDIF (network down, or the service is offline). "
                           f"Check your connection and {NDIF_STATUS_URL}, or run a local model.")
    if isinstance(exc, TimeoutError) or any(s in low for s in ("took longer than", "timed out",
                                                               "timeout")):
        limit = f" after {timeout_s:.0f} s" if timeout_s and isinstance(exc, TimeoutError) else ""
        return RemoteError(f"The NDIF job for {name} timed out{limit}. NDIF may be busy: try "
                           f"again later, or run a smaller sweep (fewer positions or layers).")
    if any(s in low for s in ("401", "403", "unauthorized", "forbidden", "api key", "api-key",
                              "apikey", "not authorized", "invalid key")):
        return RemoteError("NDIF refused the API key. Check it at "
                           f"{NDIF_KEY_URL} and enter it again.", field="api_key")
    if any(s in low for s in _NOT_SERVED_TEXT):
        return model_not_served_error(name)
    if "out of memory" in low:
        return RemoteError(f"The NDIF job for {name} ran out of memory on the server. "
                           f"Run a smaller sweep (fewer positions or a coarser sweep).")
    return RemoteError(f"The NDIF job for {name} failed: {first}")


def model_not_served_error(model_id: str, served: list[str] | None = None) -> RemoteError:
    some = ""
    if served:
        some = " Served now: " + ", ".join(sorted(served)[:8]) + ("…" if len(served) > 8 else "") + "."
    return RemoteError(f"NDIF does not serve '{model_id}' right now.{some} See {NDIF_STATUS_URL} "
                       f"for the current list, or load a smaller model locally.", field="model")


def resolve_api_key(api_key: str | None = None) -> str | None:
    """The key passed in, else NDIF_API_KEY, else nnsight's configured key (never printed)."""
    if api_key and api_key.strip():
        return api_key.strip()
    env = os.environ.get("NDIF_API_KEY", "").strip()
    if env:
        return env
    try:
        from nnsight import CONFIG
        return (CONFIG.API.APIKEY or "").strip() or None
    except Exception:  # noqa: BLE001
        return None


def ndif_host(host: str | None = None) -> str:
    if host:
        return host.rstrip("/")
    from nnsight import CONFIG
    return (os.environ.get("NDIF_HOST") or CONFIG.API.HOST).rstrip("/")


def served_models(host: str | None = None, timeout_s: float = 10.0) -> dict:
    """NDIF's /status, as {repo_id: state}. Raises RemoteError if NDIF cannot be reached."""
    import httpx

    url = f"{ndif_host(host)}/status"
    try:
        response = httpx.get(url, timeout=httpx.Timeout(timeout_s))
        response.raise_for_status()
        data = response.json()
    except Exception as exc:  # noqa: BLE001
        raise RemoteError("Could not reach NDIF (network down, or the service is offline). "
                          f"Check your connection and {NDIF_STATUS_URL}, or run a local model.") from exc
    out = {}
    for name, value in (data.get("deployments") or {}).items():
        if isinstance(value, dict):
            out[value.get("repo_id", name)] = value.get("application_state") or value.get(
                "deployment_level") or "?"
    return out




def request_backend(nn, remote, model_key: str | None, host: str | None, api_key: str | None):
    """The nnsight backend object for one request: NDIF's dry run (remote="local", see
    simulation.py) or a non-blocking NDIF job (remote=True)."""
    if remote == "local":
        from .simulation import SimulatedNDIF
        return SimulatedNDIF(nn)
    from nnsight.intervention.backends.remote import RemoteBackend
    backend = RemoteBackend(model_key, host=ndif_host(host), api_key=api_key,
                            env=nn._remoteable_get_env(), blocking=False)
    backend.display.enabled = False  # progress goes to on_status, not stdout
    return backend


def wait_for_result(backend, model_id: str, where: str, on_status, cancel, timeout_s: float) -> dict:
    """Poll a submitted NDIF job until it finishes; its states go to on_status(state, where)."""
    from nnsight.schema.response import Status
    t0, last = time.monotonic(), None
    while True:
        result = backend.poll()
        status = backend.status
        if status is not None and status != last:
            on_status(getattr(status, "value", str(status)), where)
            last = status
        if isinstance(result, dict):
            return result
        if status == Status.ERROR:  # poll raises on ERROR; belt and braces
            raise RemoteError(f"The NDIF job for {model_id} failed.")
        if cancel is not None and cancel():
            raise Cancelled("Cancelled. The NDIF job may still finish on the server; "
                            "its result is discarded.")
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no result after {timeout_s:.0f} s")
        time.sleep(1.0)
