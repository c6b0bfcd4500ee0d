"""The hypothesis check under every heatmap: clicked cells become a selection of sites (chips
that can be removed, "top N" picks, typed sites; kept in the URL as `sites`), and "Test these
together" runs sufficiency, necessity and the complement (patchcore.hypothesis.run_check) in
the background, stores the three runs in the history, and can send the selection to the
Paths page as senders.

ui/results.py (one pair) and ui/datasets.py (datasets) call panel() after their heatmaps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import streamlit as st

from patchcore import PatchError
from patchcore.hypothesis import (RUN_HELP, RUN_TITLES, first_result, pairs_of, position_problem, run_check,
                                  split_senders, top_sites)
from patchcore.sites import SITE_HELP, check_sites, parse_sites
from patchcore.summary import num
from patchcore.sweeps import site_of
from ui.jobs import job_panel, job_running, result_for, save_result, start_job
from ui.model import auto_model, get_model
from ui.state import sync_url
from ui.text import md_escape, show_error

KEY = "sites"            # the selection, comma-separated, in the URL
PATHS_PAGE = "pages/6_Paths.py"
TOP_PICKS = (3, 5, 10)


@dataclass
class CheckRun:
    """What a finished check hands to the page."""
    check: object                  # patchcore.hypothesis.HypothesisCheck
    run_ids: dict = field(default_factory=dict)   # run name -> id in the history
    notes: list = field(default_factory=list)


def selection() -> list[str]:
    raw = st.session_state.get(KEY, "")
    return [s for s in raw.split(",") if s]


def set_selection(sites: list[str]) -> None:
    seen = []
    for s in sites:
        if s not in seen:
            seen.append(s)
    st.session_state[KEY] = ",".join(seen)


def add_sites(sites: list[str]) -> None:
    set_selection(selection() + list(sites))


def _shape(r) -> SimpleNamespace:
    """What check_sites needs of a model, from a result (its layers and heads)."""
    return SimpleNamespace(n_layers=r.n_layers, n_heads=r.n_heads, n_kv_heads=r.n_kv_heads or r.n_heads)


def _clicked(r, chart_keys: list[str]) -> bool:
    """Add a newly clicked cell of any of these charts to the selection (True if one was added).

    A chart's selection stays in its widget state until the next click, so each click is
    taken once: the last cell seen per chart is remembered."""
    added = False
    for ck in chart_keys:
        event = st.session_state.get(ck)
        points = ((event or {}).get("selection") or {}).get("cell") or []
        try:
            cell = tuple(int(points[0][a]) for a in r.axes)
        except (IndexError, KeyError, TypeError, ValueError):
            cell = None
        seen = f"_hyp_seen_{ck}"
        if cell != st.session_state.get(seen):
            st.session_state[seen] = cell
            if cell is not None:
                try:
                    site = str(site_of(r.sweep, cell))
                except PatchError:
                    continue
                if site not in selection():
                    add_sites([site])
                    added = True
    return added


def _typed(slot: str, r) -> None:
    """The 'Add sites' field: valid sites join the selection and the field empties; otherwise
    the text stays and one line says what is wrong."""
    wkey = f"w_hyp_type_{slot}"
    text = st.session_state.get(wkey, "").strip()
    st.session_state.pop(f"_hyp_err_{slot}", None)
    if not text:
        return
    try:
        sites = parse_sites(text)
        n_tokens = len(r.tokens) if getattr(r, "n_pairs", 1) <= 1 or r.aligned_by == "position" else 10**6
        check_sites(sites, _shape(r), n_tokens)
    except PatchError as exc:
        st.session_state[f"_hyp_err_{slot}"] = exc.message
        return
    add_sites([str(s) for s in sites])
    st.session_state[wkey] = ""


def _chips_changed(slot: str) -> None:
    set_selection(list(st.session_state.get(f"w_hyp_chips_{slot}") or []))


def _pick_top(r, n: int) -> None:
    set_selection(top_sites(r, n))


def _problem(r, sites: list[str], model) -> str | None:
    """Why the check cannot run here, in one line (None: it can)."""
    if not sites:
        return None
    if model is not None and r.model != model.label:
        return (f"This result comes from {r.model}, but the loaded model is {model.label}: load "
                f"{r.model} on the Model page to test sites on it.")
    try:
        problem = position_problem(r, sites)
    except PatchError as exc:
        return exc.message
    return problem


def _start(slot: str, r, model, sites: list[str]) -> None:
    pairs = pairs_of(r)
    dataset = getattr(r, "n_pairs", 1) > 1
    ablation = r.ablation if r.ablation != "resample" or dataset else "corrupted"
    settings = {"page": "hypothesis", "model": model.spec.name, "sites": list(sites), "metric": r.metric,
                "ablation": ablation, "n_pairs": len(pairs)}
    if not dataset:
        settings["pair"] = pairs[0].to_dict()
    notes: list = []

    def work(progress, cancel, on_wait):
        check = run_check(model, pairs, sites, r.metric, ablation=ablation,
                          n_boot=r.n_boot if dataset else None, seed=getattr(r, "boot_seed", 0),
                          progress=progress, cancel=cancel, on_wait=on_wait)
        ids = {}
        for name, res in check.runs().items():
            run_id, note = save_result(res, {**settings, "check": name}, {"seconds": res.seconds})
            if run_id is not None:
                ids[name] = run_id
            elif note and note not in notes:
                notes.append(note)
        return CheckRun(check, ids, notes)

    job = start_job(f"hyp_{slot}", 3, work)
    job.unit = "runs (enough? needed? the rest?)"


def _pct(x: float) -> str:
    return "—" if not np.isfinite(x) else num(x * 100, ".0f") + "%"


def show_check(run: CheckRun, slot: str) -> None:
    """Both scores (and the complement's) with a sentence each, intervals on a dataset, the verdict."""
    check = run.check
    runs = check.runs()
    cols = st.columns(len(runs))
    for col, (name, res) in zip(cols, runs.items()):
        with col:
            st.metric(RUN_TITLES[name], _pct(res.normalized), help=RUN_HELP[name])
            ci = check.interval(name)
            if ci is not None:
                st.caption(f"95% interval: {_pct(ci[0])} to {_pct(ci[1])} ({res.n_pairs} pairs)")
            st.text(check.reading(name))
    st.markdown("**" + md_escape(check.verdict()) + "**")
    for note in check.notes + run.notes:
        st.caption(md_escape(note))
    where = f"{check.n_pairs} pairs" if check.n_pairs > 1 else "this pair"
    stored = ", ".join(f"{k} {v}" for k, v in run.run_ids.items())
    st.caption(f"Tested on {where} in {check.seconds:.1f} s"
               + (f" · saved to the run history as runs {md_escape(stored)}" if stored else "")
               + f" · knocked out with the {md_escape(check.necessity.ablation)} ablation when testing "
                 "whether they are needed.")
    payload = {"sites": list(check.sites), "verdict": check.verdict(),
               **{name: res.to_json() for name, res in runs.items()}}
    st.download_button("Download the check (JSON)", json.dumps(payload, indent=1), "patchcore_hypothesis.json",
                       "application/json", key=f"dl_hyp_{slot}", icon=":material/download:")


def _send_to_paths() -> None:
    keep, left = split_senders(selection())
    st.session_state["senders"] = ",".join(keep)
    st.session_state["_paths_note"] = (
        "Sent from your selection" + (f"; left out (paths start from heads and MLPs): {', '.join(left)}"
                                      if left else "") + ".")


def panel(result, slot: str, chart_keys: list[str]) -> None:
    """The selection and the check, under a result's heatmap(s)."""
    r = first_result(result)
    if not hasattr(r, "axes") or not getattr(r, "sweep", None):
        return
    if _clicked(r, chart_keys):
        sync_url()   # the page wrote the URL before this click was taken
    hslot = f"hyp_{slot}"
    st.subheader("Test a hypothesis: these sites together")
    st.caption("Click cells of the heatmap to add them to the selection, pick the strongest ones, or type "
               "sites. “Test these together” asks whether they are enough to bring the clean answer "
               "back, whether the model needs them, and whether the rest can do without them."
               + (" On a path heatmap the check patches the selected heads or MLPs themselves, along "
                  "every route, not only the path above." if getattr(r, "path", None) else ""))
    sites = selection()
    chips = f"w_hyp_chips_{slot}"
    st.session_state[chips] = sites
    st.multiselect("Selected sites", sites, key=chips, on_change=_chips_changed, args=(slot,),
                   placeholder="No sites yet: click cells of the heatmap",
                   help="Remove a site with its ×. The selection is part of the link in the address bar.")
    cols = st.columns([1, 1, 1, 1, 5])
    for col, n in zip(cols, TOP_PICKS):
        col.button(f"Top {n}", key=f"hyp_top{n}_{slot}", on_click=_pick_top, args=(result, n),
                   help=f"Replace the selection with the {n} strongest cells of this heatmap.")
    cols[3].button("Clear", key=f"hyp_clear_{slot}", on_click=set_selection, args=([],),
                   disabled=not sites)
    cols[4].text_input("Add sites by name", key=f"w_hyp_type_{slot}", on_change=_typed, args=(slot, r),
                       placeholder="e.g. head:9.6, mlp:0, resid:5@3", label_visibility="collapsed",
                       help=SITE_HELP)
    err = st.session_state.get(f"_hyp_err_{slot}")
    if err:
        st.error(md_escape(err), icon=":material/error:")

    model = auto_model() if sites else None
    problem = _problem(r, sites, model)
    if problem:
        st.warning(md_escape(problem), icon=":material/warning:")
    busy = job_running(hslot)
    b1, b2, _ = st.columns([1.3, 1.9, 3])
    test = b1.button("Test these together", type="primary", key=f"hyp_run_{slot}", icon=":material/science:",
                     disabled=busy or not sites or bool(problem),
                     help="Three runs: these sites restored together (enough?), corrupted together "
                          "(needed?), and every other site of their kinds restored without them.")
    heads_or_mlps, _ = split_senders(sites) if sites else ([], [])
    if b2.button("Send to the Paths page as senders", key=f"hyp_paths_{slot}", icon=":material/route:",
                 disabled=not heads_or_mlps, on_click=_send_to_paths,
                 help="Path patching starts from heads and MLPs: which of them act on the answer "
                      "directly, and which through other heads?"):
        st.switch_page(PATHS_PAGE)
    if test:
        model = model or get_model()
        if model is not None and not _problem(r, sites, model):
            try:
                _start(slot, r, model, sites)
            except Exception as exc:  # noqa: BLE001 - bad input or a bug: a message, never a traceback
                show_error(exc)
    job_panel(hslot)
    run = result_for(hslot)
    if run is not None:
        if list(run.check.sites) != sites:
            st.caption("The selection changed since this check; press “Test these together” to test the new one.")
        show_check(run, slot)
