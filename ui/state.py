"""The session state and the address bar: the experiment's settings (defaults, overridden by a
link's valid query parameters), kept in step with widgets and written back into the URL."""
from __future__ import annotations

import re

import streamlit as st
from streamlit import config as st_config

from patchcore import DEFAULT_PAIR, DIRECTIONS, METRICS, SWEEPS, PatchError, PromptPair
from patchcore.access import link_model_problem
from patchcore.models import DTYPES, EMBEDDED


DEVICES = ["auto", "cpu", "cuda", "mps"]


VIEWS = {"normalized": "Normalised score", "value": "Raw metric"}


MAX_PROMPT_CHARS = 2000


MAX_TOKEN_CHARS = 100


DEFAULTS = {
    "model": EMBEDDED, "device": "auto", "dtype": "fp32", "revision": "",
    "clean": DEFAULT_PAIR.clean, "corrupted": DEFAULT_PAIR.corrupted,
    "answer": DEFAULT_PAIR.answer, "wrong": DEFAULT_PAIR.wrong,
    "sweep": "layer_pos", "direction": "denoise", "metric": "logit_diff",
    "cell": "", "view": "normalized",
}


URL_NAMES = {"view": {"normalized": "normalized", "value": "raw"}}


# -- the hypothesis check (ui/hypothesis.py), the Paths page (pages/6_Paths.py), the ablation --
# sites: the selected sites, comma-separated; senders/receivers: patchcore.paths notation
HYPOTHESIS_DEFAULTS = {"sites": "", "senders": "head:*", "receivers": "logits", "ablation": "corrupted"}
DEFAULTS.update(HYPOTHESIS_DEFAULTS)
MAX_SITES = 100


def _valid_hypothesis(key: str, raw: str) -> tuple[object, str | None]:
    from patchcore.ablations import ABLATIONS
    from patchcore.path_report import receivers_problem, senders_problem
    from patchcore.sites import parse_sites
    d = DEFAULTS[key]
    if key == "ablation":
        return (raw, None) if raw in ABLATIONS else (d, f"choose one of {', '.join(ABLATIONS)}")
    if key == "senders":
        problem = senders_problem(raw)
        return (d, problem) if problem else (raw.strip(), None)
    if key == "receivers":
        problem = receivers_problem(raw)
        return (d, problem) if problem else (raw.strip(), None)
    if len(raw) > 20 * MAX_SITES:
        return d, f"longer than {20 * MAX_SITES} characters"
    if not raw.strip():
        return d, None
    try:
        sites = parse_sites(raw)
    except PatchError as exc:
        return d, exc.message.split(" Write sites")[0]
    if len(sites) > MAX_SITES:
        return d, f"more than {MAX_SITES} sites"
    return ",".join(str(s) for s in sites), None


_REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")


_CELL = re.compile(r"^\d{1,5}(,\d{1,5}){0,2}$")


def server_address() -> str | None:
    """The address this server listens on (patchcore.access decides what it may load)."""
    return st_config.get_option("server.address")


def _valid(key: str, raw: str) -> tuple[object, str | None]:
    """(value, None) if `raw` is acceptable for `key`, else (default, reason)."""
    d = DEFAULTS[key]
    if "\x00" in raw:
        return d, "contains a NUL character"
    if key in HYPOTHESIS_DEFAULTS:
        return _valid_hypothesis(key, raw)
    if key == "model":  # the embedded model or a hub id; never a path, nor a folder here like 'docs'
        problem = link_model_problem(raw)
        return (d, problem) if problem else (raw, None)
    if key == "device":
        return (raw, None) if raw in DEVICES else (d, f"choose one of {', '.join(DEVICES)}")
    if key == "dtype":
        return (raw, None) if raw in DTYPES else (d, f"choose one of {', '.join(DTYPES)}")
    if key == "revision":
        return (raw, None) if _REVISION.match(raw) else (d, "not a branch, tag or commit name")
    if key in ("clean", "corrupted"):
        return (raw, None) if len(raw) <= MAX_PROMPT_CHARS else (d, f"longer than {MAX_PROMPT_CHARS} characters")
    if key in ("answer", "wrong"):
        return (raw, None) if len(raw) <= MAX_TOKEN_CHARS else (d, f"longer than {MAX_TOKEN_CHARS} characters")
    if key == "sweep":
        return (raw, None) if raw in SWEEPS else (d, f"choose one of {', '.join(SWEEPS)}")
    if key == "direction":
        return (raw, None) if raw in DIRECTIONS else (d, f"choose one of {', '.join(DIRECTIONS)}")
    if key == "metric":
        return (raw, None) if raw in METRICS else (d, f"choose one of {', '.join(METRICS)}")
    if key == "cell":
        return (raw, None) if _CELL.match(raw) else (d, "expected numbers like '12,5'")
    if key == "view":
        back = {v: k for k, v in URL_NAMES["view"].items()}
        return (back[raw], None) if raw in back else (d, "choose 'normalized' or 'raw'")
    return d, "unknown setting"  # pragma: no cover


def _init_state() -> None:
    """Once per browser session: defaults, overridden by valid query parameters."""
    ss = st.session_state
    if ss.get("_init"):
        return
    notices = []
    for key, default in DEFAULTS.items():
        ss.setdefault(key, default)
        if key in st.query_params:
            raw = st.query_params.get(key, "")
            value, reason = _valid(key, raw)
            ss[key] = value
            if key == "model" and not reason:
                ss["_model_from_link"] = True  # checked again when it loads (get_model)
            if reason:
                shown = raw if len(raw) <= 60 else raw[:57] + "..."
                notices.append(f"'{key}' = {shown!r} was ignored ({reason}); using the default.")
    ss["_notices"] = notices
    ss["_init"] = True


def sync_url() -> None:
    """Write the experiment into the URL (non-default values only); other parameters are left alone."""
    qp = st.query_params
    for key, default in DEFAULTS.items():
        value = st.session_state.get(key, default)
        if value != default:
            text = URL_NAMES.get(key, {}).get(value, str(value))
            if qp.get(key) != text:
                qp[key] = text
        elif key in qp:
            del qp[key]


def current_pair() -> PromptPair:
    s = st.session_state
    return PromptPair(s["clean"], s["corrupted"], s["answer"], s["wrong"])


def bind(widget_key: str, state_key: str, clears: tuple[str, ...] = ()) -> dict:
    """Widget kwargs keeping `state_key` (which survives page changes) in step with the widget.

    `clears`: state keys reset to their defaults when the user changes this widget."""
    if widget_key not in st.session_state:
        st.session_state[widget_key] = st.session_state[state_key]

    def copy():
        st.session_state[state_key] = st.session_state[widget_key]
        for k in clears:
            st.session_state[k] = DEFAULTS[k]
    return {"key": widget_key, "on_change": copy}


def selected_cell(cell_key: str = "cell") -> tuple[int, ...] | None:
    raw = st.session_state.get(cell_key, "")
    return tuple(int(x) for x in raw.split(",")) if raw else None
