"""Paths: path patching – does a component act on the answer directly, or through whom?"""
import streamlit as st

import ui
from ui import paths as up
from ui.ablation import choose_ablation
from ui import remote as ui_remote
from patchcore import DIRECTIONS, METRICS
from patchcore.ablations import ABLATIONS, DEFAULT_DRAWS
from patchcore.path_report import path_cost, path_seconds

ui.page("Paths", ":material/route:")
ss = st.session_state

st.title("Paths")
st.caption("Activation patching says a head matters; path patching says how: does it act on the answer "
           "directly, or through other heads? Each path copies a sender's output from one run into the "
           "other and lets the change reach only the receivers you choose, with every other head and MLP "
           "frozen.")
note = ss.pop("_paths_note", None)
if note:
    st.info(ui.md_escape(note), icon=":material/route:")

model = ui.auto_model()
if ui_remote.active():
    st.info("This session is connected to NDIF for the Patching page. Paths run on this machine's model, "
            f"{ui.md_escape(ui.model_label(ss['model']))}.", icon=":material/cloud_off:")
if model is None:
    st.warning(f"The model {ui.md_escape(repr(ui.model_label(ss['model'])))} is not loaded yet. Load it on "
               "the Model page, or press the button.", icon=":material/memory:")
    if st.button("Load model", type="primary", key="paths_load_model"):
        model = ui.get_model()

c1, c2 = st.columns(2)
with c1:
    senders = up.choose_senders(model)
with c2:
    receivers = up.choose_receivers()

c1, c2, c3 = st.columns(3)
direction = c1.radio(
    "Direction", list(DIRECTIONS), horizontal=True, **ui.bind("w_paths_direction", "direction"),
    format_func={"denoise": "Denoise (clean → corrupted)", "noise": "Noise (corrupted → clean)"}.get,
    help="\n\n".join(ui.md_escape(t) for t in DIRECTIONS.values()))
c1.caption("Denoise: the senders carry the clean run's output into the corrupted run. Noise: the "
           "corrupted run's output into the clean run.")
metric = c2.selectbox("Metric", list(METRICS), **ui.bind("w_paths_metric", "metric"),
                      format_func=lambda m: ui.metric_name(m).capitalize(),
                      help="\n\n".join(ui.md_escape(t) for t in METRICS.values()))
c2.caption(METRICS[metric])
ablation = choose_ablation("w_paths_ablation", c3, c3, label="What a sender writes (ablation)")

datasets = up.current_datasets()
on = st.radio("Run on", ["pair", "dataset"], horizontal=True, key="w_paths_on",
              format_func={"pair": "The prompt pair (Prompts page)",
                           "dataset": "The current dataset (Datasets page)"}.get,
              help="A dataset gives every cell as a mean over pairs, with a 95% interval.")
pairs, settings = None, {}
if on == "pair":
    pair = ui.current_pair()
    st.text(f"Clean:      {pair.clean}   → answer {pair.answer!r}\n"
            f"Corrupted:  {pair.corrupted}   → wrong {pair.wrong!r}")
    pairs, settings = [pair], {"pair": pair.to_dict()}
elif not datasets:
    st.info("No dataset in this session yet: build one on the Datasets page (generated IOI pairs or your "
            "own file), then come back.", icon=":material/dataset:")
    st.page_link("pages/4_Datasets.py", label="Datasets", icon=":material/dataset:")
else:
    which = st.selectbox("Dataset", list(datasets), format_func=lambda k: datasets[k][0], key="w_paths_ds")
    ds = datasets[which][1]
    pairs, settings = ds, {"dataset": dict(ds.settings), "n_pairs": len(ds)}

problem, cost, lengths = None, None, []
if not senders.strip():
    problem = "Type at least one sender (e.g. head:9.6), or choose a sweep of senders."
elif not receivers.strip():
    problem = "Type at least one receiver (e.g. head:9.6:q), or choose the logits."
elif ABLATIONS[ablation].needs_dataset and on == "pair":
    problem = "Resample draws other prompts from a dataset; one pair has none. Run on a dataset or choose " \
              "another ablation."
if model is not None and pairs is not None and problem is None:
    try:
        lengths = up.lengths_of(model, pairs)
        problem = up.positions_problem(senders, receivers, lengths)
        if problem is None:
            draws = DEFAULT_DRAWS if ABLATIONS[ablation].needs_dataset else 1
            cost = path_cost(model, senders, receivers, lengths, draws)
    except Exception as exc:  # noqa: BLE001 - a bad site or pair: one line, never a traceback
        ui.show_error(exc)
        problem = ""
if problem:
    st.error(ui.md_escape(problem), icon=":material/error:")
if cost is not None:
    m = st.columns(4)
    m[0].metric("Paths", f"{cost['paths']:,}", help="One path per sender (a group of senders is one path).")
    m[1].metric("Pairs", f"{cost['pairs']:,}")
    m[2].metric("Forward rows", f"{cost['forward_rows']:,}",
                help="Two unpatched runs per pair, plus one row per path and pair – two when the receivers "
                     "are inputs of heads or MLPs (their inputs are recorded, then patched).")
    secs = path_seconds(model, cost, lengths)
    m[3].metric("Estimated time", "—" if secs is None else f"~{max(1, secs):.0f} s",
                help="A rough guess from this machine's speed on activation patching.")

busy = ui.job_running(up.SLOT)
if st.button("Run", type="primary", icon=":material/play_arrow:", key="run_paths",
             disabled=busy or problem is not None or pairs is None or (model is not None and cost is None)):
    model = model or ui.get_model()
    if model is not None:
        try:
            if cost is None:  # the model was loaded by this click
                lengths = up.lengths_of(model, pairs)
                cost = path_cost(model, senders, receivers, lengths)
            up.start(model, pairs, senders, receivers, direction, metric, ablation, lengths, cost,
                     {"page": "paths", "model": ss["model"], "senders": senders, "receivers": receivers,
                      "direction": direction, "metric": metric, "ablation": ablation, **settings})
        except Exception as exc:  # noqa: BLE001
            ui.show_error(exc)

ui.job_panel(up.SLOT)
result = ui.result_for(up.SLOT)
if result is not None:
    done = up.describe_settings(result)
    if (done[0], done[2], done[3], done[4]) != (senders, direction, metric, ablation) or \
            (cost is not None and list(done[1]) != list(cost["receivers"] if isinstance(cost["receivers"], list)
                                                         else [cost["receivers"]])):
        st.caption("The settings above changed since this result was computed; press Run to update it.")
    up.show(result, model.components.n_layers if model is not None else None)
