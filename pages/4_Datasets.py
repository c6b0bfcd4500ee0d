"""Datasets: many prompt pairs at once – means with 95% intervals, both directions, quadrants."""
import pandas as pd
import streamlit as st

import ui
from ui import remote as ui_remote
from ui import datasets as uid
from ui.ablation import choose_ablation
from patchcore import METRICS, SWEEPS
from patchcore.dataset_run import estimate_dataset_seconds, plan_dataset
from patchcore.datasets import for_sweep, length_groups
from patchcore.ioi import CORRUPTIONS, MAX_IOI_PAIRS, ROLE_HELP, TEMPLATE_SETS, generate_ioi
from patchcore.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PAIRS, parse_upload, rejected_summary

ui.page("Datasets")
ss = st.session_state
SLOT = "dataset"
SOURCES = {"ioi": "Generate IOI pairs", "upload": "Upload a file of pairs (CSV or JSONL)"}
TEMPLATE_NAMES = {"mixed": "Mixed (half BABA, half ABBA)", "baba": "BABA only (subject named first)",
                  "abba": "ABBA only (receiver named first)"}
EXAMPLE_CSV = ('clean,corrupted,answer,wrong\n'
               '"After John and Mary went to the store, Mary gave a bottle of milk to",'
               '"After John and Mary went to the store, John gave a bottle of milk to"," John"," Mary"\n'
               '"When Tom and Anna went to the park, Anna gave a ball to",'
               '"When Tom and Anna went to the park, Tom gave a ball to"," Tom"," Anna"\n')

st.title("Datasets")
st.caption("One prompt pair is an anecdote. Run the same sweep over many pairs: every cell shows the "
           "mean over pairs with a 95% interval, so you can see which findings hold up.")

model = ui.auto_model()
if ui_remote.active():
    st.info("This session is connected to NDIF for single pairs (Patching page). Datasets run on this "
            f"machine's model, {ui.md_escape(ui.model_label(ss['model']))}: on NDIF every pair would be its own job.",
            icon=":material/cloud_off:")
if model is None:
    st.warning(f"The model {ui.md_escape(repr(ui.model_label(ss['model'])))} is not loaded yet. Load it to build and "
               "check pairs with its tokenizer.", icon=":material/memory:")
    if st.button("Load model", type="primary", key="ds_load_model"):
        model = ui.get_model()
if model is None:
    st.stop()
tok = model.tokenizer

source = st.radio("Pairs", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="ds_source")
dataset = None
try:
    if source == "ioi":
        c = st.columns(4)
        n = int(c[0].number_input("Number of pairs", 1, MAX_IOI_PAIRS, **ui.bind("w_ds_n", "pairs"),
                                  help="50 pairs give tight intervals; each pair is one full sweep."))
        seed = int(c[1].number_input("Seed", 0, 2**31 - 1, **ui.bind("w_ds_seed", "seed"),
                                     help="The same seed gives the same pairs (and the same intervals)."))
        corruption = c[2].selectbox("Corruption", list(CORRUPTIONS), **ui.bind("w_ds_corruption", "corruption"),
                                    format_func={"swap": "Name swap", "abc": "ABC (three other names)"}.get)
        templates = c[3].selectbox("Templates", list(TEMPLATE_SETS), format_func=TEMPLATE_NAMES.get,
                                   **ui.bind("w_ds_templates", "templates"))
        st.caption(CORRUPTIONS[corruption])
        key = (ui.chosen_spec(), n, seed, corruption, templates)
        if ss.get("_ds_ioi_key") != key:
            ss["_ds_ioi"] = generate_ioi(tok, n, seed=seed, corruption=corruption, templates=templates)
            ss["_ds_ioi_key"] = key
        dataset = ss["_ds_ioi"]
        with st.expander("Roles: how pairs of different lengths are lined up"):
            st.text("Templates differ in length, so positions are matched by role, not by index. "
                    "A role that spans several tokens is averaged over them.")
            st.dataframe(pd.DataFrame(list(ROLE_HELP.items()), columns=["role", "meaning"]),
                         hide_index=True, width="stretch")
    else:
        seed = int(st.number_input("Seed (bootstrap)", 0, 2**31 - 1, 0, key="ds_seed_upload"))
        up = st.file_uploader("Upload pairs (CSV or JSONL)", type=["csv", "jsonl", "json", "txt"],
                              key="ds_upload",
                              help=f"Columns clean, corrupted, answer, wrong. Up to {MAX_UPLOAD_PAIRS} pairs "
                                   f"and {MAX_UPLOAD_BYTES // 2**20} MiB. Answers usually start with a space.")
        st.caption("CSV needs a header row clean,corrupted,answer,wrong; JSONL one object per line with "
                   "those keys. Every row is checked; rejected rows are listed with their line number and "
                   "the good rows still run.")
        st.download_button("Example CSV", EXAMPLE_CSV, "pairs_example.csv", "text/csv", key="ds_example",
                           icon=":material/download:")
        if up is not None:
            key = (ui.chosen_spec(), up.file_id)
            if ss.get("_ds_upload_key") != key:
                ss["_ds_upload"] = parse_upload(up.getvalue(), up.name, tok)
                ss["_ds_upload_key"] = key
            dataset = ss["_ds_upload"]
except Exception as exc:  # noqa: BLE001 - bad file or settings: a message, never a traceback
    ui.show_error(exc)
    dataset = None

c1, c2, c3 = st.columns(3)
sweep = c1.selectbox("What to patch", list(SWEEPS), format_func=lambda s: SWEEPS[s].title,
                     **ui.bind("w_ds_sweep", "ds_sweep"))
directions = c2.radio("Directions", list(uid.DIRECTION_CHOICES), format_func=uid.DIRECTION_CHOICES.get,
                      **ui.bind("w_ds_directions", "directions"))
metric = c3.selectbox("Metric", list(METRICS), **ui.bind("w_ds_metric", "ds_metric"),
                      format_func=lambda m: ui.metric_name(m).capitalize())
a1, a2 = st.columns([1, 2])
ablation = choose_ablation("w_ds_ablation", a1, a2)
with st.expander("Statistics"):
    n_boot = int(st.number_input("Bootstrap resamples", 200, 20000, 1000, step=100, key="ds_n_boot",
                                 help="More resamples give steadier interval ends; 1,000 is usual."))

run = ui.result_for(SLOT)
said = set(run.result.denoise.notes if hasattr(run.result, "denoise") else run.result.notes) if run else set()
runnable = None
if dataset is not None:
    if dataset.rejected:
        st.warning(rejected_summary(dataset), icon=":material/warning:")
        st.dataframe(pd.DataFrame([{"line": r.line, "reason": r.reason} for r in dataset.rejected]),
                     hide_index=True, width="stretch", key="ds_rejected")
    for note in dataset.notes:
        if note not in said:  # the result below says it already
            st.info(ui.md_escape(note), icon=":material/info:")
    if len(dataset):
        length = None
        if dataset.source != "ioi" and SWEEPS[sweep].per_position:
            groups = length_groups(dataset, tok)
            if len(groups) > 1:
                st.info("Uploaded pairs are matched position by position, so a per-position sweep needs "
                        "pairs of equal token length. Pick which length group runs (or choose a sweep "
                        "without positions to use every pair).", icon=":material/straighten:")
                length = st.selectbox("Token length to run", list(groups), key="ds_length",
                                      format_func=lambda k: f"{k} tokens ({len(groups[k])} pairs)")
            else:
                st.caption(f"All {len(dataset)} pairs have {next(iter(groups))} tokens: positions are "
                           "matched one to one.")
        try:
            runnable = for_sweep(dataset, SWEEPS[sweep].per_position, tok, length)
            n_dirs = 2 if directions == "both" else 1
            p = plan_dataset(model, runnable, sweep, n_dirs)
            m = st.columns(3)
            m[0].metric("Pairs", f"{p['pairs']:,}")
            m[1].metric("Patches", f"{p['patches']:,}", help="Cells × pairs × directions.")
            try:  # never waits: an uncalibrated model is timed in the background, a guess meanwhile
                est = estimate_dataset_seconds(model, runnable, sweep, n_dirs, wait=False)
            except Exception:  # noqa: BLE001 - an estimate is optional
                est = None
            m[2].metric("Estimated time", ui.seconds_text(est),
                        help="From this model's speed here, corrected by what earlier dataset runs took "
                             "on this machine; other work on the machine slows it.")
            rows = [{"#": i + 1, "clean": it.pair.clean, "corrupted": it.pair.corrupted,
                     "answer": it.pair.answer, "wrong": it.pair.wrong, "tokens": it.n_tokens}
                    | ({"line": it.line} if it.line is not None else {})
                    for i, it in enumerate(runnable.items[:200])]
            with st.expander(f"The pairs ({len(runnable)})"):
                st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="ds_pairs")
        except Exception as exc:  # noqa: BLE001
            ui.show_error(exc)
            runnable = None

busy = ui.job_running(SLOT)
if st.button("Run dataset", type="primary", icon=":material/play_arrow:", key="ds_run",
             disabled=busy or runnable is None or not len(runnable)):
    try:
        settings = {"page": "datasets", "sweep": sweep, "directions": directions, "metric": metric,
                    "ablation": ablation, "n_boot": n_boot, "seed": seed, "model": ss["model"],
                    **runnable.settings}
        total = plan_dataset(model, runnable, sweep, 2 if directions == "both" else 1)["patches"]
        uid.start_dataset_job(SLOT, model, runnable, sweep, directions, metric, n_boot=n_boot, seed=seed,
                              length=None, total=total, settings=settings, ablation=ablation)
    except Exception as exc:  # noqa: BLE001
        ui.show_error(exc)

ui.job_panel(SLOT)
run = ui.result_for(SLOT)
if run is not None:
    if run.history_error:
        st.warning(ui.md_escape(run.history_error), icon=":material/warning:")
    elif run.run_id:
        st.success(f"Stored as run {run.run_id}: reopen it any time on the History page.",
                   icon=":material/history:")
    try:
        ui.show_result(run.result, SLOT, cell_key="ds_cell", run_id=run.run_id)
    except Exception as exc:  # noqa: BLE001
        ui.show_error(exc)
