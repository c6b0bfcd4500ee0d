"""NDIF (remote execution through nnsight) in the dashboard: the Model page's connect form,
the session's connection, and remote sweeps and baselines for the Patching and Prompts pages.

How a connection is kept:
- The hub gives the config and tokenizer (a few MB, no weights). They are cached with
  st.cache_resource per (hub id, revision), shared by every session: they hold no key.
- Each session builds its OWN weightless nnsight model from them (nnsight changes the modules
  it wraps for good, so it never wraps a cached or shared model) and keeps it, with the API
  key, in a `Remote` in this browser session's st.session_state["_remote"]. Nothing that holds
  the key is cached, put in the URL, the run history, an export, a log or an error message.
- Every run gets a fresh NNsightBackend from the session's Remote, with that run's status
  callback (NDIF job states in the progress text) and Cancel.

PATCHCORE_NDIF_MODE=local (for development and the tests) swaps NDIF for nnsight's
remote="local" dry run: every request is serialised, run in this process with the local modules
hidden as on the server, and deserialised. No key and no network; the hub id may be a model
folder (the weights are then loaded here). Such runs report backend "nnsight" (what the engine
calls an nnsight run that did not go to NDIF); real NDIF runs report backend "remote". Both
record "remote": True in the run history, with "ndif": "simulated" or the NDIF host.
"""
from __future__ import annotations

import copy
import os
import re
import uuid
from types import SimpleNamespace

import pandas as pd
import streamlit as st
from streamlit import config as st_config

import ui
from patchcore import PatchError, plan, prepare_pair, run_baseline, run_sweep
from patchcore.access import check_model_access
from patchcore.errors import ModelLoadError
from patchcore.models import looks_like_path
from patchcore.backends.ndif import (NDIF_KEY_URL, NDIF_STATUS_URL, RemoteError, friendly_remote_error,
                                     model_not_served_error, ndif_host, no_key_error, resolve_api_key,
                                     scrub, served_models)
from patchcore.backends.nnsight import NNsightBackend, make_remote_backend

MODE_ENV = "PATCHCORE_NDIF_MODE"
SUGGESTED = "meta-llama/Llama-3.1-8B"
STATE = "_remote"           # the session's Remote (ui.model's sidebar reads it)
DEVICE = "NDIF (remote)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9._/-]{0,100}$")


def ndif_mode() -> bool | str:
    """True: the real NDIF. "local": nnsight's in-process dry run (PATCHCORE_NDIF_MODE=local)."""
    return "local" if os.environ.get(MODE_ENV, "").strip().lower() == "local" else True


def active() -> "Remote | None":
    """The session's NDIF connection, or None when it runs a local model."""
    return st.session_state.get(STATE)


def disconnect() -> None:
    st.session_state.pop(STATE, None)


class Remote:
    """One browser session's NDIF connection: its own weightless model and its API key."""

    def __init__(self, hub_id: str, revision: str, mode: bool | str, model, nn, key: str | None):
        self.hub_id, self.revision, self.mode = hub_id, revision, mode
        self.model, self.nn = model, nn  # this session's own meta model (real weights when simulated)
        self.ident = uuid.uuid4().hex   # tells this connection's memoised baselines from others'
        self.__key = key

    @property
    def simulated(self) -> bool:
        return self.mode == "local"

    def __repr__(self) -> str:  # never shows the key
        return f"Remote({self.hub_id!r}, mode={self.mode!r})"

    def __getstate__(self):  # a pickled or copied connection never carries the key
        state = self.__dict__.copy()
        state["_Remote__key"] = None
        return state

    def guard(self, fn):
        """fn(), its failures as one sentence without the key (Cancelled, PatchErrors as they are)."""
        try:
            return fn()
        except PatchError:  # Cancelled too; the backend's RemoteErrors are already scrubbed
            raise
        except Exception as exc:  # noqa: BLE001
            if self.mode is True:
                raise friendly_remote_error(exc, self.hub_id, self.__key) from exc
            raise

    def backend(self, on_status=None, cancel=None) -> NNsightBackend:
        """A backend for one run, on this session's model (the key goes in, never out)."""
        return NNsightBackend(self.model, remote=self.mode, api_key=self.__key, nn=self.nn,
                              model_id=self.hub_id, on_status=on_status, cancel=cancel)

    @property
    def caption(self) -> str:
        """The sidebar's line (Markdown)."""
        f = self.model.facts()
        where = " · simulated here (`PATCHCORE_NDIF_MODE=local`)" if self.simulated else ""
        return (f"device **{DEVICE}** · dtype **{f['dtype']}** · {f['layers']} layers · "
                f"{f['heads']} heads{where}")

    def facts(self) -> dict:
        f = self.model.facts()
        f["device"] = DEVICE + (" – simulated on this machine" if self.simulated else "")
        if not self.simulated:
            f["parameters"] = f"{f['parameters']:,} (on NDIF; none downloaded)"
        return f

    def settings(self) -> dict:
        """What the run history records about where a run went (never the key)."""
        return {"model": self.hub_id, "revision": self.revision or None, "device": DEVICE,
                "dtype": self.model.spec.dtype, "remote": True,
                "ndif": "simulated" if self.simulated else ndif_host()}

    def result_device(self) -> str:
        return f"NDIF (simulated on {self.model.device})" if self.simulated else "NDIF"


# ---------------------------------------------------------------- connecting

@st.cache_resource(show_spinner=False, max_entries=8)
def _meta_parts(hub_id: str, revision: str):
    """Config and tokenizer of a hub model (or folder): all a weightless model needs. No key here."""
    from transformers import AutoConfig

    from patchcore.models import _friendly_load_error, _from_pretrained_cached_first
    from patchcore.backends.nnsight import _load_tokenizer

    kwargs = {"revision": revision} if revision else {}
    try:
        if looks_like_path(hub_id):
            config = AutoConfig.from_pretrained(os.path.expanduser(hub_id), **kwargs)
        else:
            config = _from_pretrained_cached_first(AutoConfig, hub_id, **kwargs)
        tokenizer = _load_tokenizer(hub_id, revision or None)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _friendly_load_error(hub_id, exc) from exc
    return config, tokenizer


def connect(hub_id: str, revision: str, typed_key: str) -> Remote:
    """Check the inputs, the key and NDIF, then build this session's weightless model."""
    mode = ndif_mode()
    hub_id, revision = hub_id.strip(), revision.strip()
    if not hub_id:
        raise PatchError("Enter the hub id of a model NDIF serves, e.g. " + SUGGESTED + ".", field="model")
    if not _REVISION.match(revision):
        raise PatchError("The revision is not a branch, tag or commit name.", field="revision")
    key = None
    if mode is True:
        if looks_like_path(hub_id) or not _HUB_ID.match(hub_id):
            raise PatchError(f"NDIF runs models from the Hugging Face hub: enter a hub id like "
                             f"{SUGGESTED}, not a file path or a bare name.", field="model")
        key = resolve_api_key(typed_key)
        if not key:
            raise no_key_error()
        try:
            served = served_models()
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise friendly_remote_error(exc, hub_id, key) from exc
        if not any(k.lower() == hub_id.lower() for k in served):
            raise model_not_served_error(hub_id, list(served))
    else:  # the dry run executes here: a local folder is read like any local model
        check_model_access(hub_id, st_config.get_option("server.address"))
    config, tokenizer = _meta_parts(hub_id, revision)
    try:
        loaded, backend = make_remote_backend(
            hub_id, key, remote=mode, revision=revision or None, config=config,
            tokenizer=copy.deepcopy(tokenizer))  # nnsight sets padding on the tokenizer it gets
    except PatchError:
        raise
    except Exception as exc:  # noqa: BLE001 - one sentence, without the key
        raise friendly_remote_error(exc, hub_id, key) from exc
    return Remote(hub_id, revision, mode, loaded, backend.nn, key)


def where_choice() -> str:
    """The Model page's first choice: 'local' or 'ndif' (starts at what the session runs)."""
    ss = st.session_state
    if "w_run_where" not in ss:
        ss["w_run_where"] = "ndif" if active() else "local"
    return st.radio("Where the model runs", ["local", "ndif"], key="w_run_where", horizontal=True,
                    format_func={"local": "On this machine", "ndif": "Run on NDIF (remote)"}.get,
                    help="NDIF (ndif.us) runs large models such as Llama 3.1 8B–405B on its servers; "
                         "your machine downloads only the config and tokenizer.")


def connect_panel() -> None:
    """The Model page's NDIF part: hub id, API key, Connect; the connected model's facts."""
    ss = st.session_state
    mode = ndif_mode()
    for k, v in (("_ndif_model", SUGGESTED if mode is True else ""), ("_ndif_revision", ""),
                 ("_ndif_key", "")):
        ss.setdefault(k, v)
    st.caption("NDIF (the National Deep Inference Fabric, ndif.us) runs models too large for this "
               "machine. Patching and Prompts runs then go to NDIF through nnsight: every forward pass "
               "runs there; here only the config and tokenizer are downloaded (a few MB).")
    if mode == "local":
        st.info("Simulated NDIF (`PATCHCORE_NDIF_MODE=local`): every request is serialised and run on "
                "this machine as NDIF would run it. No key or network needed; the hub id may be a "
                "local model folder.", icon=":material/science:")
    st.text_input("Hub id" + (" or model folder" if mode == "local" else ""), max_chars=200,
                  placeholder=f"e.g. {SUGGESTED}", **ui.bind("w_ndif_model", "_ndif_model"),
                  help=f"A model NDIF serves right now, exactly as listed at {NDIF_STATUS_URL}. "
                       "Llama repositories are gated on the hub: accept the licence and log in "
                       "(HF_TOKEN) so the config and tokenizer can be read.")
    st.text_input("Revision (optional)", max_chars=100, **ui.bind("w_ndif_revision", "_ndif_revision"),
                  help="A branch, tag or commit of the hub repository; empty means main.")
    env_key = bool(os.environ.get("NDIF_API_KEY", "").strip())
    st.text_input("NDIF API key", type="password", max_chars=500, **ui.bind("w_ndif_key", "_ndif_key"),
                  placeholder="using NDIF_API_KEY from the environment" if env_key else "paste your key",
                  disabled=mode == "local",
                  help="Kept only in this browser session: never put in the link, the run history, "
                       "exports, logs or messages.")
    st.caption(f"Get a free API key at [{NDIF_KEY_URL}]({NDIF_KEY_URL}). "
               + ("Not needed in the simulated mode." if mode == "local" else
                  "Or set NDIF_API_KEY before starting the dashboard.")
               + " The key is kept only for this browser session.")
    c = st.columns([1, 1, 5])
    if c[0].button("Connect", type="primary", icon=":material/cloud:", key="ndif_connect"):
        try:
            with st.spinner("Connecting to NDIF…" if mode is True else "Preparing the simulated NDIF…",
                            show_time=True):
                remote = connect(ss["w_ndif_model"], ss["w_ndif_revision"], ss["w_ndif_key"])
        except Exception as exc:  # noqa: BLE001 - a message that says what to do, never the key
            ui.show_error(_safe_error(exc, ss.get("w_ndif_key")))
        else:
            ss[STATE] = remote
            ss["cell"] = ""  # a selected cell belongs to the previous model's results
            ui.sync_url()
            st.rerun()  # redraw the sidebar with the NDIF model
    remote = active()
    if remote is not None and c[1].button("Disconnect", icon=":material/cloud_off:", key="ndif_disconnect"):
        disconnect()
        st.rerun()

    st.subheader("Connected model")
    if remote is None:
        st.info("Not connected: this session runs its local model. Press Connect to run on NDIF.",
                icon=":material/info:")
        return
    st.success(f"Runs on the Patching and Prompts pages go to {'the simulated ' if remote.simulated else ''}"
               f"NDIF: {ui.md_escape(remote.hub_id)}.", icon=":material/cloud_done:")
    facts = remote.facts()
    st.dataframe(pd.DataFrame({"": list(facts), "value": [f"{v:,}" if isinstance(v, int) else str(v)
                                                          for v in facts.values()]}),
                 hide_index=True, width="content")


def _safe_error(exc: BaseException, typed_key: str | None) -> PatchError:
    """The error to show, never containing the key: a PatchError as it is (the remote ones are
    scrubbed already), anything else as one line (not show_error's bug report with its text)."""
    key = resolve_api_key(typed_key)
    if isinstance(exc, PatchError):
        return PatchError(scrub(exc.message, key), exc.field) if key and key in exc.message else exc
    first = (scrub(str(exc), key).strip().splitlines() or [type(exc).__name__])[0][:300]
    return PatchError(f"Connecting failed unexpectedly ({type(exc).__name__}: {first}). "
                      "Check the hub id and try again.")


# ---------------------------------------------------------------- runs

def plan_metrics(remote: Remote, prepared, sweep: str) -> None:
    """The Patching page's cost line for an NDIF run."""
    p = plan(remote.model, prepared.n_tokens, sweep, prepared.first_diff)
    m = ui.cost_columns(p)
    m[2].metric("NDIF requests", "2", help="The baseline, then every patch in one nnsight session.")
    m[3].metric("Runs on", "simulated NDIF" if remote.simulated else "NDIF",
                help="Time is NDIF's queue plus one forward pass per 128 patches on the server; "
                     "the job's state (QUEUED, RUNNING…) shows while it runs.")


def _status_tracker():
    """on_status for a backend, feeding a Job's progress text (the job exists only after start)."""
    seen = SimpleNamespace(job=None, text="", states={})  # states: per request, its states in order

    def on_status(state: str, where: str) -> None:
        seen.text = f"{state} ({where})" if where else state
        states = seen.states.setdefault(where, [])
        if not states or states[-1] != state:
            states.append(state)
        if seen.job is not None:
            seen.job.status = seen.text

    def attach(job) -> None:
        seen.job = job
        job.status = job.status or seen.text
    return seen, on_status, attach


def start_sweep(slot: str, remote: Remote, pair, sweep: str, direction: str, metric: str,
                save: bool = False) -> ui.Job:
    """One sweep through NDIF in the background (progress, NDIF status and Cancel in job_panel)."""
    model = remote.model
    prepared = prepare_pair(model.tokenizer, pair)  # the page checked it; PairError says what is wrong
    total = plan(model, prepared.n_tokens, sweep)["patches"]
    seen, on_status, attach = _status_tracker()
    notes = []

    def work(progress, cancel, on_wait):
        backend = remote.backend(on_status=on_status, cancel=cancel)
        result = remote.guard(lambda: run_sweep(
            model, prepared, sweep, direction, metric, progress=progress, cancel=cancel,
            on_wait=on_wait, backend=backend))
        result.device = remote.result_device()
        notes.append(f"{'Simulated NDIF' if remote.simulated else 'NDIF'}, {backend.requests} requests: " +
                     "; ".join(f"{where} {' → '.join(states)}" for where, states in seen.states.items()) + ".")
        return result

    def done(result, job):
        job.notes.extend(notes)
        if save:
            job.notes.append(ui.jobs.save_result(result, {**remote.settings(), "pair": pair.to_dict(),
                                                   "sweep": sweep, "direction": direction,
                                                   "metric": metric})[1])

    job = ui.start_job(slot, total, work, on_done=done)
    attach(job)
    return job


BASELINE_SLOT = "ndif_baseline"


def baseline_panel(remote: Remote, prepared, metric: str):
    """The Prompts page's baseline on NDIF: run on request (each is an NDIF job), memoised per
    session. Returns the Baseline, or None after drawing the button / progress."""
    ss = st.session_state
    want = (remote.ident, prepared.pair, metric)
    memo = ss.setdefault("_ndif_baselines", {})
    done = ui.result_for(BASELINE_SLOT)  # a finished run's outcome, taken once
    if done is not None:
        key, base = done
        if len(memo) > 20:
            memo.clear()
        memo[key] = base
        ui.clear(BASELINE_SLOT)
    if want in memo:
        return memo[want]
    if st.button("Run the baseline on NDIF", type="primary", icon=":material/cloud_upload:",
                 key="ndif_run_baseline", disabled=ui.job_running(BASELINE_SLOT),
                 help="Runs both prompts once (one NDIF job) to show the unpatched answers."):
        seen, on_status, attach = _status_tracker()

        def work(progress, cancel, on_wait):
            backend = remote.backend(on_status=on_status, cancel=cancel)
            base = remote.guard(lambda: run_baseline(remote.model, prepared, metric, cancel=cancel,
                                                       on_wait=on_wait, backend=backend))
            base.cache = None  # the activations are only needed by a sweep
            return want, base

        attach(ui.start_job(BASELINE_SLOT, 1, work))
    ui.job_panel(BASELINE_SLOT)
    if not ui.job_running(BASELINE_SLOT):
        st.caption("On NDIF every run is a job in NDIF's queue, so the baseline runs when you ask.")
    return None
