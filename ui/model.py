"""The loaded model: one per settings, shared by every session (st.cache_resource, with its lock),
the sidebar's model box, and the memoised baseline of a pair."""
from __future__ import annotations

import streamlit as st

from patchcore import ModelSpec, load_model, run_baseline
from patchcore.access import check_link_model, check_load
from patchcore.models import EMBEDDED, EMBEDDED_LABEL
from ui.state import server_address, url_params
from ui.text import md_escape, show_error


@st.cache_resource(show_spinner=False, max_entries=3)
def _cached_model(name: str, device: str, dtype: str, revision: str, trust_remote_code: bool):
    """One loaded model (with its lock) per settings, shared by every session and thread.

    load_model applies this server's rules (patchcore.access) itself, whatever the page sent."""
    return load_model(ModelSpec(name=name, device=device, dtype=dtype,
                                revision=revision or None, trust_remote_code=trust_remote_code),
                      served_on=server_address())


def chosen_spec() -> tuple:
    s = st.session_state
    return (s["model"], s["device"], s["dtype"], s["revision"], bool(s.get("trust_remote_code", False)))


def model_label(name: str) -> str:
    return EMBEDDED_LABEL if name == EMBEDDED else name


def is_loaded(spec: tuple | None = None) -> bool:
    return st.session_state.get("_loaded_spec") == (spec or chosen_spec())


def get_model(spec: tuple | None = None, where=None, from_link: bool | None = None):
    """The loaded model for `spec` (default: the session's choice); None after showing why not.

    `from_link`: the model name came from a link (default: the session's model, when the link
    set it), so it must still be a hub id that is not a path on this machine."""
    spec = spec or chosen_spec()
    where = where or st
    first = "" if is_loaded(spec) else " (the first load can take a minute)"
    if from_link is None:
        from_link = bool(st.session_state.get("_model_from_link")) and spec[0] == st.session_state["model"]
    try:
        if from_link:
            check_link_model(spec[0])
        # local paths only for the person at this machine or from the server's allowed folders;
        # remote code likewise (load_model checks again: a crafted session state cannot skip it)
        check_load(spec[0], spec[4], server_address())
        with where.container():
            with st.spinner(f"Loading {md_escape(model_label(spec[0]))}{first}…", show_time=True):
                model = _cached_model(*spec)
    except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback
        show_error(exc, where)
        return None
    if spec == chosen_spec() and not is_loaded(spec):
        st.session_state["_loaded_spec"] = spec
        _model_box()
    return model


def auto_model(where=None):
    """The session's model: loaded at once if it is the embedded one (offline, quick), else only if
    this session already loaded it. Returns None when the user must load it on the Model page."""
    if is_loaded() or st.session_state["model"] == EMBEDDED:
        return get_model(where=where)
    return None


def sidebar() -> None:
    with st.sidebar:
        st.session_state["_model_box"] = st.empty()  # redrawn by get_model() when a model loads
        _model_box()
        st.page_link("pages/1_Model.py", label="Change model", icon=":material/memory:",
                     query_params=url_params("Model") or None)
        st.divider()
        st.caption("The address bar holds this experiment: copy it to share or reproduce it.")


def _model_box() -> None:
    box = st.session_state.get("_model_box")
    if box is None:
        return
    s = st.session_state
    remote = s.get("_remote")  # an NDIF connection (ui.remote.Remote): Patching and Prompts run there
    with box.container():
        st.markdown("**Model**")
        if remote is not None:
            st.markdown(md_escape(remote.model.label))
            st.caption(remote.caption)
        elif is_loaded():
            facts = _cached_model(*chosen_spec()).facts()
            st.markdown(md_escape(facts["model"]))
            st.caption(f"device **{facts['device']}** · dtype **{facts['dtype']}** · "
                       f"{facts['layers']} layers · {facts['heads']} heads")
        else:
            st.markdown(md_escape(model_label(s["model"])))
            st.caption(f"not loaded yet · device **{md_escape(s['device'])}** · "
                       f"dtype **{md_escape(s['dtype'])}**")


def baseline(model, prepared, metric: str):
    """Clean and corrupted runs of a pair, memoised per session (the lock is shared with sweeps)."""
    key = (chosen_spec(), prepared.pair, metric)
    memo = st.session_state.setdefault("_baselines", {})
    if key not in memo:
        note = st.empty()
        b = run_baseline(model, prepared, metric,
                         on_wait=lambda: note.info("Waiting for another run on this model…"))
        note.empty()
        b.cache = None
        if len(memo) > 20:
            memo.clear()
        memo[key] = b
    return memo[key]
