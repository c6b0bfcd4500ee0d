"""Fast preview (attribution patching) next to exact patching: how far to trust the estimate.

Under a result on the Patching page: when the session has both an estimate and an exact run of
the same experiment, their agreement (Spearman ρ, top-k overlap); under an estimate, one click
runs the cells it ranks highest exactly.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

import ui
from patchcore.attribution import agreement, agreement_text, check_top_k

K = 10
SLOT = "atp_check"


def _key(r) -> tuple:
    return (r.model, r.pair, r.sweep, r.direction, r.metric)


def _remember(result) -> dict:
    """The latest estimate and exact result of each experiment this session ran."""
    store = st.session_state.setdefault("_atp_compare", {})
    runs = store.setdefault(_key(result), {})
    runs[result.method] = result
    return runs


def panel(result, model) -> None:
    runs = _remember(result)
    estimate, exact = runs.get("atp"), runs.get("exact")
    if estimate is None:
        return
    st.subheader("Fast preview and exact patching")
    if exact is not None:
        rep = agreement(estimate, exact, k=K)
        c = st.columns(3)
        c[0].metric("Spearman ρ", f"{rep['spearman']:.2f}",
                    help="Rank correlation of every cell's effect: 1 = the estimate orders the cells "
                         "exactly as exact patching does.")
        c[1].metric(f"Top-{rep['k']} overlap", f"{rep['top_k_overlap']:.0%}",
                    help=f"Of the {rep['k']} cells with the largest effect, how many both methods pick.")
        c[2].metric("Largest difference", f"{rep['max_abs_diff_normalized']:.2f}",
                    help="The largest gap between the two normalised scores of one cell.")
        st.caption(ui.md_escape(agreement_text(rep)))
    else:
        st.caption("Press Run for exact values of every cell; how well the preview agrees with them "
                   "(Spearman ρ, top-10 overlap) then appears here.")
    if result.method != "atp" or model is None:
        return
    if st.button(f"Check the top {K} cells exactly", key="atp_check_top", icon=":material/fact_check:",
                 disabled=ui.job_running(SLOT) or ui.job_running("patch"),
                 help=f"Runs exact patching on the {K} cells the estimate ranks highest: seconds, "
                      "and it shows where the estimate can be trusted."):
        key = _key(estimate)
        ui.start_job(SLOT, K, lambda progress, cancel, on_wait: (key, check_top_k(
            model, estimate.pair, estimate, K, cancel=cancel, on_wait=on_wait)))
    ui.job_panel(SLOT)
    done = ui.result_for(SLOT)
    if done is None or done[0] != _key(estimate):
        return
    table: pd.DataFrame = done[1]
    worst = float(table["difference"].abs().max())
    st.dataframe(table, hide_index=True, width="stretch", key="atp_check_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("atp", "exact", "atp_normalized", "exact_normalized",
                                          "difference")})
    st.caption(f"The {len(table)} cells the estimate ranks highest, run exactly. Largest gap in "
               f"normalised score: {worst:.2f}"
               + (" – the estimate is close here." if worst < 0.1 else
                  " – read the preview as a rough map and trust the exact values."))
