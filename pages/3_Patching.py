"""Patching: choose what to patch, see the cost, run with progress and Cancel, read the heatmap."""
import streamlit as st

import ui
from ui import atp as ui_atp
from ui.ablation import choose_ablation
from ui import remote as ui_remote
from patchcore import DIRECTIONS, METRICS, SWEEPS, check_pair
from patchcore.ablations import ABLATIONS

ui.page("Patching")
ss = st.session_state

st.title("Patching")
st.caption("Copy activations between the clean and corrupted runs, one piece at a time, and see "
           "which pieces move the answer.")

pair = ui.current_pair()
with st.container(border=True):
    st.markdown("**Prompt pair**")
    st.text(f"Clean:      {pair.clean}   → answer {pair.answer!r}\n"
            f"Corrupted:  {pair.corrupted}   → wrong {pair.wrong!r}")
    ui.link("pages/2_Prompts.py", "Change the prompts")

c1, c2, c3 = st.columns(3)
sweep = c1.selectbox(
    "What to patch", list(SWEEPS), format_func=lambda s: SWEEPS[s].title, **ui.bind("w_sweep", "sweep", clears=("cell",)),
    help="\n\n".join(f"**{ui.md_escape(s.title)}**: {ui.md_escape(s.help)}" for s in SWEEPS.values()))
result = ui.result_for("patch")
# a sweep's caveat is said once: here before a run, by the result viewer once its result shows
if not SWEEPS[sweep].caveat:
    c1.caption(SWEEPS[sweep].help)
elif result is None or result.sweep != sweep:
    st.info(SWEEPS[sweep].caveat, icon=":material/info:")
direction = c2.radio(
    "Direction", list(DIRECTIONS), horizontal=True, **ui.bind("w_direction", "direction"),
    format_func={"denoise": "Denoise (clean → corrupted)", "noise": "Noise (corrupted → clean)"}.get,
    help="\n\n".join(ui.md_escape(t) for t in DIRECTIONS.values()))
c2.caption(DIRECTIONS[direction])
metric = c3.selectbox(
    "Metric", list(METRICS), **ui.bind("w_metric", "metric"),
    format_func=lambda m: ui.metric_name(m).capitalize(),
    help="\n\n".join(ui.md_escape(t) for t in METRICS.values()))
c3.caption(METRICS[metric])

# -- what a patch writes: the ablation (patchcore.ablations), with its caveat -------------------
a1, a2 = st.columns([1, 2])
ablation = choose_ablation("w_ablation", a1, a2)
ablation_problem = None
if ABLATIONS[ablation].needs_dataset:
    ablation_problem = ("Resample draws other prompts from a dataset; one pair has none. Use it on the "
                        "Datasets page, or choose another ablation here.")
elif ablation != "corrupted" and ui_remote.active():
    ablation_problem = "Runs on NDIF write the other prompt's activations only; choose “Other prompt”."
if ablation_problem:
    st.error(ablation_problem, icon=":material/error:")

remote = ui_remote.active()  # connected to NDIF on the Model page: every run goes there
model = remote.model if remote else ui.auto_model()
prepared = None
if model is None:
    if not ui.is_loaded():
        st.warning(f"The model {ui.md_escape(repr(ui.model_label(ss['model'])))} is not loaded yet. Press Run to load it "
                   "(hub models need internet), or choose another on the Model page.",
                   icon=":material/memory:")
else:
    prepared, issues = check_pair(model.tokenizer, pair)
    if issues:
        st.error("The prompt pair has a problem; fix it on the Prompts page before running:\n\n" +
                 "\n".join(f"- {ui.md_escape(i.message.splitlines()[0])}" for i in issues),
                 icon=":material/error:")
    elif remote:
        ui_remote.plan_metrics(remote, prepared, sweep)
    else:
        p = ui.plan_line(model, prepared.n_tokens, sweep, prepared.first_diff)  # never waits
        m = ui.cost_columns(p)
        m[2].metric("Batches", f"{p['ui_batches']:,}",
                    help="Rows are run in batches; progress and Cancel act between batches.")
        m[3].metric("Estimated time", ui.seconds_text(p["seconds"]),
                    help="From patchcore's estimate for this model, prompt length and sweep, corrected "
                         "by what earlier runs took on this machine."
                    if p["seconds"] is not None else "No estimate available for this set-up.")

busy = ui.job_running("patch")
blocked = busy or (model is not None and prepared is None) or bool(ablation_problem)
b1, b2, _ = st.columns([1, 1.5, 6])
run = b1.button("Run", type="primary", icon=":material/play_arrow:", disabled=blocked, key="run_patch",
                help="Exact patching: one patched forward pass per cell.")
preview = b2.button(
    "Fast preview", icon=":material/bolt:", disabled=blocked or bool(remote) or ablation != "corrupted",
    key="preview_patch",
    help="Local models only: it needs gradients, which NDIF runs do not send back." if remote else
    "The fast preview estimates the other-prompt ablation only." if ablation != "corrupted" else
    "Attribution patching: estimates every cell from two forward passes and one backward "
    "pass – seconds instead of minutes, but approximate (weakest on the residual stream).")
if run or preview:
    model = model or ui.get_model()
    if model is not None:
        try:
            if run and remote:
                ui_remote.start_sweep("patch", remote, pair, sweep, direction, metric, save=True)
            elif run:
                ui.start_sweep("patch", model, pair, sweep, direction, metric, save=True, ablation=ablation)
            else:
                ui.start_preview("patch", model, pair, sweep, direction, metric)
        except Exception as exc:  # noqa: BLE001 - bad input or a bug: a message, never a traceback
            ui.show_error(exc)

ui.job_panel("patch")
result = ui.result_for("patch")
if result is not None:
    asked = (sweep, direction, metric, pair, ablation)
    if asked != (result.sweep, result.direction, result.metric, result.pair, result.ablation):
        st.caption("The settings above changed since this result was computed; press Run to update it.")
    if result.ablation in ABLATIONS and ABLATIONS[result.ablation].caveat:  # run_sweep does not warn
        st.caption(f"Ablation: {ABLATIONS[result.ablation].title}. {ABLATIONS[result.ablation].caveat}")
    ui.show_result(result, "patch", model=None if remote else model)
    ui_atp.panel(result, model)
