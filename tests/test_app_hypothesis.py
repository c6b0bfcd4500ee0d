"""AppTest: the hypothesis check under the heatmaps (clicked cells -> chips in the URL, top N,
typed sites, "Test these together" with the engine's numbers, stored in the history, sent to
the Paths page; on a dataset with intervals) and the Patching page's ablation choice."""
from dataclasses import replace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import (ROOT, TIMEOUT, chart_spec, charts, click_chart, errors, isolated_history,  # noqa: F401
                         no_exception, open_app, plain, put_run, run_result, run_to_end, texts, wait_for_job)
from patchcore import DEFAULT_PAIR, run_sweep
from patchcore.history import History
from patchcore.hypothesis import RUN_TITLES, pairs_of, run_check, top_sites
from patchcore.interventions import run_patch
from patchcore.summary import num
from patchcore.sweeps import SWEEPS

pytestmark = pytest.mark.embedded

CHIPS, TYPE, RUN = "w_hyp_chips_patch", "w_hyp_type_patch", "hyp_run_patch"


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def pct(x: float) -> str:
    """A share as the page prints it (never "-0%")."""
    return num(x * 100, ".0f") + "%"


@pytest.fixture(scope="module")
def mlp_session():
    """The Patching page after an MLP sweep of the demo pair (30 patches): one session reused."""
    at = open_app("Patching", sweep="mlp")
    at.button(key="run_patch").click().run()
    wait_for_job(at, "patch")
    no_exception(at)
    return at


def heatmap(at):
    (chart,) = [c for c in charts(at) if "MLP output" in str(chart_spec(c).get("title", ""))]
    return chart


def test_clicked_cells_become_removable_chips_kept_in_the_url(mlp_session):
    at = mlp_session
    assert at.multiselect(key=CHIPS).value == [] and at.button(key=RUN).disabled
    click_chart(at, heatmap(at), {"layer": 0})
    click_chart(at, heatmap(at), {"layer": 17})
    no_exception(at)
    assert at.multiselect(key=CHIPS).value == ["mlp:0", "mlp:17"]
    assert at.query_params["sites"] == "mlp:0,mlp:17"
    at.run()   # a rerun without a new click adds nothing
    assert at.session_state["sites"] == "mlp:0,mlp:17"
    click_chart(at, heatmap(at), {"layer": 0})   # already there: not twice
    assert at.session_state["sites"] == "mlp:0,mlp:17"
    at.multiselect(key=CHIPS).unselect("mlp:0").run()
    assert at.query_params["sites"] == "mlp:17" and at.multiselect(key=CHIPS).value == ["mlp:17"]
    # typed sites join the selection and the field empties; a bad one is one line, the text stays
    at.text_input(key=TYPE).input("mlp:26, head:3.1").run()
    assert at.session_state["sites"] == "mlp:17,mlp:26,head:3.1" and at.text_input(key=TYPE).value == ""
    at.text_input(key=TYPE).input("mlp:99").run()
    assert errors(at) == ["'mlp:99': layer 99 does not exist; this model has layers 0–29."]
    assert at.text_input(key=TYPE).value == "mlp:99" and at.session_state["sites"] == "mlp:17,mlp:26,head:3.1"
    at.text_input(key=TYPE).input("mlp 3").run()
    assert len(errors(at)) == 1 and errors(at)[0].startswith("'mlp 3' is not a site. Write sites as")
    at.text_input(key=TYPE).input("").run()
    assert errors(at) == []
    # top N replaces the selection with the strongest cells; Clear empties it (and the URL)
    result = run_result(at, "patch")
    at.button(key="hyp_top5_patch").click().run()
    assert at.session_state["sites"] == ",".join(top_sites(result, 5)) and top_sites(result, 5)[0] == "mlp:0"
    at.button(key="hyp_clear_patch").click().run()
    assert at.session_state["sites"] == "" and "sites" not in at.query_params


def test_test_these_together_gives_the_engines_three_scores_and_stores_them(mlp_session, embedded):
    at = mlp_session
    at.button(key="hyp_top3_patch").click().run()
    sites = at.session_state["sites"].split(",")
    assert len(sites) == 3
    run_to_end(at, RUN, "hyp_patch")
    result = run_result(at, "patch")
    want = {"sufficiency": run_patch(embedded, result.pair, sites, "denoise"),
            "necessity": run_patch(embedded, result.pair, sites, "noise"),
            "complement": run_patch(embedded, result.pair, sites, "denoise", complement=True)}
    shown = metrics(at)
    for name, res in want.items():
        assert shown[RUN_TITLES[name]] == pct(res.normalized), name
    run = run_result(at, "hyp_patch")
    body = texts(at)
    for name in want:
        assert run.check.reading(name) in body
    assert any(run.check.verdict() == plain(m.value).strip("*") for m in at.markdown)
    # the three runs are in the history, with the sites and which question each answered
    stored = sorted(History().list(kind="patch"), key=lambda r: r.id)
    assert len(stored) == 3
    for rec, name in zip(stored, ["sufficiency", "necessity", "complement"]):
        full = History().get(rec.id)
        assert full.settings["check"] == name and full.settings["sites"] == sites
        assert full.open().value == pytest.approx(want[name].value, abs=1e-4)
    assert any(f"sufficiency {stored[0].id}" in plain(c.value) for c in at.caption)
    # a changed selection says the scores are stale
    at.multiselect(key=CHIPS).unselect(sites[-1]).run()
    assert any("selection changed since this check" in c.value for c in at.caption)


def test_a_stored_check_opens_on_the_history_page(mlp_session):
    at = mlp_session
    if not History().list(kind="patch"):
        at.button(key="hyp_top3_patch").click().run()
        at.button(key=RUN).click().run()
        wait_for_job(at, "hyp_patch")
    rec = History().list(kind="patch")[0]
    hist = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    hist.query_params["run"] = str(rec.id)
    hist.switch_page("pages/5_History.py").run()
    no_exception(hist)
    assert errors(hist) == []
    assert metrics(hist)["Normalised score"] == num(History().get(rec.id).open().normalized, ".3f")
    assert any(t.startswith("• Patched ") and "together" in t for t in texts(hist))


def test_send_the_selection_to_the_paths_page(mlp_session):
    at = mlp_session
    at.session_state["sites"] = "mlp:0,resid:3@2,head:23.3"
    at.run()
    at.button(key="hyp_paths_patch").click().run()
    no_exception(at)
    assert at.title[0].value == "Paths"
    assert at.session_state["senders"] == "mlp:0,head:23.3"
    assert at.radio(key="w_paths_smode").value == "list"
    assert at.text_input(key="w_paths_slist").value == "mlp:0,head:23.3"
    assert any("left out (paths start from heads and MLPs): resid:3@2" in i.value.replace("\\", "") for i in at.info)
    assert at.query_params["senders"] == "mlp:0,head:23.3"
    at.switch_page("pages/3_Patching.py").run()   # back: the selection is still there
    assert at.session_state["sites"] == "mlp:0,resid:3@2,head:23.3"


def test_a_link_carries_the_selection_and_bad_sites_fall_back():
    at = open_app("Patching", sites="head:23.3,mlp:0")
    no_exception(at)
    assert at.session_state["sites"] == "head:23.3,mlp:0" and at.query_params["sites"] == "head:23.3,mlp:0"
    at = open_app("Patching", sites="head:23.3,resid:x")
    assert at.session_state["sites"] == "" and "sites" not in at.query_params
    assert any("'sites'" in plain(w.value) and "'resid:x' is not a site" in plain(w.value) for w in at.warning)
    at = open_app("Patching", sites="mlp:1,mlp:1")
    assert any("listed twice" in plain(w.value) for w in at.warning)


def test_patching_page_offers_the_ablations_with_their_caveats():
    at = open_app("Patching", sweep="head_k")
    assert SWEEPS["head_k"].help in [c.value for c in at.caption]   # the new sweeps explain themselves
    box = at.selectbox(key="w_ablation")
    assert box.options == ["Other prompt", "Zero", "Mean", "Resample"] and box.value == "corrupted"
    box.select("zero").run()
    assert at.query_params["ablation"] == "zero"
    assert any("off the distribution" in w.value for w in at.warning)
    assert not at.button(key="run_patch").disabled and at.button(key="preview_patch").disabled
    at.selectbox(key="w_ablation").select("mean").run()
    assert any("reference set" in w.value for w in at.warning)
    at.selectbox(key="w_ablation").select("resample").run()
    assert at.button(key="run_patch").disabled
    assert any("one pair has none" in e for e in errors(at))
    at = open_app("Patching", ablation="sideways")
    assert at.selectbox(key="w_ablation").value == "corrupted" and "ablation" not in at.query_params


def test_the_chosen_ablation_is_what_the_sweep_writes(embedded):
    at = open_app("Patching", sweep="mlp", ablation="zero")
    at.button(key="run_patch").click().run()
    wait_for_job(at, "patch")
    no_exception(at)
    result = run_result(at, "patch")
    assert result.ablation == "zero"
    from patchcore import run_sweep
    np.testing.assert_allclose(result.values, run_sweep(embedded, result.pair, "mlp", ablation="zero").values,
                               atol=1e-4)
    assert any(c.value.startswith("Ablation: Zero. Zero ablation moves") for c in at.caption)   # with the result
    assert "ablation: zero" in str(chart_spec(heatmap(at))["title"]["subtitle"])


@pytest.mark.timeout(1800)
def test_on_a_dataset_the_check_runs_on_its_pairs_with_intervals(embedded, single_thread):
    at = open_app()
    at.switch_page("pages/4_Datasets.py").run()
    at.number_input(key="w_ds_n").set_value(4).run()
    at.selectbox(key="w_ds_sweep").select("mlp").run()
    at.radio(key="w_ds_directions").set_value("denoise").run()
    at.button(key="ds_run").click().run()
    wait_for_job(at, "dataset")
    no_exception(at)
    res = run_result(at, "dataset").result
    (chart,) = [c for c in charts(at) if "mean of 4 pairs" in str(chart_spec(c).get("title", ""))]
    click_chart(at, chart, {"layer": 0})
    (chart,) = [c for c in charts(at) if "mean of 4 pairs" in str(chart_spec(c).get("title", ""))]
    click_chart(at, chart, {"layer": 5})
    assert at.session_state["sites"] == "mlp:0,mlp:5"
    at.button(key="hyp_run_dataset").click().run()
    wait_for_job(at, "hyp_dataset")
    no_exception(at)
    assert errors(at) == []
    want = run_check(embedded, pairs_of(res), ["mlp:0", "mlp:5"], res.metric, n_boot=res.n_boot, seed=res.boot_seed)
    assert len(pairs_of(res)) == 4 == want.n_pairs
    shown = metrics(at)
    captions = [c.value for c in at.caption]
    for name in ("sufficiency", "necessity", "complement"):
        assert shown[RUN_TITLES[name]] == pct(getattr(want, name).normalized)
        lo, hi = want.interval(name)
        assert f"95% interval: {pct(lo)} to {pct(hi)} (4 pairs)" in captions
    # a result lined up by IOI role (a per-position sweep's): a site with a position is refused
    put_run(at, "dataset", replace(run_result(at, "dataset"), result=replace(res, aligned_by="role")))
    at.text_input(key="w_hyp_type_dataset").input("resid:3@2").run()
    assert at.button(key="hyp_run_dataset").disabled
    assert any("lined up by role" in plain(w.value) for w in at.warning)
    at.multiselect(key="w_hyp_chips_dataset").unselect("resid:3@2").run()
    assert not at.button(key="hyp_run_dataset").disabled


def test_a_stored_runs_strings_stay_text_in_the_check(tiny, isolated_history):  # noqa: F811
    """A run file's model name (an image link) is shown as text in the check's notices, and a
    stored site set from such a file too (History)."""
    from patchcore.results import result_from_json
    from test_app_stored_strings import EVIL, HOSTILE, assert_all_text, hostile_json

    model = tiny("gpt2")
    result = result_from_json(hostile_json(run_sweep(model, DEFAULT_PAIR, "head")))
    at = open_app(sites="head:1.2")
    put_run(at, "patch", result)
    at.switch_page("pages/3_Patching.py").run()
    no_exception(at)
    shown = assert_all_text(at)
    assert f"This result comes from {HOSTILE['model']}" in shown     # the check cannot run here
    assert at.button(key=RUN).disabled
    group = run_patch(model, DEFAULT_PAIR, ["head:1.2", "mlp:0"])
    stored = History(isolated_history).save(result_from_json({**group.to_json(), **HOSTILE,
                                                              "metric": f"![x]({EVIL}/m.png)"}), source="test")
    hist = open_app(run=str(stored))
    hist.switch_page("pages/5_History.py").run()
    no_exception(hist)
    shown = assert_all_text(hist)
    assert f"![x]({EVIL}/m.png)" in shown and errors(hist) == []
