"""Circuit: score every edge of the model's graph (EAP, EAP-IG), draw the strongest K, and measure
how much of the behaviour they carry on their own (faithfulness)."""
import streamlit as st

import ui
from ui import circuit as uc
from ui import remote as ui_remote
from ui.circuit_view import show_circuit
from patchcore import DIRECTIONS, METRICS

ui.page("Circuit", ":material/account_tree:")
notices = uc.init_state()
if notices:
    st.warning("Some circuit settings in the link were not valid:\n\n" +
               "\n".join(f"- {ui.md_escape(n)}" for n in notices), icon=":material/link_off:")
ss = st.session_state

st.title("Circuit")
st.caption("Which connections inside the model carry the answer? Score every connection at once, keep "
           "the strongest, and check how much of the behaviour they carry on their own.")
with st.expander("What is a circuit, an edge, faithfulness?", expanded=True):
    st.markdown(
        "- **Nodes** are the parts that write into the model's running sum of information (the "
        "*residual stream*): the input words, every attention head, every MLP. **Logits**, at the "
        "bottom, is where the model reads its answer.\n"
        "- An **edge** is one node's output reaching a later node's input, e.g. head 9.6 → logits. "
        "Its **score** estimates how much the answer's metric would move if only that edge carried "
        "the clean run's value (from the gradient: EAP takes it once, EAP-IG averages it over "
        "several steps between the two prompts, which is more reliable).\n"
        "- A **circuit** is the K edges with the largest scores. **Faithfulness** checks it: run the "
        "model with every other edge switched off (given the corrupted run's value). 1 = the "
        "circuit alone gives the clean behaviour, 0 = it gives none of it.")

remote = ui_remote.active()
if remote:
    st.info("This session is connected to NDIF for single pairs. Circuits need gradients, so they run on "
            f"this machine's model, {ui.md_escape(ui.model_label(ss['model']))}.", icon=":material/cloud_off:")
model = ui.auto_model()
if model is None:
    st.warning(f"The model {ui.md_escape(repr(ui.model_label(ss['model'])))} is not loaded yet. Load it to "
               "build pairs with its tokenizer and to run.", icon=":material/memory:")
    if st.button("Load model", type="primary", key="c_load_model"):
        model = ui.get_model()

# ------------------------------------------------------------------ settings
options = uc.source_options()
if ss["c_pairs"] not in options:
    st.info("The pairs this link names were built in another browser session; using generated IOI "
            "pairs instead.", icon=":material/info:")
    ss["c_pairs"] = "ioi"
c1, c2, c3 = st.columns(3)
source_names = {o: uc.source_label(o) for o in options}
source = c1.radio("Pairs", options, format_func=source_names.get, **ui.bind("w_c_pairs", "c_pairs"),
                  help="Circuits are found over many pairs: the scores are means over them.")
if source == "ioi":
    a, b = c1.columns(2)
    a.number_input("Number of pairs", 1, uc.MAX_PAIRS, **ui.bind("w_c_n", "c_n"),
                   help="More pairs give steadier scores; each pair costs one run of the steps below.")
    b.number_input("Seed", 0, 2**31 - 1, **ui.bind("w_c_seed", "c_seed"),
                   help="The same seed gives the same pairs.")
elif source == "pair":
    p = ui.current_pair()
    c1.text(f"Clean:      {p.clean} → {p.answer!r}\nCorrupted:  {p.corrupted} → {p.wrong!r}")
    c1.page_link("pages/2_Prompts.py", label="Change the prompts", icon=":material/edit_note:")
method = c2.radio("Method", list(uc.METHOD_NAMES), format_func=uc.METHOD_NAMES.get,
                  **ui.bind("w_c_method", "c_method"),
                  help="EAP: one gradient at the base run (fastest). EAP-IG: the gradient averaged over "
                       "steps from the corrupted to the clean input; better where effects saturate.")
if method == "eap-ig":
    c2.number_input("Steps", 1, 100, **ui.bind("w_c_steps", "c_steps"),
                    help="Points on the path between the two inputs; 5 is the usual choice.")
if ui.result_for(uc.SLOT) is None:   # afterwards the slider sits with the result (one widget for K)
    c3.slider("Circuit size K (the strongest edges)", 1, uc.MAX_K, **ui.bind("w_c_k_run", "c_k"),
              help="The circuit whose faithfulness the run reports; you can change K afterwards.")
else:
    c3.caption(f"Circuit size K = {int(ss['c_k']):,}: change it with the slider above the graph.")
with st.expander("More settings: direction, metric, ablation, exact checks, curve"):
    m1, m2, m3 = st.columns(3)
    m1.radio("Direction", list(DIRECTIONS), horizontal=True, **ui.bind("w_c_direction", "direction"),
             format_func={"denoise": "Denoise (clean → corrupted)", "noise": "Noise (corrupted → clean)"}.get,
             help="\n\n".join(ui.md_escape(t) for t in DIRECTIONS.values()))
    m2.selectbox("Metric", list(METRICS), **ui.bind("w_c_metric", "metric"),
                 format_func=lambda m: ui.metric_name(m).capitalize())
    m3.selectbox("Ablation (what a switched-off edge carries)", list(uc.ABLATION_NAMES),
                 format_func=uc.ABLATION_NAMES.get, **ui.bind("w_c_ablation", "c_ablation"),
                 help="Corrupted: the base run's own value (the usual choice). Mean: the mean over the "
                      "pairs' prompts. Zero: nothing.")
    m1.number_input("Check the top edges exactly", 0, uc.MAX_CHECK, **ui.bind("w_c_check", "c_check"),
                    help="Patch each of the strongest edges alone and show the measured change beside "
                         "the estimate (one forward row per edge and pair).")
    m2.number_input("Points of the faithfulness curve", 0, uc.MAX_POINTS, **ui.bind("w_c_points", "c_points"),
                    help="Circuit sizes measured on a log scale from 0 to all edges (plus K).")
uc.sync_url()

# ------------------------------------------------------------------ cost and run
pairs = plan = None
if model is not None:
    try:
        from patchcore.circuit_estimate import estimate_circuit_seconds
        from patchcore.circuit_graph import build_graph
        from patchcore.interventions import prepare_pairs
        graph = build_graph(model)              # Gemma 2/3: refused in one line
        n_edges = len(graph.edges()[0])
        pairs = uc.pairs_for(model, source, int(ss["c_n"]), int(ss["c_seed"]))
        prepared = prepare_pairs(model, pairs)
        settings = uc.settings_now(source)
        est, raw = estimate_circuit_seconds(model, prepared, method, steps=settings.get("steps", 1),
                                            check_top=settings["check_top"], curve_points=settings["curve_points"],
                                            edges=settings["edges"], ablation=settings["ablation"])
        plan = (settings, len(prepared), n_edges, raw)
        m = st.columns(3)
        m[0].metric("Pairs", f"{len(prepared):,}")
        m[1].metric("Edges scored", f"{n_edges:,}", help=f"Every connection of this model's graph: "
                    f"{graph.n_senders:,} senders × the later receivers that read them.")
        m[2].metric("Estimated time", f"~{est:.0f} s" if est < 120 else f"~{est / 60:.0f} min",
                    help="A rough guess from this model's speed here; it improves after each run. Other "
                         "work on the machine slows runs down.")
    except Exception as exc:  # noqa: BLE001 - a refused model or a bad pair: one line
        ui.show_error(exc)
        pairs = plan = None

busy = ui.job_running(uc.SLOT)
if st.button("Find the circuit", type="primary", icon=":material/play_arrow:", key="c_run",
             disabled=busy or (model is not None and plan is None)):
    model = model or ui.get_model()
    if model is not None and plan is not None:
        try:
            uc.start_run(model, pairs, *plan)
        except Exception as exc:  # noqa: BLE001
            ui.show_error(exc)
    elif model is not None:
        st.rerun()   # just loaded: show the cost first

ui.job_panel(uc.SLOT)
run = ui.result_for(uc.SLOT)
if run is not None:
    if run.run_id:
        st.success(f"Stored as run {run.run_id}: reopen it any time on the History page.",
                   icon=":material/history:")
        st.page_link("pages/5_History.py", label=f"Open run {run.run_id} in History", icon=":material/history:",
                     query_params={"run": str(run.run_id)})
    elif run.note:
        st.warning(ui.md_escape(run.note), icon=":material/warning:")
    if plan is not None and {k: v for k, v in run.settings.items() if k != "edges"} != \
            {k: v for k, v in plan[0].items() if k != "edges"}:
        st.caption("The settings above changed since this circuit was found; press the button to update it.")
    try:
        show_circuit(run.result, uc.SLOT, k_key="c_k", sel_key="c_sel", model=model, run_id=run.run_id)
    except Exception as exc:  # noqa: BLE001
        ui.show_error(exc)
    uc.sync_url()
