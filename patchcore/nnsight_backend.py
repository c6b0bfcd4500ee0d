"""A backend that runs patching through nnsight: locally, simulated-remote, or on NDIF.

Same interface as hooks.HookBackend (see engine.make_backend):

    baseline(rows_ids (2,T), component) -> (last logits (2,V), per-layer (2,T,D) activations)
    patched(base_ids (T,), source [per layer (T,D)], cells (n,3), component, skip_lower)
        -> last logits (n,V)

remote=False   nnsight traces on the local model.
remote="local" nnsight's serverless dry run of NDIF: every request is serialised,
               deserialised with local modules hidden (as on the server) and run
               in-process. This is what the tests use.
remote=True    NDIF (https://ndif.us). The model is a weightless meta model built
               from the hub config (see make_remote_backend); the API key comes from
               the `api_key` argument or NDIF_API_KEY and is never logged or stored.

How a sweep travels. All patches of one request run as traces inside ONE nnsight
session (one forward of up to `rows_per_trace` rows per trace, one patch per row,
vectorised index assignment per layer). With `prefetch` (on for remote runs), the
first patched() call sends the WHOLE sweep as one session (the engine shows it
through order(); an engine without that hook is recognised from the sweep grid)
and serves the engine's later batches from the downloaded result: a sweep costs
two requests (baseline + patches). After
`focus_tokens(answer_id, wrong_id)` (run_nnsight_sweep calls it) only three numbers
per patch come back instead of a vocabulary-wide row of logits.

The `with` blocks below are shipped to the server as source: they may use only
torch, builtins, nnsight envoys and plain values, never patchcore itself.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import os
import time

import nnsight
import numpy as np
import torch

from .errors import Cancelled, PatchError
from .models import LoadedModel, ModelSpec
from .sweeps import SWEEPS

NDIF_KEY_URL = "https://login.ndif.us"
NDIF_STATUS_URL = "https://nnsight.net/status/"
DEFAULT_TIMEOUT_S = float(os.environ.get("PATCHCORE_REMOTE_TIMEOUT_S", "1800"))


class RemoteError(PatchError):
    """A remote (NDIF) run failed; the message says what to do."""


# -- errors ----------------------------------------------------------------------

def _scrub(text: str, secret: str | None) -> str:
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
    text = _scrub(f"{type(exc).__name__}: {exc}", secret)
    low = text.lower()
    first = _scrub(str(exc), secret).strip().splitlines()
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


# -- the nnsight wrapper -----------------------------------------------------------

def wrap_nnsight(model: LoadedModel):
    """nnsight.TransformersModel around an already loaded model (its weights stay shared).

    The tokenizer is copied: wrapping sets padding side and pad token, and the
    LoadedModel's tokenizer must stay as the rest of patchcore expects it.
    """
    from nnsight import TransformersModel

    return TransformersModel(model.hf, tokenizer=copy.deepcopy(model.tokenizer))


def _full_grid(cells: np.ndarray, component: str, n_layers: int, n_pos: int, n_heads: int):
    """The whole sweep grid whose first cells these are, or None when they are not a prefix of one."""
    if len(cells) == 0:
        return None
    per_pos, per_head = bool(cells[0, 1] >= 0), bool(cells[0, 2] >= 0)
    for spec in SWEEPS.values():
        if (spec.component, spec.per_position, spec.per_head) == (component, per_pos, per_head):
            full = spec.cells(n_layers, n_pos, n_heads)
            if len(full) >= len(cells) and np.array_equal(full[:len(cells)], cells):
                return full
    return None


def expand_focused(triples: torch.Tensor, answer_id: int, wrong_id: int) -> torch.Tensor:
    """(n, 3) rows of (logit[answer], logit[wrong], logsumexp) -> (n, W) logits with the same metrics.

    Every column but answer, wrong and one 'rest of the vocabulary' column is -inf,
    so logit difference, probability and log-probability of the answer come out
    exactly as from the full row.
    """
    t = triples.double()
    la, lw, lse = t[:, 0], t[:, 1], t[:, 2]
    rest_col = next(c for c in range(3) if c not in (answer_id, wrong_id))
    width = max(answer_id, wrong_id, rest_col) + 1
    share = torch.exp(la - lse) + (torch.exp(lw - lse) if wrong_id != answer_id else 0.0)
    rest = lse + torch.log1p(-share.clamp(max=1.0))  # -inf when the pair holds all the mass
    out = torch.full((t.shape[0], width), -math.inf, dtype=torch.float64)
    out[:, rest_col] = rest
    out[:, wrong_id] = lw
    out[:, answer_id] = la
    return out.float()


class NNsightBackend:
    """Batched activation patching through nnsight (local, simulated remote, or NDIF)."""

    def __init__(self, model: LoadedModel, remote: bool | str = False, api_key: str | None = None, *,
                 nn=None, model_id: str | None = None, host: str | None = None,
                 rows_per_trace: int | None = None, prefetch: bool | None = None,
                 on_status=None, timeout_s: float | None = None, check_served: bool = True,
                 cancel=None):
        if remote not in (False, True, "local"):
            raise PatchError(f"Unknown remote mode {remote!r}: use False, 'local' or True.")
        self.model = model
        self.remote = remote
        self.name = "remote" if remote is True else "nnsight"
        self.c = model.components
        self.model_id = model_id or getattr(model.spec, "name", None) or model.label
        self.host = host
        self.on_status = on_status    # on_status(state, where): NDIF job states, e.g. QUEUED, RUNNING
        self.cancel = cancel          # cancel() -> bool, polled while waiting for NDIF
        self.timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        self.check_served = check_served
        self.rows_per_trace = rows_per_trace or (128 if remote else 256)
        self.prefetch = bool(remote) if prefetch is None else prefetch
        self.requests = 0          # remote/simulated requests sent (sessions + traces)
        self._focus: tuple[int, int] | None = None
        self._store: dict | None = None
        self._planned: tuple | None = None
        self.__key = None
        if remote is True:
            self.__key = resolve_api_key(api_key)
            if not self.__key:
                raise no_key_error()
        self.nn = nn if nn is not None else wrap_nnsight(model)
        params = inspect.signature(model.hf.forward).parameters
        self._kw = {"use_cache": False}
        if "logits_to_keep" in params:
            self._kw["logits_to_keep"] = 1
        self._served_checked = False
        self._model_key = None

    def __getstate__(self):  # a pickled or deep-copied backend never carries the key
        state = self.__dict__.copy()
        state["_NNsightBackend__key"] = None
        return state

    def __repr__(self) -> str:  # never shows the key
        return f"NNsightBackend(model={self.model_id!r}, remote={self.remote!r})"

    # -- public knobs ----------------------------------------------------------------
    @property
    def batch_size(self) -> int | None:
        """A good engine batch size: remote runs want few, big requests."""
        return 100_000 if self.remote else None

    def focus_tokens(self, answer_id: int | None, wrong_id: int | None = None) -> None:
        """Return only what the metrics need for these two tokens (None: full logits again)."""
        self._focus = None if answer_id is None else (int(answer_id), int(wrong_id))
        self._store = None

    def order(self, cells: np.ndarray, component: str, skip_lower: bool = True):
        """The engine shows the whole sweep before its first batch: remember it for prefetch.

        Returns None (keep the sweep's order: it is layer-major, which suits skip_lower).
        """
        self._planned = (np.asarray(cells, dtype=np.int64).copy(), component, skip_lower)
        return None

    # -- plumbing ----------------------------------------------------------------------
    def _status(self, state: str, text: str = "") -> None:
        if self.on_status is not None:
            try:
                self.on_status(state, _scrub(text, self.__key))
            except Exception:  # noqa: BLE001 - a UI callback must not break the run
                pass

    def _envoys(self, component: str) -> list:
        return [self.nn.get(self.c.module_path(component, layer)) for layer in range(self.c.n_layers)]

    def _backend(self):
        """The nnsight backend object for one request (None = run in place)."""
        if self.remote == "local":
            from .ndif_simulation import SimulatedNDIF
            return SimulatedNDIF(self.nn)
        if self.remote is True:
            from nnsight.intervention.backends.remote import RemoteBackend
            if self._model_key is None:
                try:
                    self._model_key = self.nn.to_model_key()  # the hub canonicalises the id
                except Exception as exc:  # noqa: BLE001
                    raise friendly_remote_error(exc, self.model_id, self.__key) from exc
            if self.check_served and not self._served_checked:
                try:
                    repo = json.loads(self._model_key.split(":", 1)[1]).get("repo_id") or self.model_id
                except (ValueError, IndexError, AttributeError):
                    repo = self.model_id
                self._check_served(repo)
            backend = RemoteBackend(self._model_key, host=ndif_host(self.host), api_key=self.__key,
                                    env=self.nn._remoteable_get_env(), blocking=False)
            backend.display.enabled = False  # progress goes to on_status, not stdout
            return backend
        return None

    def _check_served(self, repo: str) -> None:
        served = served_models(self.host)
        if repo not in served and not any(k.lower() == str(repo).lower() for k in served):
            raise model_not_served_error(repo, list(served))
        self._served_checked = True

    def _finish(self, backend, where: str):
        """For NDIF: wait for the submitted job (status to on_status) and return its saves."""
        if self.remote is not True:
            return None
        from nnsight.schema.response import Status
        t0, last = time.monotonic(), None
        while True:
            result = backend.poll()
            status = backend.status
            if status is not None and status != last:
                self._status(getattr(status, "value", str(status)), where)
                last = status
            if isinstance(result, dict):
                return result
            if status == Status.ERROR:  # poll raises on ERROR; belt and braces
                raise RemoteError(f"The NDIF job for {self.model_id} failed.")
            if self.cancel is not None and self.cancel():
                raise Cancelled("Cancelled. The NDIF job may still finish on the server; "
                                "its result is discarded.")
            if time.monotonic() - t0 > self.timeout_s:
                raise TimeoutError(f"no result after {self.timeout_s:.0f} s")
            time.sleep(1.0)

    def _call(self, fn, where: str):
        """Run one request, mapping every remote failure to a RemoteError."""
        self.requests += 1
        if self.remote:
            self._status("SENDING", where)
        try:
            out = fn()
        except (RemoteError, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001
            if self.remote is True:
                raise friendly_remote_error(exc, self.model_id, self.__key, self.timeout_s) from exc
            raise
        if self.remote:
            self._status("COMPLETED", where)
        return out

    # -- baseline ------------------------------------------------------------------------
    def baseline(self, rows_ids: torch.Tensor, component: str):
        mods = self._envoys(component)
        is_head = component == "head"
        kw = self._kw
        nn = self.nn
        ids = rows_ids.long().cpu()

        def run():
            backend = self._backend()
            with nn.trace(ids, backend=backend, **kw):
                acts = []
                for mod in mods:
                    if is_head:
                        x = mod.input
                    else:
                        x = mod.output
                        if isinstance(x, tuple):
                            x = x[0]
                    acts.append(x.detach().clone())
                logits = nn.output.logits[:, -1, :].detach().clone()
                result = nnsight.save((logits, acts))
            if backend is not None and self.remote is True:
                result = self._finish(backend, "baseline")["result"]
            return result

        logits, acts = self._call(run, "baseline")
        return logits.cpu(), [a.cpu() for a in acts]

    # -- patched ---------------------------------------------------------------------------
    def _plans(self, base_ids: torch.Tensor, source: list, cells: np.ndarray, component: str,
               skip_lower: bool) -> list:
        """Per trace: (input ids, widen-at envoy or None, rows, [(envoy, src, rows, pos, heads)])."""
        mods = self._envoys(component)
        plans = []
        for start in range(0, len(cells), self.rows_per_trace):
            chunk = cells[start:start + self.rows_per_trace]
            n = len(chunk)
            low = int(chunk[:, 0].min())
            if skip_lower:
                ids = base_ids.view(1, -1).long().cpu()
                widen = self.nn.get(self.c.module_path("resid", low)) if n > 1 else None
            else:
                ids = base_ids.view(1, -1).expand(n, -1).long().cpu().contiguous()
                widen = None
            steps = []
            for layer in np.unique(chunk[:, 0]):
                sel = chunk[:, 0] == layer
                rows = torch.as_tensor(np.nonzero(sel)[0])
                pos, heads = chunk[sel, 1], chunk[sel, 2]
                pos_t = None if pos[0] < 0 else torch.as_tensor(pos)
                heads_t = None if heads[0] < 0 else torch.as_tensor(heads)
                steps.append((mods[int(layer)], source[int(layer)], rows, pos_t, heads_t))
            plans.append((ids, widen, n, steps))
        return plans

    def _run_patches(self, base_ids, source, cells, component, skip_lower) -> torch.Tensor:
        """All patches in one session (one request when remote): logits or focused triples."""
        plans = self._plans(base_ids, source, cells, component, skip_lower)
        is_head = component == "head"
        nh = self.c.n_heads
        kw = self._kw
        nn = self.nn
        focus = self._focus

        def run():
            backend = self._backend()
            with nn.session(backend=backend):
                outs = []
                for ids, widen, n, steps in plans:
                    with nn.trace(ids, **kw):
                        if widen is not None:
                            h = widen.input
                            widen.input = h.expand(n, -1, -1).contiguous()
                        for mod, src, rows, pos, heads in steps:
                            if is_head:
                                out = None
                                x = mod.input
                            else:
                                out = mod.output
                                x = out[0] if isinstance(out, tuple) else out
                            x = x.clone(memory_format=torch.contiguous_format)
                            dev = x.device
                            s = src.to(device=dev, dtype=x.dtype)
                            r = rows.to(dev)
                            if heads is None:
                                if pos is None:
                                    x[r] = s
                                else:
                                    p = pos.to(dev)
                                    x[r, p] = s[p]
                            else:
                                b, t, d = x.shape
                                x4 = x.view(b, t, nh, d // nh)
                                s4 = s.reshape(t, nh, d // nh)
                                hd = heads.to(dev)
                                if pos is None:
                                    x4[r, :, hd] = s4.permute(1, 0, 2)[hd]
                                else:
                                    p = pos.to(dev)
                                    x4[r, p, hd] = s4[p, hd]
                            if is_head:
                                mod.input = x
                            elif isinstance(out, tuple):
                                mod.output = (x,) + tuple(out[1:])
                            else:
                                mod.output = x
                        lg = nn.output.logits[:, -1, :]
                        if focus is None:
                            outs.append(lg.detach().clone())
                        else:
                            lf = lg.float()
                            outs.append(torch.stack([lf[:, focus[0]], lf[:, focus[1]],
                                                     torch.logsumexp(lf, dim=-1)], dim=1).cpu())
                outs = nnsight.save(outs)
            if backend is not None and self.remote is True:
                outs = self._finish(backend, f"{len(cells)} patches")["outs"]
            return outs

        outs = self._call(run, f"{len(cells)} patches")
        return torch.cat([o.cpu() for o in outs], dim=0)

    def _to_logits(self, out: torch.Tensor) -> torch.Tensor:
        if self._focus is None:
            return out
        return expand_focused(out, *self._focus)

    def patched(self, base_ids: torch.Tensor, source: list, cells: np.ndarray,
                component: str, skip_lower: bool = True) -> torch.Tensor:
        cells = np.asarray(cells, dtype=np.int64)
        if self.prefetch:
            hit = self._from_store(base_ids, source, cells, component, skip_lower)
            if hit is not None:
                return self._to_logits(hit)
            full = None
            if self._planned is not None:
                planned, comp, skip = self._planned
                if (comp, skip) == (component, skip_lower) and len(planned) >= len(cells) \
                        and np.array_equal(planned[:len(cells)], cells):
                    full = planned
                self._planned = None
            if full is None:  # an engine without order(): recognise the sweep grid instead
                full = _full_grid(cells, component, self.c.n_layers, int(base_ids.numel()),
                                  self.c.n_heads)
            if full is not None and len(full) > len(cells):
                out = self._run_patches(base_ids, source, full, component, skip_lower)
                self._store = {"ids": base_ids.clone(), "source": source, "cells": full, "out": out,
                               "component": component, "skip_lower": skip_lower, "focus": self._focus,
                               "offset": len(cells)}
                return self._to_logits(out[:len(cells)])
        return self._to_logits(self._run_patches(base_ids, source, cells, component, skip_lower))

    def _from_store(self, base_ids, source, cells, component, skip_lower):
        st = self._store
        if st is None:
            return None
        off = st["offset"]
        ok = (st["source"] is source and st["component"] == component and st["skip_lower"] == skip_lower
              and st["focus"] == self._focus and torch.equal(st["ids"], base_ids)
              and off + len(cells) <= len(st["cells"])
              and np.array_equal(st["cells"][off:off + len(cells)], cells))
        if not ok:
            self._store = None
            return None
        st["offset"] = off + len(cells)
        out = st["out"][off:off + len(cells)]
        if st["offset"] >= len(st["cells"]):
            self._store = None  # sweep done: free the memory
        return out


# -- remote models ---------------------------------------------------------------------

def make_remote_backend(model_id: str, api_key: str | None = None, *, remote: bool | str = True,
                        revision: str | None = None, host: str | None = None, on_status=None,
                        config=None, tokenizer=None, timeout_s: float | None = None,
                        check_served: bool = True):
    """A weightless model for NDIF plus its backend: (LoadedModel, NNsightBackend).

    The LoadedModel holds nnsight's meta-device build of `model_id` (config and
    tokenizer from the hub, no weights: nothing large is downloaded), so sweeps can be
    planned, tokenised and labelled exactly as for a local model; every forward
    goes through the backend. remote="local" runs the same requests in-process
    (the weights are then loaded locally on the first run: for tests and dry runs
    on small models, e.g. a model folder on disk).
    """
    from nnsight import TransformersModel

    from .components import resolve_components

    key = None
    if remote is True:
        key = resolve_api_key(api_key)
        if not key:
            raise no_key_error()
    kwargs = {"task": "text-generation"}
    if revision:
        kwargs["revision"] = revision
    if config is not None:
        kwargs["config"] = config
    try:
        if tokenizer is None:
            # nnsight 0.8.1's meta build does not source the tokenizer itself under
            # transformers 5 (the pipeline's _load_tokenizer flag is gone): load it here
            tokenizer = _load_tokenizer(model_id, revision)
        kwargs["tokenizer"] = tokenizer
        nn = TransformersModel(model_id, **kwargs)
    except Exception as exc:  # noqa: BLE001
        from .models import _friendly_load_error
        raise _friendly_load_error(model_id, exc) from exc
    if remote == "local":
        # the simulated run executes here, so it needs real weights: load them now
        try:
            nn.dispatch()
        except Exception as exc:  # noqa: BLE001
            from .models import _friendly_load_error
            raise _friendly_load_error(model_id, exc) from exc
    module = nn._module
    components = resolve_components(module)
    dtype = next(module.parameters()).dtype
    if remote is True:  # the meta build is fp32; NDIF runs the checkpoint's own dtype
        declared = getattr(module.config, "dtype", None) or getattr(module.config, "torch_dtype", None)
        if isinstance(declared, str):
            declared = getattr(torch, declared, None)
        if isinstance(declared, torch.dtype):
            dtype = declared
    device = next(module.parameters()).device
    loaded = LoadedModel(
        spec=ModelSpec(name=model_id, device="cpu", revision=revision,
                       dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")),
        label=f"{model_id} ({'NDIF' if remote is True else 'simulated NDIF'})",
        hf=module, tokenizer=nn.tokenizer, components=components, device=device, dtype=dtype,
    )
    backend = NNsightBackend(loaded, remote=remote, api_key=key, nn=nn, model_id=model_id, host=host,
                             on_status=on_status, timeout_s=timeout_s, check_served=check_served)
    return loaded, backend


def _load_tokenizer(model_id: str, revision: str | None):
    from pathlib import Path

    from transformers import AutoTokenizer

    from .models import _from_pretrained_cached_first

    kwargs = {"revision": revision} if revision else {}
    if Path(model_id).expanduser().is_dir():
        return AutoTokenizer.from_pretrained(str(Path(model_id).expanduser()), **kwargs)
    return _from_pretrained_cached_first(AutoTokenizer, model_id, **kwargs)


def run_nnsight_sweep(model: LoadedModel, backend: NNsightBackend, pair, sweep: str = "layer_pos",
                      direction: str = "denoise", metric: str = "logit_diff", **kwargs):
    """engine.run_sweep through an nnsight backend, with remote-friendly settings.

    Focuses the download on the answer/wrong tokens and lets the whole sweep go as
    one request. Everything else (validation, metrics, result) is the engine's.
    """
    from .engine import run_sweep
    from .prompts import PreparedPair, prepare_pair

    prepared = pair if isinstance(pair, PreparedPair) else prepare_pair(model.tokenizer, pair)
    backend.focus_tokens(prepared.answer_id, prepared.wrong_id)
    try:
        kwargs.setdefault("batch_size", backend.batch_size)
        return run_sweep(model, prepared, sweep, direction, metric, backend=backend, **kwargs)
    finally:
        backend.focus_tokens(None)
