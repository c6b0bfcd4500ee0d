"""The session state and the address bar: the experiment's settings (defaults, overridden by a
link's valid query parameters), kept in step with widgets and written back into the URL.

Each page's URL holds only the settings that page uses (PAGE_KEYS): a link to Datasets does
not carry the Patching page's sweep. The URL is written once per script run (one browser
history entry per change), and Back/Forward put the settings of that entry back.
"""
from __future__ import annotations

import re

import streamlit as st
from streamlit import config as st_config

from streamlit.runtime.scriptrunner import get_script_run_ctx

from patchcore import DEFAULT_PAIR, DIRECTIONS, METRICS, SWEEPS, PatchError, PromptPair
from patchcore.access import link_model_problem
from patchcore.ioi import CORRUPTIONS, MAX_IOI_PAIRS, TEMPLATE_SETS
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
    # the Datasets page: generated IOI pairs and the sweep over them
    "pairs": 20, "seed": 0, "corruption": "swap", "templates": "mixed",
    "ds_sweep": "layer_pos", "directions": "both", "ds_metric": "logit_diff",
}


DIRECTION_SETS = ("both", "denoise", "noise")


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


MODEL_KEYS = ("model", "device", "dtype", "revision")
PAIR_KEYS = ("clean", "corrupted", "answer", "wrong")
EXPERIMENT_KEYS = MODEL_KEYS + PAIR_KEYS + ("sweep", "direction", "metric", "cell", "view")
DATASET_KEYS = ("pairs", "seed", "corruption", "templates", "ds_sweep", "directions", "ds_metric")
# what each page's URL holds (by the title its ui.page() call gives); pages not listed (new ones)
# hold the whole single-pair experiment
PAGE_KEYS = {
    "Home": (), "Guide": (), "History": (),
    "Model": MODEL_KEYS,
    "Prompts": MODEL_KEYS + PAIR_KEYS + ("metric",),
    "Patching": EXPERIMENT_KEYS + ("ablation", "sites"),
    "Datasets": MODEL_KEYS + DATASET_KEYS + ("ablation", "sites"),
    "Paths": MODEL_KEYS + PAIR_KEYS + ("direction", "metric", "ablation", "senders", "receivers"),
    "Circuit": MODEL_KEYS + PAIR_KEYS + ("direction", "metric"),
}


def page_keys(title: str) -> tuple[str, ...]:
    return PAGE_KEYS.get(title, EXPERIMENT_KEYS)


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
    if key == "revision":
        return (raw, None) if _REVISION.match(raw) else (d, "not a branch, tag or commit name")
    if key in ("clean", "corrupted"):
        return (raw, None) if len(raw) <= MAX_PROMPT_CHARS else (d, f"longer than {MAX_PROMPT_CHARS} characters")
    if key in ("answer", "wrong"):
        return (raw, None) if len(raw) <= MAX_TOKEN_CHARS else (d, f"longer than {MAX_TOKEN_CHARS} characters")
    if key == "cell":
        return (raw, None) if _CELL.match(raw) else (d, "expected numbers like '12,5'")
    if key == "view":
        back = {v: k for k, v in URL_NAMES["view"].items()}
        return (back[raw], None) if raw in back else (d, "choose 'normalized' or 'raw'")
    if key in ("pairs", "seed"):
        top = MAX_IOI_PAIRS if key == "pairs" else 2**31 - 1
        ok = raw.isdigit() and len(raw) <= 10 and (key == "seed" or int(raw) >= 1) and int(raw) <= top
        return (int(raw), None) if ok else (d, f"a whole number from {1 if key == 'pairs' else 0} to {top}")
    choices = {"device": DEVICES, "dtype": list(DTYPES), "sweep": list(SWEEPS), "direction": list(DIRECTIONS),
               "metric": list(METRICS), "corruption": list(CORRUPTIONS), "templates": list(TEMPLATE_SETS),
               "ds_sweep": list(SWEEPS), "directions": list(DIRECTION_SETS), "ds_metric": list(METRICS)}.get(key)
    if choices is not None:
        return (raw, None) if raw in choices else (d, f"choose one of {', '.join(choices)}")
    return d, "unknown setting"  # pragma: no cover


def _from_url(keys, absent_is_default: bool) -> list[str]:
    """Set `keys` from the URL's valid values; returns notices for the invalid ones."""
    ss, notices = st.session_state, []
    for key in keys:
        if key not in st.query_params:
            if absent_is_default:
                ss[key] = DEFAULTS[key]
            continue
        raw = st.query_params.get(key, "")
        value, reason = _valid(key, raw)
        ss[key] = value
        if key == "model" and not reason:
            ss["_model_from_link"] = True  # checked again when it loads (get_model)
        if reason:
            shown = raw if len(raw) <= 60 else raw[:57] + "..."
            notices.append(f"'{key}' = {shown!r} was ignored ({reason}); using the default.")
    return notices


def _init_state(title: str = "") -> None:
    """Once per browser session: defaults, overridden by valid query parameters. On later runs,
    a Back/Forward press puts back the settings of the history entry it lands on."""
    ss = st.session_state
    if not ss.get("_init"):
        for key, default in DEFAULTS.items():
            ss.setdefault(key, default)
        ss["_notices"] = _from_url(DEFAULTS, absent_is_default=False)
        ss["_init"] = True
        return
    ctx = get_script_run_ctx()
    if ctx is not None and getattr(ctx, "is_history_navigation", False):
        before = {k: ss.get(k) for k in DEFAULTS}
        ss["_notices"] = _from_url(page_keys(title), absent_is_default=True)
        for key in DEFAULTS:  # widgets start again from the restored settings
            if ss.get(key) != before[key]:
                for widget in [w for w in list(ss) if str(w).startswith("w_") and ss.get("_bound_" + str(w)) == key]:
                    del ss[widget]


def url_params(title: str) -> dict[str, str]:
    """The settings a page's URL holds: its keys' non-default values, as URL text."""
    out = {}
    for key in page_keys(title):
        value = st.session_state.get(key, DEFAULTS[key])
        if value != DEFAULTS[key]:
            out[key] = URL_NAMES.get(key, {}).get(value, str(value))
    return out


def sync_url(title: str = "") -> None:
    """Write the page's settings into the URL in one step (one history entry): non-default values
    of its keys; other settings leave the URL; parameters that are not settings are left alone."""
    qp = st.query_params
    current = qp.to_dict()
    wanted = {k: v for k, v in current.items() if k not in DEFAULTS} | url_params(title or st.session_state.get("_page", ""))
    if wanted != current:
        qp.from_dict(wanted)


def current_pair() -> PromptPair:
    s = st.session_state
    return PromptPair(s["clean"], s["corrupted"], s["answer"], s["wrong"])


def bind(widget_key: str, state_key: str, clears: tuple[str, ...] = (), then=None) -> dict:
    """Widget kwargs keeping `state_key` (which survives page changes) in step with the widget.

    `clears`: state keys reset to their defaults when the user changes this widget; `then`: a
    function called after that."""
    if widget_key not in st.session_state:
        st.session_state[widget_key] = st.session_state[state_key]
    st.session_state["_bound_" + widget_key] = state_key  # Back/Forward resets this widget

    def copy():
        st.session_state[state_key] = st.session_state[widget_key]
        for k in clears:
            st.session_state[k] = DEFAULTS[k]
        if then is not None:
            then()
    return {"key": widget_key, "on_change": copy}


def selected_cell(cell_key: str = "cell") -> tuple[int, ...] | None:
    raw = st.session_state.get(cell_key, "")
    return tuple(int(x) for x in raw.split(",")) if raw else None
