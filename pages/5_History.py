"""History: every stored run – list, search, reopen, compare two runs, delete, export and import."""
import json

import pandas as pd
import streamlit as st

import ui
from ui.state import VIEWS
from patchcore.compare import compare
from patchcore.dataset_charts import difference_heatmap
from patchcore.results import BothResult, PatchSetResult
from patchcore.history import History
from patchcore.summary import metric_words
from patchcore.sweeps import SWEEPS

ui.page("History")
ss = st.session_state
SLOT = "hist"
KIND_NAMES = {"single": "one pair", "dataset": "dataset", "both": "dataset, both directions",
              "circuit": "circuit"}

st.title("History")
history = History()
st.caption("Every run from the dashboard and the command line is kept here (unless it was run with "
           "--no-history). Reopen one, compare two, export one as a file to share, or import a file "
           "someone sent you.")


def title_of(info) -> str:
    """A run's title in words: what was patched, which way, with which metric, on what."""
    stored = f"{info.sweep} {info.direction} – "   # patchcore.history's own title (not a renamed one)
    if info.sweep not in SWEEPS or info.kind not in KIND_NAMES or not info.title.startswith(stored):
        return info.title
    way = {"denoise": "denoising", "noise": "noising", "both": "both directions"}.get(info.direction)
    return f"{SWEEPS[info.sweep].title}, {way}, {metric_words(info.metric)} – {info.title[len(stored):]}"


def run_label(info) -> str:
    return f"#{info.id} · {info.created.replace('T', ' ')[:16]} · {title_of(info)}"


def open_run(run_id) -> None:
    ss["hist_open"] = run_id
    ss.pop("hist_cell", None)


# ---------------------------------------------------------------- import
with st.expander("Import a run from a JSON file"):
    up = st.file_uploader("Run file (JSON)", type=["json"], key="hist_import",
                          help="A file exported from the History page or with `patchcore runs export ID`, "
                               "or the JSON that `patchcore sweep --json` writes.")
    if up is not None and ss.get("_hist_imported") != up.file_id:
        try:
            new_id = history.import_json(up.getvalue())
            ss["_hist_imported"] = up.file_id
            ss["_hist_import_msg"] = f"Imported as run {new_id}."
            open_run(new_id)
        except Exception as exc:  # noqa: BLE001 - a bad file: a message, never a traceback
            ui.show_error(exc)
    if ss.get("_hist_import_msg"):
        st.success(ss["_hist_import_msg"], icon=":material/upload_file:")

# ---------------------------------------------------------------- list and search
search = st.text_input("Search runs", key="hist_search",
                       placeholder="a model, sweep, direction, 'IOI', a file name, a run number…")
try:
    runs = history.list(search, limit=500)
    total = history.count()
except Exception as exc:  # noqa: BLE001
    ui.show_error(exc)
    st.stop()

if "hist_open" not in ss:  # a shared link: ?run=ID opens that run
    raw = st.query_params.get("run", "")
    ss["hist_open"] = int(raw) if raw.isdigit() else None

if not total:
    st.info("No stored runs yet. Runs from the Datasets and Patching pages and from `patchcore sweep` "
            "appear here.", icon=":material/history:")
elif not runs:
    st.info(f"No run matches {ui.md_escape(repr(search))}. Clear the search to see all {total} runs.", icon=":material/search:")
else:
    st.caption(f"{len(runs)} of {total} runs" + (" match the search" if search else "") + ", newest first.")
    table = pd.DataFrame([{"id": r.id, "created (UTC)": r.created.replace("T", " ")[:16], "title": title_of(r),
                           "kind": KIND_NAMES.get(r.kind, r.kind), "pairs": r.n_pairs, "model": r.model,
                           "metric": metric_words(r.metric), "seconds": round(r.seconds, 1), "from": r.source}
                          for r in runs])
    # columns sized to what they hold: the title (what was run) gets the room
    st.dataframe(table, hide_index=True, width="stretch", key="hist_table", column_config={
        "id": st.column_config.NumberColumn(width=50), "created (UTC)": st.column_config.TextColumn(width=130),
        "title": st.column_config.TextColumn(width="large"), "kind": st.column_config.TextColumn(width=150),
        "pairs": st.column_config.NumberColumn(width=55), "model": st.column_config.TextColumn(width="medium"),
        "metric": st.column_config.TextColumn(width=190), "seconds": st.column_config.NumberColumn(width=70),
        "from": st.column_config.TextColumn(width=90)})

options = [r.id for r in runs]
by_id = {r.id: r for r in runs}
current = ss.get("hist_open")
if current is not None and current not in by_id:
    try:  # opened by link or import but filtered out by the search: still selectable
        rec0 = history.get(current)
        by_id[current] = rec0
        options = [current] + options
    except Exception:  # noqa: BLE001 - a stale or bad id: open nothing, say so
        st.warning(f"Run {current} does not exist (deleted, or a link from another computer).",
                   icon=":material/link_off:")
        ss["hist_open"] = current = None
if options:
    choice = st.selectbox("Open run", [None] + options, index=([None] + options).index(current),
                          format_func=lambda i: "— choose a run —" if i is None else run_label(by_id[i]),
                          key=f"hist_open_select_{current}")
    if choice != current:
        open_run(choice)
        st.rerun()

if current is None:
    if "run" in st.query_params:
        del st.query_params["run"]
    st.stop()
st.query_params["run"] = str(current)

# ---------------------------------------------------------------- one run
try:
    rec = history.get(current)
    result = rec.open()
except Exception as exc:  # noqa: BLE001
    ui.show_error(exc)
    st.stop()

st.subheader(f"Run {rec.id}")
st.text(title_of(rec))
# every stored string is shown as text: an imported file's strings are not Markdown (no links or images)
st.caption(f"created {ui.md_escape(rec.created)} · from {ui.md_escape(rec.source)} · "
           f"{ui.md_escape(KIND_NAMES.get(rec.kind, rec.kind))} · "
           f"{rec.n_pairs} pair{'s' if rec.n_pairs != 1 else ''} · {rec.seconds:.1f} s")
with st.expander("Settings and timings"):
    st.json({"settings": rec.settings, "timings": rec.timings}, expanded=True)

actions = st.columns([1, 1, 4])
actions[0].download_button("Export JSON", json.dumps(rec.to_export(), indent=1),
                           f"patchcore_run_{rec.id}.json", "application/json", key="hist_export",
                           icon=":material/download:")
if actions[1].button("Delete run", key="hist_delete", icon=":material/delete:"):
    ss["hist_confirm_delete"] = rec.id
if ss.get("hist_confirm_delete") == rec.id:
    st.warning(f"Delete run {rec.id} for good? Export it first if you may want it back.",
               icon=":material/delete_forever:")
    c = st.columns([1, 1, 4])
    if c[0].button("Yes, delete it", key="hist_delete_confirm", type="primary"):
        try:
            history.delete(rec.id)
            ss.pop("hist_confirm_delete", None)
            open_run(None)
            st.rerun()
        except Exception as exc:  # noqa: BLE001
            ui.show_error(exc)
    if c[1].button("Keep it", key="hist_delete_cancel"):
        ss.pop("hist_confirm_delete", None)
        st.rerun()

tab_result, tab_compare = st.tabs(["Result", "Compare with another run"])
with tab_result:
    try:
        if getattr(result, "kind", "") == "circuit":  # the Circuit page's viewer (ui/circuit_view.py)
            from ui.circuit_view import show_circuit
            show_circuit(result, f"{SLOT}{rec.id}", model=ui.auto_model() if ui.is_loaded() else None,
                         run_id=rec.id)
        elif isinstance(result, PatchSetResult):  # sites together, a hypothesis check's run, a path group
            from ui.paths import show_set
            show_set(result, SLOT)
        else:  # single pairs and datasets: the one result viewer
            ui.show_result(result, SLOT, cell_key="hist_cell", run_id=rec.id)
    except Exception as exc:  # noqa: BLE001
        ui.show_error(exc)

with tab_compare:
    others = [i for i in options if i != rec.id]
    if getattr(result, "kind", "") == "circuit":
        st.info("Comparing is for patching runs. To compare two circuits, open each one.",
                icon=":material/compare:")
    elif not others:
        st.info("There is no other run to compare with" + (" (clear the search to see all runs)." if search
                                                          else "."), icon=":material/compare:")
    else:
        st.caption("Run A is the open run; run B is the one you pick. The heatmap shows A − B per cell. "
                   "Both runs need the same sweep and table shape; IOI datasets, and a single IOI pair beside "
                   "an IOI dataset, are matched by role (S1, IO, S2, END).")
        c = st.columns(3)
        other = c[0].selectbox("Run B", [None] + others, key="hist_compare",
                               format_func=lambda i: "— choose a run —" if i is None else run_label(by_id[i]))
        value = c[1].segmented_control("Compare", ["normalized", "value"], default="normalized",
                                       format_func=VIEWS.get, key="hist_compare_value") or "normalized"
        needs_dir = isinstance(result, BothResult) or (other is not None and by_id[other].kind == "both")
        direction = c[2].radio("Direction", ["denoise", "noise"], horizontal=True, key="hist_compare_dir",
                               help="For runs with both directions: which one to compare.") if needs_dir else None
        if other is None:
            st.caption("Pick run B to see the difference.")
        else:
            try:
                other_result = history.get(other).open()
                comp = compare(result, other_result, value=value, direction=direction)
                for note in comp.notes:
                    st.info(ui.md_escape(note), icon=":material/info:")
                head = position = None
                if len(comp.a.axes) == 3:
                    head = st.selectbox("Head", range(comp.a.n_heads), key="hist_compare_head")
                st.altair_chart(difference_heatmap(comp, head, position), key="hist_diff_chart")
                st.caption(f"Largest difference: {comp.max_abs_diff:.3f}. Red: run A is higher; "
                           f"blue: run B is higher.")
            except Exception as exc:  # noqa: BLE001 - different shapes etc.: a message
                ui.show_error(exc)
