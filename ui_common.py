"""Shared Streamlit code for dashboard.py and pages/*.py: state, URL, sidebar, model, runs, results.

Why a module at the repository root: Streamlit 1.67's `pages/` router makes a
page of every `pages/*.py` except `__init__.py` and names starting with "."
(a "_helpers.py" there would show up as a page), and `streamlit run` puts the
entry point's folder on sys.path, so every page can `import ui_common`.
All patching logic stays in patchcore; this file only calls it and draws.

Every page starts with `page("Title")`: a deep link runs only that page, so
each page sets up the session state, the URL and the sidebar itself.
"""
from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import streamlit as st
from streamlit import config as st_config
from streamlit.logger import get_logger

from patchcore import (DEFAULT_PAIR, DIRECTIONS, METRICS, SWEEPS, Cancelled, ModelSpec, PatchError,
                       PromptPair, load_model, plan, prepare_pair, run_baseline, run_sweep)
from patchcore.access import check_link_model, check_load, link_model_problem
from patchcore.charts import chart_png, chart_svg, heatmap
from patchcore.history import save_run
from patchcore.models import DTYPES, EMBEDDED, EMBEDDED_LABEL
from patchcore.summary import cell_name, meaning, summarize

from patchcore.attribution import run_atp
from patchcore.estimate import estimate_seconds

DEVICES = ["auto", "cpu", "cuda", "mps"]
VIEWS = {"normalized": "Normalised score", "value": "Raw metric"}
METRIC_NAMES = {"logit_diff": "logit difference", "prob": "probability of the answer",
                "logprob": "log-probability of the answer"}
MAX_PROMPT_CHARS = 2000
MAX_TOKEN_CHARS = 100
UI_BATCHES = 8  # progress steps (and chances to cancel) per run; smaller batches cost speed on CPU

# The experiment: session-state key -> default. These are also the URL's query parameters.
DEFAULTS = {
    "model": EMBEDDED, "device": "auto", "dtype": "fp32", "revision": "",
    "clean": DEFAULT_PAIR.clean, "corrupted": DEFAULT_PAIR.corrupted,
    "answer": DEFAULT_PAIR.answer, "wrong": DEFAULT_PAIR.wrong,
    "sweep": "layer_pos", "direction": "denoise", "metric": "logit_diff",
    "cell": "", "view": "normalized",
}
URL_NAMES = {"view": {"normalized": "normalized", "value": "raw"}}
_REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")
_CELL = re.compile(r"^\d{1,5}(,\d{1,5}){0,2}$")


# ---------------------------------------------------------------- text safety

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=^\"'])")


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def metric_md(metric: str) -> str:
    """metric_name for Markdown: a stored run's unknown metric name is escaped."""
    return METRIC_NAMES[metric] if metric in METRIC_NAMES else md_escape(metric)


def md_escape(text: str) -> str:
    """Text that Streamlit's Markdown shows literally (no links, HTML, colours, maths, emoji)."""
    text = _MD_SPECIAL.sub(r"\\\1", str(text))
    return text.replace("\n", "  \n")


def show_token(tok: str) -> str:
    """A token as plain text with its spaces and newlines visible."""
    return tok.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


# ---------------------------------------------------------------- errors

log = get_logger("patchcore.dashboard")  # the server's log (the terminal running streamlit)


def show_error(exc: BaseException, where=None) -> None:
    """A PatchError's message, or for a bug a generic line with an error id. The traceback (with
    the server's paths) goes to the server's log under that id, never to the browser."""
    where = where or st
    if isinstance(exc, PatchError):
        first, _, rest = exc.message.partition("\n")
        where.error(md_escape(first), icon=":material/error:")
        if rest.strip():
            where.code(rest, language=None)
        return
    error_id = uuid.uuid4().hex[:10]
    log.error("dashboard error %s: %s", error_id, type(exc).__name__, exc_info=exc)
    where.error("Something went wrong inside the dashboard (a bug, not your input). Your settings "
                "are kept; try again. If it happens again, give the person who runs this server the "
                f"error id **{error_id}**: the details are in the server's log under that id.",
                icon=":material/bug_report:")


def server_address() -> str | None:
    """The address this server listens on (patchcore.access decides what it may load)."""
    return st_config.get_option("server.address")


# ---------------------------------------------------------------- state and URL

def _valid(key: str, raw: str) -> tuple[object, str | None]:
    """(value, None) if `raw` is acceptable for `key`, else (default, reason)."""
    d = DEFAULTS[key]
    if "\x00" in raw:
        return d, "contains a NUL character"
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


def page(title: str, icon: str = ":material/insights:") -> None:
    """Start a page: config, state from the URL, notices, URL sync, sidebar."""
    st.set_page_config(page_title=f"{title} · patchcore", page_icon=icon, layout="wide")
    _init_state()
    notices = st.session_state.pop("_notices", None)
    if notices:
        st.warning("Some settings in the link were not valid:\n\n" +
                   "\n".join(f"- {md_escape(n)}" for n in notices), icon=":material/link_off:")
    sync_url()
    sidebar()


# ---------------------------------------------------------------- model

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
        st.page_link("pages/1_Model.py", label="Change model", icon=":material/memory:")
        st.divider()
        st.caption("The address bar holds this experiment: copy it to share or reproduce it.")


def _model_box() -> None:
    box = st.session_state.get("_model_box")
    if box is None:
        return
    s = st.session_state
    remote = s.get("_remote")  # an NDIF connection (ui_remote.Remote): Patching and Prompts run there
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


# ---------------------------------------------------------------- runs in the background

@dataclass
class Job:
    """One sweep running on a worker thread; the page polls it and the Cancel button sets `cancel`."""
    total: int
    done: int = 0
    waiting: bool = False
    started: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    thread: threading.Thread | None = None
    notes: list = field(default_factory=list)  # short lines shown with the outcome
    unit: str = "patches"                       # what `done` and `total` count
    status: str = ""                            # a remote job's state, e.g. "QUEUED (baseline)"

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def ui_batch_size(model, n_tokens: int, sweep: str) -> int:
    """Smaller batches than the engine's default, so progress moves and Cancel answers quickly."""
    p = plan(model, n_tokens, sweep)
    return max(1, min(p["batch_size"], max(8, math.ceil(p["patches"] / UI_BATCHES))))


def start_job(slot: str, total: int, work) -> Job:
    """Run work(progress=, cancel=, on_wait=) on a worker thread; what it returns becomes the
    result of `slot`, what it raises its error. job_panel(slot) shows progress, Cancel, outcome."""
    job = Job(total=max(1, total))

    def progress(done, tot):
        job.done, job.total, job.waiting = done, tot, False

    def run():
        try:
            job.result = work(progress=progress, cancel=job.cancel.is_set,
                              on_wait=lambda: setattr(job, "waiting", True))
        except BaseException as exc:  # noqa: BLE001 - handed to the page
            job.error = exc

    job.thread = threading.Thread(target=run, name=f"patchcore-{slot}", daemon=True)
    job.thread.cancel_event = job.cancel  # whoever holds the thread can stop it (the tests do)
    for key in (f"_result_{slot}", f"_error_{slot}", f"_notes_{slot}"):
        st.session_state.pop(key, None)
    st.session_state[f"_job_{slot}"] = job
    job.thread.start()
    return job


def start_sweep(slot: str, model, pair: PromptPair, sweep: str, direction: str, metric: str,
                save: bool = False) -> Job:
    """One patchcore.run_sweep in the background; with `save`, the result goes into the run history."""
    prepared = prepare_pair(model.tokenizer, pair)  # pages check first; PairError says what is wrong
    batch_size = ui_batch_size(model, prepared.n_tokens, sweep)
    notes = []

    def work(**callbacks):
        result = run_sweep(model, prepared, sweep, direction, metric, batch_size=batch_size, **callbacks)
        if save:
            try:
                spec = model.spec
                run_id = save_run(result, source="dashboard", settings={
                    "model": spec.name, "device": spec.device, "dtype": spec.dtype,
                    "revision": spec.revision, "pair": pair.to_dict(), "sweep": sweep,
                    "direction": direction, "metric": metric})
                if run_id is not None:
                    notes.append(f"Saved to the run history as run {run_id}.")
            except PatchError as exc:
                notes.append(f"Not saved to the run history: {exc.message}")
        return result

    job = start_job(slot, plan(model, prepared.n_tokens, sweep)["patches"], work)
    job.notes = notes
    return job


def job_running(slot: str) -> bool:
    job = st.session_state.get(f"_job_{slot}")
    return job is not None and job.running


def _collect(slot: str) -> None:
    job = st.session_state.get(f"_job_{slot}")
    if job is None or job.running:
        return
    del st.session_state[f"_job_{slot}"]
    st.session_state[f"_notes_{slot}"] = list(job.notes)
    if job.error is not None:
        st.session_state[f"_error_{slot}"] = job.error
    else:
        st.session_state[f"_result_{slot}"] = job.result


def _progress_text(job: Job) -> str:
    elapsed = f"{time.time() - job.started:.0f} s"
    if job.waiting:
        return "Waiting for another run on this model to finish…"
    if job.cancel.is_set():
        return f"Cancelling… ({job.done} of {job.total} {job.unit} done)"
    if job.status:
        return f"NDIF: {job.status} · {job.done} of {job.total} {job.unit} ({elapsed})"
    if job.total > 1:
        return f"Patching: {job.done} of {job.total} {job.unit} ({elapsed})"
    return f"Working… ({elapsed})"


def job_panel(slot: str) -> None:
    """Progress and Cancel while a run is going; the finished result or error afterwards.

    In the browser this waits in the script, updating the bar every half second: a click on
    Cancel (or any widget) reruns the page, whose callback sets the job's cancel flag first.
    (A polling st.fragment was tried: each fragment rerun cost the server so much CPU that
    the sweep itself ran several times slower on a 2-core machine.) AppTest runs are
    synchronous, so there the panel draws once and returns; tests wait for the job.
    """
    _collect(slot)
    job = st.session_state.get(f"_job_{slot}")
    if job is not None:
        bar = st.progress(min(1.0, job.done / max(1, job.total)), text=_progress_text(job))
        st.button("Cancel", key=f"cancel_{slot}", icon=":material/stop_circle:",
                  on_click=job.cancel.set, disabled=job.cancel.is_set())
        if st_config.get_option("global.appTest"):
            return
        while job.running:
            time.sleep(0.5)
            bar.progress(min(1.0, job.done / max(1, job.total)), text=_progress_text(job))
        st.rerun()  # show the outcome
    for note in st.session_state.get(f"_notes_{slot}", []):
        st.caption(md_escape(note))
    err = st.session_state.get(f"_error_{slot}")
    if isinstance(err, Cancelled):
        st.info("The run was cancelled. Nothing was kept; press the run button to start again.",
                icon=":material/cancel:")
    elif err is not None:
        show_error(err)


def result_for(slot: str):
    return st.session_state.get(f"_result_{slot}")


# ---------------------------------------------------------------- results

def _cell_from_event(result, chart_key: str, cell_key: str) -> None:
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("cell") or []
    try:
        st.session_state[cell_key] = ",".join(str(int(points[0][a])) for a in result.axes)
    except (IndexError, KeyError, TypeError, ValueError):
        st.session_state[cell_key] = ""


def _heatmap(result, view: str, head, position):
    chart = heatmap(result, value=view, head=head, position=position)
    chart.to_dict()  # full validation of what is actually drawn
    return chart


def cell_detail(result, idx: tuple[int, ...]) -> None:
    """One cell: where it is, its raw and normalised value, and what that means in words."""
    shape = result.values.shape
    if len(idx) != len(shape) or any(i >= n for i, n in zip(idx, shape)):
        st.info(f"The selected cell ({', '.join(map(str, idx))}) is not part of this result. "
                "Click a cell in the heatmap to see its details.")
        return
    raw, score = float(result.values[idx]), float(result.normalized[idx])
    items = [("layer", str(idx[result.axes.index("layer")]))]
    if "position" in result.axes:
        pos = idx[result.axes.index("position")]
        # a metric's value is Markdown: a token (an imported run's, too) is escaped to show as text
        items += [("position", str(pos)), ("token", md_escape(show_token(result.tokens[pos])))]
    if "head" in result.axes:
        items.append(("head", str(idx[result.axes.index("head")])))
    items += [(f"raw {metric_md(result.metric)}", f"{raw:.4f}"),
              ("normalised score", "—" if not math.isfinite(score) else f"{score:.3f}")]
    with st.container(border=True):
        st.markdown("**Selected cell: " + md_escape(cell_name(result, idx)) + "**")
        for col, (label, value) in zip(st.columns(len(items)), items):
            col.metric(label, value)
        st.text(meaning(result, score))
        st.caption(f"Unpatched: clean {result.clean_metric:.4f}, corrupted {result.corrupted_metric:.4f}. "
                   "Double-click the heatmap to clear the selection.")


def show_result(result, slot: str, cell_key: str = "cell") -> None:
    """Warnings, heatmap with cell detail, plain-language summary and downloads.

    `cell_key` holds the selected cell as "layer,position[,head]" ("cell" is the one in the URL)."""
    if result.method == "atp":
        st.info("Fast preview: these values are estimates by attribution patching (a first-order "
                "approximation from one backward pass), not exact patching. Press Run for exact values.",
                icon=":material/bolt:")
    if result.sweep == "layer":
        st.info("Patching the whole residual stream at one layer restores everything after it, so "
                "values near 1 at every layer are expected here and say little. Use "
                "“Residual stream, layer × position” to see where the information sits.",
                icon=":material/info:")
    for w in result.warnings:
        st.warning(md_escape(w), icon=":material/warning:")

    controls = st.columns([2, 3])
    view = controls[0].segmented_control(
        "Show", list(VIEWS), format_func=VIEWS.get, **bind(f"w_view_{slot}", "view"),
        help="Normalised: 1 = clean behaviour, 0 = corrupted behaviour. "
             f"Raw: the {metric_md(result.metric)} itself after each patch.") or "normalized"
    head = position = None
    if len(result.axes) == 3:
        with controls[1]:
            by = st.radio("Slice the heads by", ["head", "position"], horizontal=True,
                          key=f"w_slice_{slot}",
                          help="A layer × position × head result has three axes; the heatmap "
                               "shows one head (layer × position) or one position (layer × head).")
            if by == "head":
                head = st.selectbox("Head", range(result.n_heads), key=f"w_head_{slot}")
            else:
                position = st.selectbox(
                    "Position", range(len(result.tokens)), key=f"w_pos_{slot}",
                    format_func=lambda p: f"{p}: {show_token(result.tokens[p])}")
    try:
        chart = _heatmap(result, view, head, position)
    except Exception as exc:  # noqa: BLE001 - the rest of the result stays readable
        show_error(exc)
        return
    chart_key = f"chart_{slot}"
    st.altair_chart(chart, on_select=lambda: _cell_from_event(result, chart_key, cell_key),
                    selection_mode="cell", key=chart_key)
    st.caption("Red: towards the clean behaviour; blue: away from it. Hover a cell for its numbers; "
               "click it for its meaning.")
    idx = selected_cell(cell_key)
    if idx is not None:
        cell_detail(result, idx)

    st.subheader("What this shows")
    for sentence in summarize(result):
        st.text("• " + sentence)
    # a stored or imported run's strings are shown as text, never as Markdown (links, images)
    st.caption(f"{result.n_patches} patches · {result.forward_rows} forward rows · "
               f"{result.seconds:.1f} s on {md_escape(result.device)} ({md_escape(result.dtype)}) · "
               f"{md_escape(result.model)}")

    stem = f"patchcore_{result.sweep}_{result.direction}_{result.metric}"
    cols = st.columns(4)
    cols[0].download_button("CSV", result.to_frame().to_csv(index=False), f"{stem}.csv",
                            "text/csv", key=f"dl_csv_{slot}", icon=":material/download:")
    cols[1].download_button("JSON", json.dumps(result.to_json(), indent=1), f"{stem}.json",
                            "application/json", key=f"dl_json_{slot}", icon=":material/download:")
    cols[2].download_button("PNG", lambda: chart_png(chart), f"{stem}.png", "image/png",
                            key=f"dl_png_{slot}", icon=":material/image:")
    cols[3].download_button("SVG", lambda: chart_svg(chart), f"{stem}.svg", "image/svg+xml",
                            key=f"dl_svg_{slot}", icon=":material/image:")


def plan_line(model, n_tokens: int, sweep: str, first_diff: int = 0) -> dict:
    """Cost before a run, with the estimated time."""
    p = plan(model, n_tokens, sweep, first_diff)
    bs = ui_batch_size(model, n_tokens, sweep)
    p["ui_batches"] = math.ceil((p["forward_rows"] - 2) / bs)
    try:
        p["seconds"] = float(estimate_seconds(model, n_tokens, sweep, batch_size=bs,
                                              first_diff=first_diff))
    except Exception:  # noqa: BLE001 - an estimate is optional: "—" rather than no page
        p["seconds"] = None
    return p


def cost_columns(p: dict) -> list:
    """Four metric columns; the first two say patches and forward rows (from engine.plan)."""
    m = st.columns(4)
    m[0].metric("Patches", f"{p['patches']:,}", help="One patch per cell of the heatmap.")
    m[1].metric("Forward rows", f"{p['forward_rows']:,}",
                help="Patched rows plus the clean and corrupted baseline runs. Patches before the "
                     "first word where the prompts differ copy what is already there, so they "
                     f"need no forward pass ({p['skipped']:,} here).")
    return m


def start_preview(slot: str, model, pair: PromptPair, sweep: str, direction: str, metric: str) -> Job:
    """Attribution patching (patchcore.attribution): every cell estimated from two forwards and a backward."""
    prepared = prepare_pair(model.tokenizer, pair)
    return start_job(slot, 1, lambda progress, cancel, on_wait: run_atp(
        model, prepared, sweep, direction, metric, cancel=cancel, on_wait=on_wait))


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

