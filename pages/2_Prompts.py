"""Prompts: presets, the IOI builder, custom text; tokens side by side; baseline runs."""
import pandas as pd
import streamlit as st

import ui
from ui import remote as ui_remote
from patchcore import presets
from patchcore.advice import pair_advice, spacing_advice
from patchcore.prompts import check_pair, encode, token_texts

ui.page("Prompts")
ss = st.session_state
FIELDS = ("clean", "corrupted", "answer", "wrong")
CHOICES = {**{k: p.title for k, p in presets.PRESETS.items()},
           "builder": "Build an IOI pair (templates, names, places)", "custom": "My own text"}

st.title("Prompts")
st.caption("A clean prompt, a corrupted prompt that differs in one detail, and the two answers to "
           "compare: the one the clean prompt should give and the one the corrupted prompt pushes towards.")

remote = ui_remote.active()  # connected to NDIF on the Model page: the baseline runs there
model = remote.model if remote else ui.auto_model()
if model is None:
    st.warning(f"Load the model {ui.md_escape(repr(ui.model_label(ss['model'])))} to check the prompts against its tokenizer.",
               icon=":material/memory:")
    if st.button("Load model", type="primary"):
        model = ui.get_model()
tok = model.tokenizer if model is not None else None


def set_pair(pair) -> None:
    for f in FIELDS:
        ss[f] = ss[f"w_{f}"] = getattr(pair, f)


def preset_of_fields() -> str:
    """What the 'Start from' box must say: its choice while the fields still hold it, else the
    preset they hold, or 'My own text'. After an edit the box says so, and choosing the preset
    again fills the fields again."""
    pair, choice = ui.current_pair(), ss.get("w_preset")
    if choice == "custom" or (choice == "builder" and (ss.get("_build_now") or ss.get("_built") == pair)):
        return choice
    if choice in presets.PRESETS and presets.PRESETS[choice].pair == pair:
        return choice
    return next((k for k, p in presets.PRESETS.items() if p.pair == pair), "custom")


def builder_names() -> list[str]:
    return presets.single_token_names(tok) if tok is not None else presets.load_ioi_material()["names"]


def build() -> None:
    """Rebuild the pair from the builder's widgets (a callback: runs before the page)."""
    try:
        set_pair(presets.ioi_pair(ss["w_tpl"], ss["w_io"], ss["w_s"], ss["w_place"], ss["w_obj"],
                                  ss["w_corruption"], pool=builder_names()))
        ss["_built"] = ui.current_pair()
        ss["_builder_error"] = None
    except ValueError as exc:  # e.g. the same name twice: keep the user's text, say why
        ss["_builder_error"] = str(exc)


def on_preset() -> None:
    choice = ss["w_preset"]
    ss["preset"] = choice
    if choice in presets.PRESETS:
        set_pair(presets.PRESETS[choice].pair)
    elif choice == "builder":
        ss["_build_now"] = True  # fill the fields once the builder's widgets exist


ss["preset"] = ss["w_preset"] = preset_of_fields()  # an edit, a fix, a link or Back may have changed the fields
choice = st.selectbox("Start from", list(CHOICES), format_func=CHOICES.get, key="w_preset",
                      on_change=on_preset,
                      help="Pick a ready-made pair, build an IOI pair, or type your own. "
                           "Picking a preset replaces the four fields below.")
if choice in presets.PRESETS:
    st.caption(presets.PRESETS[choice].description)

if choice == "builder":
    names = builder_names()
    data = presets.load_ioi_material()
    templates = presets.ioi_templates()
    defaults = {"w_tpl": templates[5], "w_io": "John" if "John" in names else names[0],
                "w_s": "Mary" if "Mary" in names else names[1], "w_place": data["places"][0],
                "w_obj": data["objects"][0], "w_corruption": "swap"}
    for k, v in defaults.items():  # builder widgets keep their values across page changes
        if k not in ss:
            ss[k] = ss.get("_keep_" + k, v)
        if k in ("w_io", "w_s") and ss[k] not in names:
            ss[k] = v
    with st.container(border=True):
        st.markdown("**IOI builder** – [A] receives the object (the answer), [B] gives it.")
        st.selectbox("Template", templates, key="w_tpl", on_change=build)
        b = st.columns(4)
        b[0].selectbox("Name [A] (answer)", names, key="w_io", on_change=build,
                       help=f"Only names that are a single token for this model's tokenizer "
                            f"({len(names)} of {len(data['names'])}).")
        b[1].selectbox("Name [B] (giver)", names, key="w_s", on_change=build)
        b[2].selectbox("Place", data["places"], key="w_place", on_change=build,
                       disabled="[PLACE]" not in ss["w_tpl"])
        b[3].selectbox("Object", data["objects"], key="w_obj", on_change=build,
                       disabled="[OBJECT]" not in ss["w_tpl"])
        st.radio("Corruption", list(presets.CORRUPTIONS), key="w_corruption", on_change=build,
                 horizontal=True, format_func={"swap": "Name swap", "abc": "ABC (three new names)"}.get,
                 help="\n\n".join(presets.CORRUPTIONS.values()))
        st.caption(presets.CORRUPTIONS[ss["w_corruption"]])
        if ss.get("_builder_error"):
            st.error(ui.md_escape(ss["_builder_error"]), icon=":material/error:")
    for k in defaults:
        ss["_keep_" + k] = ss[k]
    if ss.pop("_build_now", False):
        build()

pair = ui.current_pair()
prepared, issues = check_pair(tok, pair) if tok is not None else (None, [])
by_field = {f: [i.message for i in issues if i.field == f] for f in FIELDS}


def advice() -> list:
    """Warnings from the model's own predictions (an answer without its leading space, a clean
    prompt the model gets wrong), each with its fix; memoised. While another run holds the model
    (or on NDIF) only the spelling check runs: the page never waits for it."""
    if prepared is None:
        return spacing_advice(tok, pair) if tok is not None and not issues else []
    memo = ss.setdefault("_advice", {})
    key = (ui.chosen_spec(), pair)
    if key not in memo:
        if remote or not model.lock.acquire(blocking=False):
            return spacing_advice(tok, pair)
        try:
            memo[key] = pair_advice(model, prepared)
        finally:
            model.lock.release()
        if len(memo) > 50:
            memo.pop(next(iter(memo)))
    return memo[key]


advised = advice()


def field_errors(f: str) -> None:
    for msg in by_field[f]:
        first, _, rest = msg.partition("\n")
        st.error(ui.md_escape(first), icon=":material/error:")
        if rest.strip():
            st.code(rest, language=None)
    for a in [a for a in advised if a.field == f]:
        st.warning(ui.md_escape(a.message), icon=":material/warning:")
        if a.fix is not None:
            fixed = getattr(a.fix, f)
            st.button(f"Use {fixed!r}", key=f"fix_{f}", on_click=set_pair, args=(a.fix,),
                      icon=":material/auto_fix_high:",
                      help="Changes only this field; the rest stays as you typed it.")


WIDGETS = {  # field: (label, help); prompts are text areas, answers text inputs
    "clean": ("Clean prompt", "The prompt where the model gives the behaviour you study."),
    "answer": ("Answer (one token)", "The next token the clean prompt should produce, usually with a "
                                     "leading space, e.g. ' John'."),
    "corrupted": ("Corrupted prompt", "The same prompt with one detail changed; it must have the same "
                                      "number of tokens."),
    "wrong": ("Wrong answer (one token)", "The token the corrupted prompt pushes towards, e.g. ' Mary'."),
}
for column, fields in zip(st.columns(2), (("clean", "answer"), ("corrupted", "wrong"))):
    with column:
        for f in fields:
            label, help_text = WIDGETS[f]
            if f in ("clean", "corrupted"):
                st.text_area(label, height=90, max_chars=ui.MAX_PROMPT_CHARS, **ui.bind(f"w_{f}", f), help=help_text)
            else:
                st.text_input(label, max_chars=ui.MAX_TOKEN_CHARS, **ui.bind(f"w_{f}", f), help=help_text)
            field_errors(f)

if tok is None:
    st.stop()

if pair.clean.strip() and pair.corrupted.strip():
    st.subheader("Tokens")
    clean_t = token_texts(tok, encode(tok, pair.clean))
    corr_t = token_texts(tok, encode(tok, pair.corrupted))
    n = max(len(clean_t), len(corr_t))
    table = pd.DataFrame({
        "clean": [ui.show_token(clean_t[i]) if i < len(clean_t) else "—" for i in range(n)],
        "corrupted": [ui.show_token(corr_t[i]) if i < len(corr_t) else "—" for i in range(n)],
    })
    table["differs"] = [(clean_t[i:i + 1] != corr_t[i:i + 1]) for i in range(n)]
    st.caption(f"Clean: {len(clean_t)} tokens · corrupted: {len(corr_t)} tokens · "
               f"{int(table['differs'].sum())} position(s) differ (highlighted). ␣ marks a space.")
    styled = table[["clean", "corrupted"]].T.style.apply(
        lambda row: ["background-color: #ffe08a" if d else "" for d in table["differs"]], axis=1)
    st.dataframe(styled, width="stretch")

if prepared is None:
    if issues:
        st.info("Fix the highlighted fields above; the baseline runs appear once the pair is valid.",
                icon=":material/info:")
    st.stop()

st.subheader("Baseline")
ids = st.columns(2)
ids[0].markdown(f"Answer {ui.md_escape(repr(pair.answer))} → token id **{prepared.answer_id}**")
ids[1].markdown(f"Wrong answer {ui.md_escape(repr(pair.wrong))} → token id **{prepared.wrong_id}**")
try:
    base = (ui_remote.baseline_panel(remote, prepared, ss["metric"]) if remote else
            ui.baseline(model, prepared, ss["metric"]))
except Exception as exc:  # noqa: BLE001
    ui.show_error(exc)
    st.stop()
if base is None:  # an NDIF baseline runs on request
    st.stop()
mc = st.columns(2)
mc[0].metric(f"Clean {ui.metric_name(ss['metric'])}", f"{base.clean_metric:+.3f}")
mc[1].metric(f"Corrupted {ui.metric_name(ss['metric'])}", f"{base.corrupted_metric:+.3f}")
if base.clean_metric <= base.corrupted_metric:
    st.warning("On this pair the model does not favour the answer more on the clean prompt than on "
               "the corrupted one, so patching results will be hard to read. Try another pair or model.",
               icon=":material/warning:")
for col, name, top in ((mc[0], "clean", base.clean_top), (mc[1], "corrupted", base.corrupted_top)):
    col.caption(f"Top 5 next tokens after the {name} prompt")
    col.dataframe(pd.DataFrame({"token": [ui.show_token(t) for t, _ in top],
                                "probability": [p for _, p in top]}),
                  hide_index=True, width="stretch",
                  column_config={"probability": st.column_config.ProgressColumn(
                      format="%.3f", min_value=0.0, max_value=1.0)})
ui.link("pages/3_Patching.py", "Next: run a patching sweep on this pair")
