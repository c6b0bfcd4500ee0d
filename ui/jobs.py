"""Runs in the background: a worker thread per run, its progress bar and Cancel button, the
outcome handed back to the page, the cost shown before a run, and storing results in history."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import streamlit as st
from streamlit import config as st_config

from patchcore import Cancelled, PatchError, PromptPair, plan, prepare_pair, run_sweep
from patchcore.attribution import run_atp
from patchcore.estimate import estimate_seconds
from patchcore.history import save_run
from ui.text import md_escape, show_error


UI_BATCHES = 8  # progress steps (and chances to cancel) per run; smaller batches cost speed on CPU


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


def save_result(result, settings: dict, timings: dict | None = None) -> tuple[int | None, str]:
    """Store a finished run in the history: (run id or None, a line for the page)."""
    try:
        run_id = save_run(result, source="dashboard", settings=settings,
                          timings=timings or {"sweep_seconds": result.seconds})
    except PatchError as exc:
        return None, f"Not saved to the run history: {exc.message}"
    return run_id, (f"Saved to the run history as run {run_id}." if run_id is not None else "")


def start_sweep(slot: str, model, pair: PromptPair, sweep: str, direction: str, metric: str,
                save: bool = False, ablation: str = "corrupted") -> Job:
    """One patchcore.run_sweep in the background; with `save`, the result goes into the run history.
    `ablation`: what each patch writes (patchcore.ablations)."""
    prepared = prepare_pair(model.tokenizer, pair)  # pages check first; PairError says what is wrong
    batch_size = ui_batch_size(model, prepared.n_tokens, sweep)
    notes = []

    def work(**callbacks):
        result = run_sweep(model, prepared, sweep, direction, metric, batch_size=batch_size,
                           ablation=ablation, **callbacks)
        if save:
            spec = model.spec
            notes.append(save_result(result, {
                "model": spec.name, "device": spec.device, "dtype": spec.dtype,
                "revision": spec.revision, "pair": pair.to_dict(), "sweep": sweep,
                "direction": direction, "metric": metric, "ablation": ablation})[1])
        return result

    job = start_job(slot, plan(model, prepared.n_tokens, sweep)["patches"], work)
    job.notes = notes
    return job


def start_preview(slot: str, model, pair: PromptPair, sweep: str, direction: str, metric: str) -> Job:
    """Attribution patching (patchcore.attribution): every cell estimated from two forwards and a backward."""
    prepared = prepare_pair(model.tokenizer, pair)
    return start_job(slot, 1, lambda progress, cancel, on_wait: run_atp(
        model, prepared, sweep, direction, metric, cancel=cancel, on_wait=on_wait))


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
