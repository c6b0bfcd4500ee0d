"""Landing page: what activation patching is, and a one-click demo on the embedded model."""
import streamlit as st

import ui
from patchcore import DEFAULT_PAIR

ui.page("Home")

DEMO = dict(sweep="layer_pos", direction="denoise", metric="logit_diff")
DEMO_SPEC = (ui.EMBEDDED, "auto", "fp32", "", False)

st.title("Which parts of a language model decide the answer?")
st.markdown(
    "**Activation patching** runs a model on two prompts that differ in one detail – a *clean* one "
    "and a *corrupted* one – and copies the model's internal state from one run into the other, one "
    "piece at a time. If copying a piece brings the clean answer back, that piece carries the "
    "information the model uses. The heatmap shows every piece tried: layers down the side, "
    "words of the prompt along the bottom."
)

with st.container(border=True):
    st.markdown("**The demo question: who gets the milk?**")
    st.text(f"Clean:      {DEFAULT_PAIR.clean} …  (the model should say “{DEFAULT_PAIR.answer.strip()}”)")
    st.text(f"Corrupted:  {DEFAULT_PAIR.corrupted} …  (now “{DEFAULT_PAIR.wrong.strip()}” is right)")
    st.caption("Model: SmolLM2-135M, built in and offline. The demo patches the residual stream at "
               "every layer and every word (denoising: clean into corrupted) – under a minute on a laptop CPU.")
    if st.button("Run demo", type="primary", icon=":material/play_arrow:",
                 disabled=ui.job_running("demo")):
        model = ui.get_model(DEMO_SPEC)
        if model is not None:
            try:
                ui.start_sweep("demo", model, DEFAULT_PAIR, **DEMO)
            except Exception as exc:  # noqa: BLE001
                ui.show_error(exc)

ui.job_panel("demo")
result = ui.result_for("demo")
if result is not None:
    ui.show_result(result, "demo", cell_key="demo_cell")
    st.markdown("**Next:** read the Guide on what the colours mean, try your own sentences on the "
                "Prompts page, or patch other parts of the model on the Patching page.")
else:
    st.caption("New here? The Guide page explains, in plain words, how to read the results.")

cols = st.columns(4)
for col, path in zip(cols, ("pages/1_Model.py", "pages/2_Prompts.py", "pages/3_Patching.py", "pages/9_Guide.py")):
    ui.link(path, where=col)
