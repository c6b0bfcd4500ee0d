"""Model: the embedded model, suggested hub models, any hub id or local path; device and dtype;
or a hub model on NDIF (remote, see ui/remote.py)."""
import pandas as pd
import streamlit as st

import ui
from ui import remote as ui_remote
from patchcore.access import is_loopback, remote_code_allowed, remote_code_rule
from patchcore.models import DTYPES, EMBEDDED, SUGGESTED_HUB_MODELS

ui.page("Model")
ss = st.session_state
OTHER = "__other__"
CHOICES = [EMBEDDED] + SUGGESTED_HUB_MODELS + [OTHER]

st.title("Model")
st.caption("Patching works on any of these; the embedded model is built in and works offline. "
           "Hub models download from huggingface.co the first time (internet needed).")

if ui_remote.where_choice() == "ndif":
    ui_remote.connect_panel()
    st.stop()

# The form's widgets start from the session's model; the session only switches after a successful load.
if "w_model_choice" not in ss:
    ss["w_model_choice"] = ss["model"] if ss["model"] in CHOICES else OTHER
    ss["w_model_other"] = "" if ss["model"] in CHOICES else ss["model"]
    ss["w_device"], ss["w_dtype"], ss["w_revision"] = ss["device"], ss["dtype"], ss["revision"]
    ss["w_trust"] = bool(ss.get("trust_remote_code", False))

choice = st.radio("Model", CHOICES, key="w_model_choice",
                  format_func=lambda c: {EMBEDDED: ui.model_label(EMBEDDED) + "  ← recommended to start",
                                         OTHER: "Another hub id or a local path…"}.get(c, c))
if choice == OTHER:
    st.text_input("Hub id, model folder or .gguf file", key="w_model_other", max_chars=500,
                  placeholder="e.g. openai-community/gpt2 or /data/models/my-model",
                  help="A Hugging Face hub id (owner/name), a folder with a transformers model, or a "
                       "path to a .gguf file on the machine that runs this dashboard.")
name = (ss["w_model_other"].strip() if choice == OTHER else choice)
served_on = ui.server_address()
# trust_remote_code runs the repository's Python code in this server: on a server other machines
# reach, only for the repositories its operator lists (patchcore.access; load_model checks again)
may_trust = remote_code_allowed(name, served_on)
if not may_trust:
    ss["w_trust"] = False
c = st.columns(3)
c[0].selectbox("Device", ui.DEVICES, key="w_device",
               help="auto picks a GPU when there is one, else the CPU.")
c[1].selectbox("Precision (dtype)", list(DTYPES), key="w_dtype",
               help="fp32 is exact and the default; bf16/fp16 halve memory on a GPU.")
with st.expander("Advanced"):
    st.text_input("Revision (branch, tag or commit)", key="w_revision", max_chars=100,
                  help="Only for hub models; empty means the main branch.")
    st.checkbox("Trust remote code", key="w_trust", disabled=not may_trust,
                help="Runs Python code from the model's repository. Only for authors you trust.")
    if not is_loopback(served_on):
        st.caption(ui.md_escape(remote_code_rule(served_on)))
    if ss["w_trust"]:
        st.warning("Trusting remote code runs code from the model's repository on this machine.",
                   icon=":material/gpp_maybe:")

spec = (name, ss["w_device"], ss["w_dtype"], ss["w_revision"].strip(), bool(ss["w_trust"]))
if st.button("Load model", type="primary", icon=":material/download:", disabled=not name):
    model = ui.get_model(spec, from_link=False)  # typed on this page, not from a link
    if model is not None:
        ss["model"], ss["device"], ss["dtype"], ss["revision"] = spec[:4]
        ss["trust_remote_code"] = spec[4]
        ss["_model_from_link"] = False
        ss["_loaded_spec"] = spec
        ui_remote.disconnect()  # the session runs this local model from now on
        ss["cell"] = ""  # a selected cell belongs to the previous model's results
        ui.sync_url()
        st.rerun()  # redraw the sidebar with the new model
elif not name:
    st.caption("Type a hub id or a path to load it.")

st.subheader("Loaded model")
if ui_remote.active():
    st.info(f"This session runs on NDIF ({ui.md_escape(ui_remote.active().hub_id)}). Load a model here "
            "to run locally again.", icon=":material/cloud:")
    st.stop()
model = ui.auto_model()  # the embedded model loads at once (quick once cached); hub models on request
if model is not None:
    facts = model.facts()
    shown = pd.DataFrame({"": list(facts), "value": [f"{v:,}" if isinstance(v, int) else str(v)
                                                     for v in facts.values()]})
    st.dataframe(shown, hide_index=True, width="content")
    st.caption(f"Loaded in {model.load_seconds:.1f} s (shared by everyone using this dashboard).")
else:
    st.info(f"{ui.md_escape(ui.model_label(ss['model']))} is chosen but not loaded yet. Press Load model "
            "(or Run on the Patching page) to load it.", icon=":material/info:")
