"""Runs in the background: a worker thread per run, its progress bar and Cancel button, the
outcome handed back to the page, the cost shown before a run, and storing results in history.

Runs belong to the browser, not to one Streamlit session: a reload (which starts a new
session) or a second tab of the same browser finds its runs - progress, Cancel and result -
in a registry kept on the server. The browser is known by Streamlit's own XSRF cookie (the
token inside it, hashed; Streamlit sets it, the app sets no cookie and puts nothing in the
URL, so a shared link never hands someone else's run over). Without that cookie (XSRF
protection off, or the headless AppTest) runs belong to the session.

A browser whose every session has gone (tab closed) for GRACE_S seconds has its runs
cancelled: the model's lock is freed and nothing is stored. Streamlit's own Stop button
cancels the run of the page it stops.
"""
from __future__ import annotations

import binascii
import hashlib
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

import streamlit as st
from streamlit import config as st_config
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from patchcore import Cancelled, PatchError, PromptPair, plan, prepare_pair, run_sweep
from patchcore import estimate
from patchcore.attribution import run_atp
from patchcore.history import save_run
from ui.text import md_escape, show_error


UI_BATCHES = 8     # progress steps (and chances to cancel) per run; smaller batches cost speed on CPU
GRACE_S = 15.0     # a browser with no open session for this long has left: its runs are cancelled
STOP_CHECK_S = 3.0  # after a stopped script run: no new run of that session by then means Stop
KEEP_S = 6 * 3600  # what a browser that left kept on the server is dropped after this


@dataclass
class Job:
    """One run on a worker thread; pages poll it and the Cancel button sets `cancel`."""
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
    why: str = ""                               # why it was cancelled, when not by Cancel
    waited: bool = False                        # it waited for another run: its time is not the machine's

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self, why: str) -> None:
        if self.running and not self.cancel.is_set():
            self.why = why
            self.cancel.set()


@dataclass
class Browser:
    """One browser's runs by slot, and the Streamlit sessions it has open."""
    jobs: dict = field(default_factory=dict)
    sessions: dict = field(default_factory=dict)  # session id -> when its latest script run started
    gone_since: float | None = None


_REGISTRY: dict[str, Browser] = {}
_LOCK = threading.Lock()
_REAPER: list = []


def _xsrf_token() -> str | None:
    """The token in Streamlit's XSRF cookie: the same for every tab and reload of one browser."""
    try:
        raw = st.context.cookies.get("_streamlit_xsrf")
    except Exception:  # noqa: BLE001 - no cookies here (AppTest)
        return None
    if not raw:
        return None
    parts = raw.split("|")
    try:
        if parts[0] == "2" and len(parts) == 4:  # tornado: 2|mask|masked token|timestamp
            mask, masked = binascii.a2b_hex(parts[1]), binascii.a2b_hex(parts[2])
            return bytes(b ^ mask[i % 4] for i, b in enumerate(masked)).hex()
    except (binascii.Error, IndexError, ZeroDivisionError):
        return None
    return raw if len(parts) == 1 else None


def browser_key() -> str:
    ss = st.session_state
    if "_browser" not in ss:
        token = _xsrf_token()
        ss["_browser"] = ("b-" + hashlib.sha256(token.encode()).hexdigest()[:32] if token
                          else "s-" + uuid.uuid4().hex)
    return ss["_browser"]


def jobs_of(key: str) -> dict:
    """A browser's runs by slot (tests use it to look at or hand over a run)."""
    with _LOCK:
        return _REGISTRY.setdefault(key, Browser()).jobs


def _jobs() -> dict:
    return jobs_of(browser_key())


def attach() -> None:
    """Every page run: this session belongs to its browser (see the module docstring)."""
    ctx = get_script_run_ctx()
    key = browser_key()
    with _LOCK:
        b = _REGISTRY.setdefault(key, Browser())
        if ctx is not None:
            b.sessions[ctx.session_id] = time.time()
        b.gone_since = None
    if runtime.exists() and not st_config.get_option("global.appTest") and not _REAPER:
        with _LOCK:
            if not _REAPER:   # one watcher per server process (not a run: no 'patchcore-' name)
                t = threading.Thread(target=_reap_forever, name="dashboard-run-reaper", daemon=True)
                _REAPER.append(t)
                t.start()


def _reap_forever() -> None:
    while True:
        time.sleep(1.0)
        try:
            if runtime.exists():
                reap(runtime.get_instance().is_active_session)
        except Exception:  # noqa: BLE001 - never let the watcher die
            pass


def reap(is_active, now: float | None = None) -> None:
    """Cancel the runs of browsers with no open session for GRACE_S; forget long-gone ones."""
    now = time.time() if now is None else now
    with _LOCK:
        for key, b in list(_REGISTRY.items()):
            for sid in [s for s in b.sessions if not is_active(s) and now - b.sessions[s] > GRACE_S]:
                del b.sessions[sid]   # a reconnecting session attaches again on its next run
            if any(is_active(s) for s in b.sessions):
                b.gone_since = None
                continue
            b.gone_since = b.gone_since or now
            if now - b.gone_since >= GRACE_S:
                for job in b.jobs.values():
                    job.stop("its browser tab was closed")
            if now - b.gone_since >= KEEP_S and not any(j.running for j in b.jobs.values()):
                del _REGISTRY[key]


def _watch_stop(job: Job, sid: str, key: str) -> None:
    """The script showing `job` (session `sid` of browser `key`) was stopped: by Streamlit's
    Stop button if the session is still open and runs nothing new within STOP_CHECK_S (with
    Streamlit's fast reruns a widget change or a page change stops the running script too, and
    starts the new run at once; a closed tab is the reaper's business). Called while the
    script stops, where any Streamlit call (even st.session_state) raises again."""
    if not runtime.exists():
        return
    stopped = time.time()

    def check():
        b = _REGISTRY.get(key)
        if b is None or not runtime.exists():
            return
        if runtime.get_instance().is_active_session(sid) and b.sessions.get(sid, 0) < stopped:
            job.stop("Streamlit's Stop button was pressed")
    timer = threading.Timer(STOP_CHECK_S, check)
    timer.daemon = True
    timer.start()


def ui_batch_size(model, n_tokens: int, sweep: str) -> int:
    """Smaller batches than the engine's default, so progress moves and Cancel answers quickly."""
    p = plan(model, n_tokens, sweep)
    return max(1, min(p["batch_size"], max(8, math.ceil(p["patches"] / UI_BATCHES))))


def start_job(slot: str, total: int, work, on_done=None) -> Job:
    """Run work(progress=, cancel=, on_wait=) on a worker thread; what it returns becomes the
    result of `slot`, what it raises its error. on_done(result, job) runs after it, on the
    worker, unless the run was cancelled meanwhile (it stores, learns, adds job.notes; what it
    returns, if not None, becomes the result).
    job_panel(slot) shows progress, Cancel and the outcome."""
    job = Job(total=max(1, total))

    def progress(done, tot):
        job.done, job.total, job.waiting = done, tot, False

    def waiting():
        job.waiting = job.waited = True

    def run():
        try:
            result = work(progress=progress, cancel=job.cancel.is_set, on_wait=waiting)
            if job.cancel.is_set():   # cancelled after the last batch: keep and store nothing
                raise Cancelled()
            if on_done is not None:
                kept = on_done(result, job)
                result = result if kept is None else kept
            job.result = result
        except BaseException as exc:  # noqa: BLE001 - handed to the page
            job.error = exc

    job.thread = threading.Thread(target=run, name=f"patchcore-{slot}", daemon=True)
    job.thread.cancel_event = job.cancel  # whoever holds the thread can stop it (the tests do)
    _jobs()[slot] = job
    job.thread.start()
    return job


def save_result(result, settings: dict, timings: dict | None = None) -> tuple[int | None, str]:
    """Store a finished run in the history: (run id or None, a line for the page)."""
    try:
        run_id = save_run(result, source="dashboard", settings=settings,
                          timings=timings or {"sweep_seconds": result.seconds})
    except PatchError as exc:
        return None, f"Not saved to the run history: {exc.message}"
    return run_id, (f"Saved to the run history as run {run_id}." if run_id is not None else "")


def calibrated(cancel) -> None:
    """Before a run: let a timing of the model that a page's estimate started finish first (it
    holds the model's lock for a second or two), so the run's time is the machine's speed."""
    for t in threading.enumerate():
        if t.name == "patchcore-calibrate":
            while t.is_alive() and not cancel():
                t.join(0.2)


def learn(model, kind: str, estimate_now, job: Job, actual: float) -> None:
    """After a run: tell patchcore.estimate what it took, so later estimates on this machine are
    closer. `estimate_now()` is the estimate the page shows (recomputed here on the worker, where
    waiting is fine: the model is free again, so an uncalibrated one is timed now). A run that
    waited for another run's turn on the model teaches nothing (its time includes the wait)."""
    if job.waited:
        return
    try:
        shown = float(estimate_now())
        if estimate.calibrate(model, wait=False).measured:   # never learn from a guess
            estimate.learn(model, shown, float(actual), kind)
    except Exception:  # noqa: BLE001 - an estimate is a convenience, never an error
        pass


def start_sweep(slot: str, model, pair: PromptPair, sweep: str, direction: str, metric: str,
                save: bool = False, ablation: str = "corrupted") -> Job:
    """One patchcore.run_sweep in the background; with `save`, the result goes into the run history.
    `ablation`: what each patch writes (patchcore.ablations)."""
    prepared = prepare_pair(model.tokenizer, pair)  # pages check first; PairError says what is wrong
    batch_size = ui_batch_size(model, prepared.n_tokens, sweep)

    def work(**callbacks):
        calibrated(callbacks["cancel"])
        return run_sweep(model, prepared, sweep, direction, metric, batch_size=batch_size,
                         ablation=ablation, **callbacks)

    def done(result, job):
        if save:
            spec = model.spec
            job.notes.append(save_result(result, {
                "model": spec.name, "device": spec.device, "dtype": spec.dtype,
                "revision": spec.revision, "pair": pair.to_dict(), "sweep": sweep,
                "direction": direction, "metric": metric, "ablation": ablation})[1])
        if ablation == "corrupted":  # the estimate times the plain patch
            learn(model, "sweep", lambda: estimate.estimate_seconds(
                model, prepared.n_tokens, sweep, batch_size=batch_size, first_diff=prepared.first_diff),
                job, result.seconds)

    return start_job(slot, plan(model, prepared.n_tokens, sweep)["patches"], work, on_done=done)


def start_preview(slot: str, model, pair: PromptPair, sweep: str, direction: str, metric: str) -> Job:
    """Attribution patching (patchcore.attribution): every cell estimated from two forwards and a backward."""
    prepared = prepare_pair(model.tokenizer, pair)
    return start_job(slot, 1, lambda progress, cancel, on_wait: run_atp(
        model, prepared, sweep, direction, metric, cancel=cancel, on_wait=on_wait))


def job_of(slot: str) -> Job | None:
    return _jobs().get(slot)


def job_running(slot: str) -> bool:
    job = job_of(slot)
    return job is not None and job.running


def clear(slot: str) -> None:
    """Forget a slot's finished run (its outcome was taken)."""
    job = job_of(slot)
    if job is not None and not job.running:
        _jobs().pop(slot, None)


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
    job = job_of(slot)
    if job is None:
        return
    if job.running:
        bar = st.progress(min(1.0, job.done / max(1, job.total)), text=_progress_text(job))
        st.button("Cancel", key=f"cancel_{slot}", icon=":material/stop_circle:",
                  on_click=job.cancel.set, disabled=job.cancel.is_set())
        if st_config.get_option("global.appTest"):
            return
        ctx = get_script_run_ctx()
        watch = (ctx.session_id if ctx else "", browser_key())
        try:
            while job.running:
                time.sleep(0.5)
                bar.progress(min(1.0, job.done / max(1, job.total)), text=_progress_text(job))
        except StopException:
            _watch_stop(job, *watch)
            raise
        st.rerun()  # show the outcome
    for note in job.notes:
        if note:
            st.caption(md_escape(note))
    if isinstance(job.error, Cancelled):
        why = f" ({job.why})" if job.why else ""
        st.info(f"The run was cancelled{md_escape(why)}. Nothing was kept; press the run button to "
                "start again.", icon=":material/cancel:")
    elif job.error is not None:
        show_error(job.error)


def result_for(slot: str):
    job = job_of(slot)
    if job is None or job.running or job.error is not None:
        return None
    return job.result


def plan_line(model, n_tokens: int, sweep: str, first_diff: int = 0) -> dict:
    """Cost before a run, with the estimated time (never waits: an uncalibrated model is timed
    in the background and a guess shows meanwhile)."""
    p = plan(model, n_tokens, sweep, first_diff)
    bs = ui_batch_size(model, n_tokens, sweep)
    p["ui_batches"] = math.ceil((p["forward_rows"] - 2) / bs)
    try:
        p["seconds"] = float(estimate.estimate_seconds(model, n_tokens, sweep, batch_size=bs,
                                                       first_diff=first_diff, wait=False))
    except Exception:  # noqa: BLE001 - an estimate is optional: "—" rather than no page
        p["seconds"] = None
    return p


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"~{seconds:.0f} s" if seconds < 120 else f"~{seconds / 60:.0f} min"


def cost_columns(p: dict) -> list:
    """Four metric columns; the first two say patches and forward rows (from engine.plan)."""
    m = st.columns(4)
    m[0].metric("Patches", f"{p['patches']:,}", help="One patch per cell of the heatmap.")
    m[1].metric("Forward rows", f"{p['forward_rows']:,}",
                help="Patched rows plus the clean and corrupted baseline runs. Patches before the "
                     "first word where the prompts differ copy what is already there, so they "
                     f"need no forward pass ({p['skipped']:,} here).")
    return m
