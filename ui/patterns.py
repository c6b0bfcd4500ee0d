"""Where the heads of a head result look: one head's attention pattern on the clean and the
corrupted prompt side by side, and what the result's strongest heads attend to from the last
token (patchcore.patterns computes it; one forward per layer, kept for the session)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from patchcore.charts import pattern_chart
from patchcore.models import EMBEDDED, EMBEDDED_LABEL
from patchcore.patterns import attends_to, attention_patterns, describe, query_heads, top_heads
from patchcore.prompts import PromptPair, prepare_pair
from patchcore.results import BothResult, DatasetResult
from ui.text import md_escape, show_error, show_token


def identity(r) -> tuple:
    from ui.results import identity as same_result
    return same_result(r)

HEAD_AXES = ("head", "kv_head")
TOP = 5


def _model_for(r, model):
    """The loaded model that made `r`: the one given, the session's, or the embedded one."""
    from ui import model as ui_model
    for m in (model, ui_model.auto_model() if model is None else None):
        if m is not None and getattr(m, "label", None) == r.model:
            return m
    if r.model == EMBEDDED_LABEL:
        return ui_model.get_model((EMBEDDED, "auto", "fp32", "", False), from_link=False)
    return None


def _patterns(model, prepared, layer: int):
    """Memoised per session; None while another run holds the model (the page must not wait)."""
    memo = st.session_state.setdefault("_patterns", {})
    key = (model.label, prepared.pair, layer)
    if key not in memo:
        if not model.lock.acquire(blocking=False):
            return None
        try:
            memo[key] = attention_patterns(model, prepared, layer)
        finally:
            model.lock.release()
        if len(memo) > 64:
            memo.pop(next(iter(memo)))
    return memo[key]


def _pair(r, slot: str) -> PromptPair:
    if not isinstance(r, DatasetResult):
        return r.pair
    pairs = [p for p in r.pairs if {"clean", "corrupted", "answer", "wrong"} <= set(p)][:200]
    if not pairs:
        return r.pair
    k = st.selectbox("Pair", range(len(pairs)), key=f"pat_pair_{slot}",
                     format_func=lambda i: f"{i + 1}: {pairs[i]['clean'][:80]}")
    p = pairs[k]
    return PromptPair(p["clean"], p["corrupted"], p["answer"], p["wrong"])


def panel(result, slot: str, idx, model=None) -> None:
    """Attention patterns for a head in a head result (nothing for other results)."""
    r = result.denoise if isinstance(result, BothResult) else result
    axis = next((a for a in HEAD_AXES if a in r.axes), None)
    if axis is None:
        return
    st.subheader("Where the heads look")
    st.caption("Attention patterns: how much each position (down the side) attends to each earlier "
               "position (along the bottom), on the clean and the corrupted prompt. Red labels: where "
               "the prompts differ.")
    model = _model_for(r, model)
    if model is None:
        st.info(f"Load the model {md_escape(r.model)} on the Model page to see its attention patterns.",
                icon=":material/memory:")
        return
    c = model.components
    tops = top_heads(r, TOP)
    if idx is not None:
        layer, head = idx[0], idx[r.axes.index(axis)]
    elif tops:
        layer, head = tops[0][:2]
    else:
        layer, head = 0, 0
    head = query_heads(r, head, c.n_heads, c.n_kv_heads)[0]
    key = f"_pat_default_{slot}"
    if st.session_state.get(key) != (identity(r), layer, head):   # follow the clicked cell
        st.session_state[key] = (identity(r), layer, head)
        st.session_state[f"pat_layer_{slot}"], st.session_state[f"pat_head_{slot}"] = layer, head
    cols = st.columns([1, 1, 3])
    layer = cols[0].selectbox("Layer", range(c.n_layers), key=f"pat_layer_{slot}")
    head = cols[1].selectbox("Head", range(c.n_heads), key=f"pat_head_{slot}",
                             help="A query head (models with grouped-query attention share key/value "
                                  "heads between several of them).")
    with cols[2]:
        pair = _pair(r, slot)
    try:
        prepared = prepare_pair(model.tokenizer, pair)
        p = _patterns(model, prepared, layer)
    except Exception as exc:  # noqa: BLE001 - a message, never a traceback
        show_error(exc)
        return
    if p is None:
        st.info("The model is busy with a run; the patterns appear once it is free (click any control).",
                icon=":material/hourglass_top:")
        return
    st.text(describe(p, head))
    left, right = st.columns(2)
    for col, name, probs, toks in ((left, "Clean", p.clean, p.clean_tokens),
                                   (right, "Corrupted", p.corrupted, p.corrupted_tokens)):
        with col:
            st.altair_chart(pattern_chart(probs[head], toks, toks, f"{name} prompt: head {layer}.{head}",
                                          prepared.diff_positions), key=f"pattern_{slot}_{name.lower()}")
    if tops:
        _top_table(r, tops, model, prepared, axis)


def _top_table(r, tops, model, prepared, axis: str) -> None:
    """What the result's strongest heads attend to from the last token, in both runs."""
    rows = []
    c = model.components
    for layer, h, eff in tops:
        p = _patterns(model, prepared, layer)
        if p is None:
            return
        for q in query_heads(r, h, c.n_heads, c.n_kv_heads)[:1]:
            (ci, ct, cp), (ki, kt, kp) = attends_to(p.clean[q], p.clean_tokens)[0], \
                attends_to(p.corrupted[q], p.corrupted_tokens)[0]
            rows.append({"head": f"{layer}.{q}" + (f" (key/value head {h})" if axis == "kv_head" else ""),
                         "restored" if r.direction == "denoise" else "destroyed": round(eff, 3),
                         "clean: attends to": f"{show_token(ct)} (position {ci}, {cp:.0%})",
                         "corrupted: attends to": f"{show_token(kt)} (position {ki}, {kp:.0%})"})
    st.caption(f"The {len(rows)} heads this result ranks highest, and the token their last position "
               "attends to most.")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
