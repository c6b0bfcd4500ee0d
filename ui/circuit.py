"""The Circuit page's settings, their URL parameters, the pairs it runs on, and the background run.

URL parameters (only values that differ from the defaults appear; invalid ones fall back to the
default with a notice): c_method (eap | eap-ig), c_steps, c_pairs (ioi | pair | ds_ioi |
ds_upload), c_n and c_seed (generated IOI pairs), c_k (circuit size), c_ablation, c_check (edges
checked exactly), c_points (curve points), c_sel (the clicked node, or edge:RANK). Direction,
metric, model and the prompt pair are the shared ones (ui.state). A link opened on a fresh
server shows the same settings; one click on Run reproduces the circuit.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import ui
from patchcore.circuits import CIRCUIT_ABLATIONS, DEFAULT_POINTS, MAX_STEPS, METHODS
from ui.circuit_view import MAX_K, SELECTION

SLOT = "circuit"
MAX_PAIRS = 64
MAX_CHECK = 200
MAX_POINTS = 64
DEFAULTS = {"c_method": "eap-ig", "c_steps": 5, "c_pairs": "ioi", "c_n": 8, "c_seed": 0, "c_k": 50,
            "c_ablation": "corrupted", "c_check": 10, "c_points": DEFAULT_POINTS, "c_sel": ""}
SOURCES = {"ioi": "Generated IOI pairs", "pair": "The current prompt pair (Prompts page)",
           "ds_ioi": "The IOI pairs built on the Datasets page",
           "ds_upload": "The pairs uploaded on the Datasets page"}
DATASET_KEYS = {"ds_ioi": "_ds_ioi", "ds_upload": "_ds_upload"}   # where the Datasets page keeps them
METHOD_NAMES = {"eap-ig": "EAP-IG (integrated gradients)", "eap": "EAP (one gradient)"}
ABLATION_NAMES = {"corrupted": "Corrupted run (the base prompt's values)",
                  "mean": "Mean over the pairs' prompts", "zero": "Zero"}
_INTS = {"c_steps": (1, MAX_STEPS), "c_n": (1, MAX_PAIRS), "c_seed": (0, 2**31 - 1), "c_k": (1, MAX_K),
         "c_check": (0, MAX_CHECK), "c_points": (0, MAX_POINTS)}
_CHOICES = {"c_method": METHODS, "c_pairs": tuple(SOURCES), "c_ablation": CIRCUIT_ABLATIONS}


def _valid(key: str, raw: str):
    """(value, None) or (default, why not)."""
    if key in _INTS:
        lo, hi = _INTS[key]
        if raw.isdigit() and lo <= int(raw) <= hi:
            return int(raw), None
        return DEFAULTS[key], f"a whole number from {lo} to {hi:,}"
    if key in _CHOICES:
        return (raw, None) if raw in _CHOICES[key] else (DEFAULTS[key], "choose one of " + ", ".join(_CHOICES[key]))
    return (raw, None) if SELECTION.match(raw) else (DEFAULTS[key], "not a node or edge:RANK")


def init_state() -> list[str]:
    """Once per session: the page's defaults, overridden by valid URL parameters. Returns notices."""
    ss = st.session_state
    if ss.get("_c_init"):
        return []
    notices = []
    for key, default in DEFAULTS.items():
        ss.setdefault(key, default)
        if key in st.query_params:
            raw = st.query_params.get(key, "")
            value, reason = _valid(key, raw)
            ss[key] = value
            if reason:
                shown = raw if len(raw) <= 40 else raw[:37] + "..."
                notices.append(f"'{key}' = {shown!r} was ignored ({reason}); using the default.")
    ss["_c_init"] = True
    return notices


def sync_url() -> None:
    """The page's settings into the address bar (non-default values only)."""
    qp = st.query_params
    for key, default in DEFAULTS.items():
        value = st.session_state.get(key, default)
        if value != default:
            if qp.get(key) != str(value):
                qp[key] = str(value)
        elif key in qp:
            del qp[key]


def source_options() -> list[str]:
    """The pair sources this session can use (the Datasets page's only once it built them)."""
    ss = st.session_state
    return [s for s in SOURCES if s not in DATASET_KEYS or len(ss.get(DATASET_KEYS[s]) or []) > 0]


def source_label(source: str) -> str:
    ds = st.session_state.get(DATASET_KEYS[source]) if source in DATASET_KEYS else None
    return SOURCES[source] + (f" ({len(ds)} pairs)" if ds is not None else "")


def pairs_for(model, source: str, n: int, seed: int):
    """The pairs a run uses: a PairDataset (IOI, the Datasets page's) or a list of one PromptPair."""
    ss = st.session_state
    if source == "pair":
        return [ui.current_pair()]
    if source in DATASET_KEYS:
        return ss[DATASET_KEYS[source]]
    from patchcore.ioi import generate_ioi
    key = (ui.chosen_spec(), n, seed)
    if ss.get("_c_ioi_key") != key:
        ss["_c_ioi"] = generate_ioi(model.tokenizer, n, seed=seed)
        ss["_c_ioi_key"] = key
    return ss["_c_ioi"]


@dataclass
class CircuitRun:
    """What a finished background run hands to the page."""
    result: object               # CircuitResult
    settings: dict
    run_id: int | None = None
    note: str = ""


def settings_now(source: str) -> dict:
    """The settings a run is made with (stored in history; also compared to the shown result)."""
    ss = st.session_state
    s = {"page": "circuit", "model": ss["model"], "method": ss["c_method"], "direction": ss["direction"],
         "metric": ss["metric"], "ablation": ss["c_ablation"], "edges": int(ss["c_k"]),
         "check_top": int(ss["c_check"]), "curve_points": int(ss["c_points"]), "pairs": source}
    if ss["c_method"] == "eap-ig":
        s["steps"] = int(ss["c_steps"])
    if source == "ioi":
        s.update(n=int(ss["c_n"]), seed=int(ss["c_seed"]))
    elif source == "pair":
        s["pair"] = ui.current_pair().to_dict()
    return s


def total_steps(n_pairs: int, n_edges: int, settings: dict) -> int:
    """What run_circuit's progress counts: per pair, gradient steps, exact checks, curve points."""
    from patchcore.circuit_faith import log_grid
    k = min(settings["edges"], n_edges)
    return n_pairs * (settings.get("steps", 1) + min(settings["check_top"], n_edges) +
                      len(log_grid(n_edges, settings["curve_points"], [k])))


def start_run(model, pairs, settings: dict, n_pairs: int, n_edges: int, raw_estimate: float | None) -> None:
    """run_circuit on a worker thread (progress and Cancel in ui.job_panel), then stored in history."""
    from patchcore.circuit_estimate import learn_circuit
    from patchcore.circuits import run_circuit

    def work(progress, cancel, on_wait):
        result = run_circuit(model, pairs, settings["method"], steps=settings.get("steps", 1),
                             direction=settings["direction"], metric=settings["metric"],
                             ablation=settings["ablation"], edges=settings["edges"],
                             check_top=settings["check_top"], curve_points=settings["curve_points"],
                             progress=progress, cancel=cancel, on_wait=on_wait)
        learn_circuit(model, raw_estimate, result.seconds)
        run_id, note = ui.jobs.save_result(result, settings, timings=dict(result.timings))
        return CircuitRun(result, settings, run_id, note)

    job = ui.start_job(SLOT, total_steps(n_pairs, n_edges, settings), work)
    job.unit = "steps"
