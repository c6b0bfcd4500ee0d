"""The same interventions through nnsight: locally, as NDIF's dry run, or on NDIF.

remote=False   nnsight traces on the local model.
remote="local" NDIF's dry run: every request is serialised, deserialised as the
               server would (simulation.py) and run in-process. The tests use it.
remote=True    NDIF (https://ndif.us). The model is a weightless meta model built
               from the hub config (make_remote_backend); the key comes from the
               `api_key` argument or NDIF_API_KEY and is never logged or stored.

A run() call is one request: one nnsight session holding one trace per
`rows_per_trace` rows, each a batched forward with the batch's writes applied
as vectorised index assignments, returning the three readout numbers per row.
Remote backends ask the engine for the whole sweep in one call
(rows_per_call), so a sweep costs two requests: baseline and patches.

The `with` blocks below are shipped to the server as source: they may use only
torch, builtins, nnsight envoys and plain values, never patchcore itself.
"""
from __future__ import annotations

import copy
import inspect
import json

import nnsight
import numpy as np
import torch

from ..errors import Cancelled, PatchError
from ..models import LoadedModel, ModelSpec
from ..sites import Component
from .base import Backend, Batch
from .ndif import (DEFAULT_TIMEOUT_S, RemoteError, friendly_remote_error, model_not_served_error,
                   no_key_error, request_backend, resolve_api_key, scrub, served_models,
                   wait_for_result)


def wrap_nnsight(model: LoadedModel):
    """nnsight.TransformersModel around an already loaded model (its weights stay shared).

    The tokenizer is copied: wrapping sets padding side and pad token, and the
    LoadedModel's tokenizer must stay as the rest of patchcore expects it.
    """
    from nnsight import TransformersModel

    return TransformersModel(model.hf, tokenizer=copy.deepcopy(model.tokenizer))


class NNsightBackend(Backend):
    """Batched activation patching through nnsight (local, simulated remote, or NDIF)."""

    def __init__(self, model: LoadedModel, remote: bool | str = False, api_key: str | None = None, *,
                 nn=None, model_id: str | None = None, host: str | None = None,
                 rows_per_trace: int | None = None, one_request: bool | None = None,
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
        self.one_request = bool(remote) if one_request is None else one_request
        self.requests = 0          # remote/simulated requests sent (sessions + traces)
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

    def rows_per_call(self, requested: int, total: int) -> int:
        """Remote runs want few, big requests: the whole sweep at once."""
        return max(total, 1) if self.one_request else requested

    # -- plumbing ----------------------------------------------------------------------
    def _status(self, state: str, text: str = "") -> None:
        if self.on_status is not None:
            try:
                self.on_status(state, scrub(text, self.__key))
            except Exception:  # noqa: BLE001 - a UI callback must not break the run
                pass

    def _envoy(self, component: Component, layer: int):
        if component.hook == "pattern":
            raise PatchError("Attention patterns can be patched on local models only: they are "
                             "computed inside attention, where nnsight (and NDIF) cannot reach. "
                             "Patch the head's queries or keys instead, or load the model locally.",
                             field="sweep")
        return self.nn.get(self.c.module_path(component, layer))

    def _backend(self):
        """The nnsight backend object for one request (None = run in place)."""
        if self.remote is False:
            return None
        if self.remote is True:
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
                served = served_models(self.host)
                if repo not in served and not any(k.lower() == str(repo).lower() for k in served):
                    raise model_not_served_error(repo, list(served))
                self._served_checked = True
        return request_backend(self.nn, self.remote, self._model_key, self.host, self.__key)

    def _call(self, fn, where: str):
        """Run one request; every remote failure becomes a RemoteError; NDIF jobs are awaited."""
        self.requests += 1
        if self.remote:
            self._status("SENDING", where)
        try:
            backend = self._backend()
            out = fn(backend)
            if backend is not None and self.remote is True:
                out = wait_for_result(backend, self.model_id, where, self._status, self.cancel,
                                      self.timeout_s)["result"]
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
    def baseline(self, ids: torch.Tensor, component: Component):
        mods = [self._envoy(component, layer) for layer in range(self.c.n_layers)]
        is_input = component.hook == "input"
        kw, nn, ids = self._kw, self.nn, ids.long().cpu()
        job = self.remote is True   # NDIF runs the block remotely: its result comes from the job

        def run(backend):
            with nn.trace(ids, backend=backend, **kw):
                acts = []
                for mod in mods:
                    if is_input:
                        x = mod.input
                    else:
                        x = mod.output
                        if isinstance(x, tuple):
                            x = x[0]
                    acts.append(x.detach().clone())
                logits = nn.output.logits[:, -1, :].detach().clone()
                result = nnsight.save((logits, acts))
            return None if job else result

        logits, acts = self._call(run, "baseline")
        return logits.cpu(), [a.cpu() for a in acts]

    # -- patched ---------------------------------------------------------------------------
    def _plan(self, batch: Batch) -> list:
        """Per trace: (input ids, widen-at envoy or None, rows, answer, wrong, steps); a step is
        (envoy, reads its input?, slices, [(rows, pos or None, heads or None, src, table)])."""
        plans = []
        one_prompt = len(np.unique(batch.prompt)) == 1
        for start in range(0, batch.n, self.rows_per_trace):
            chunk = batch.subset(np.arange(start, min(start + self.rows_per_trace, batch.n)))
            n = chunk.n
            if batch.skip_lower and one_prompt:
                ids = chunk.ids[int(chunk.prompt[0])].view(1, -1).long().cpu()
                low = min(int(w.layer.min()) for w in chunk.writes) if chunk.writes else 0
                widen = self.nn.get(self.c.module_path(None, low)) if n > 1 else None
            else:
                ids = chunk.ids[torch.as_tensor(chunk.prompt)].long().cpu().contiguous()
                widen = None
            steps = []
            for w in chunk.writes:
                by_layer: dict = {}
                for layer, all_pos, all_head, idx in w.groups():
                    t = lambda a: torch.as_tensor(a[idx])  # noqa: E731
                    by_layer.setdefault(layer, []).append(
                        (t(w.rows), None if all_pos else t(w.pos), None if all_head else t(w.head),
                         t(w.src), w.table[layer]))
                for layer in sorted(by_layer):
                    steps.append((layer, self._envoy(w.component, layer), w.component.hook == "input",
                                  w.component.layout(self.c), by_layer[layer]))
            steps.sort(key=lambda s: s[0])   # modules are reached in layer order
            plans.append((ids, widen, n, torch.as_tensor(chunk.answer), torch.as_tensor(chunk.wrong),
                          [s[1:] for s in steps]))
        return plans

    def run(self, batch: Batch) -> torch.Tensor:
        """All rows in one session (one request when remote): readout (n, 3)."""
        plans = self._plan(batch)
        kw, nn = self._kw, self.nn
        job = self.remote is True

        def run(backend):
            with nn.session(backend=backend):
                outs = []
                for ids, widen, n, answer, wrong, steps in plans:
                    with nn.trace(ids, **kw):
                        if widen is not None:
                            h = widen.input
                            widen.input = h.expand(n, -1, -1).contiguous()
                        for mod, is_input, (hn, gn, gi, gfirst), groups in steps:
                            if is_input:
                                out = None
                                x = mod.input
                            else:
                                out = mod.output
                                x = out[0] if isinstance(out, tuple) else out
                            x = x.clone(memory_format=torch.contiguous_format)
                            dev = x.device
                            b, t, d = x.shape
                            e = d // (hn * gn)   # split_heads, spelled out for the server
                            if gfirst:
                                x4 = x.view(b, t, gn, hn, e)[:, :, gi]
                            else:
                                x4 = x.view(b, t, hn, gn, e)[:, :, :, gi]
                            for rows, pos, heads, src, table in groups:
                                s = table.to(device=dev, dtype=x.dtype)
                                if gfirst:
                                    s4 = s.view(s.shape[0], s.shape[1], gn, hn, e)[:, :, gi]
                                else:
                                    s4 = s.view(s.shape[0], s.shape[1], hn, gn, e)[:, :, :, gi]
                                r, si = rows.to(dev), src.to(dev)
                                if pos is None and heads is None:
                                    x4[r] = s4[si]
                                elif pos is None:
                                    hd = heads.to(dev)
                                    x4[r, :, hd] = s4[si, :, hd]
                                elif heads is None:
                                    p = pos.to(dev)
                                    x4[r, p] = s4[si, p]
                                else:
                                    p, hd = pos.to(dev), heads.to(dev)
                                    x4[r, p, hd] = s4[si, p, hd]
                            if is_input:
                                mod.input = x
                            elif isinstance(out, tuple):
                                mod.output = (x,) + tuple(out[1:])
                            else:
                                mod.output = x
                        lf = nn.output.logits[:, -1, :].float()
                        ar = torch.arange(lf.shape[0], device=lf.device)
                        a, w = answer.to(lf.device), wrong.to(lf.device)
                        outs.append(torch.stack([lf[ar, a], lf[ar, w], torch.logsumexp(lf, dim=-1)],
                                                dim=1).cpu())
                result = nnsight.save(outs)
            return None if job else result

        outs = self._call(run, f"{batch.n} patches")
        return torch.cat([o.cpu() for o in outs], dim=0)


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

    from ..components import resolve_components
    from ..models import _friendly_load_error

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
        if remote == "local":   # the simulated run executes here, so it needs real weights
            nn.dispatch()
    except Exception as exc:  # noqa: BLE001
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

    from ..models import _from_pretrained_cached_first

    kwargs = {"revision": revision} if revision else {}
    if Path(model_id).expanduser().is_dir():
        return AutoTokenizer.from_pretrained(str(Path(model_id).expanduser()), **kwargs)
    return _from_pretrained_cached_first(AutoTokenizer, model_id, **kwargs)
