"""AppTest: time estimates never make a page wait, and after the first run on a machine they are
within ±50% of what runs take (issue 16, point 4: ~51 s shown for a 3 s sweep, 15 s to open
Patching)."""
import re
import threading
import time

import pytest

from app_helpers import no_exception, open_app, run_result, wait_for_job
from patchcore import estimate, machine_cache
from patchcore.backends import hooks
from patchcore.planner import CALIBRATED_COSTS
from patchcore.presets import PRESETS

pytestmark = pytest.mark.embedded

CAPITAL = PRESETS["capital"].pair
PAIR = dict(clean=CAPITAL.clean, corrupted=CAPITAL.corrupted, answer=CAPITAL.answer, wrong=CAPITAL.wrong)


@pytest.fixture
def new_machine(tmp_path, monkeypatch):
    """The dashboard's embedded model as on a machine that never ran it: nothing calibrated,
    checked or learnt."""
    from ui.model import _cached_model
    monkeypatch.setenv("PATCHCORE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PATCHCORE_HISTORY_DB", raising=False)
    model = _cached_model("embedded", "auto", "fp32", "", False)   # the one the pages use

    def forget():
        machine_cache.forget()
        for table in (estimate._CALIBRATIONS, estimate._ESTIMATES, hooks._SUPPORT, CALIBRATED_COSTS):
            table.pop(model.hf, None)
        estimate._STARTED.discard(model.hf)
    forget()
    yield model
    for t in threading.enumerate():   # the background calibration ends before the next test
        if t.name == "patchcore-calibrate":
            t.join(timeout=120)
    forget()


def shown_estimate(at) -> float:
    text = {m.label: m.value for m in at.metric}["Estimated time"]
    m = re.fullmatch(r"~(\d+) (s|min)", text)
    assert m, text
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_opening_patching_runs_no_forward_for_the_estimate(new_machine):
    """The first estimate on a new machine used to time the model (and check shortcuts) while
    the page waited; now the page guesses and the timing happens on a background thread."""
    calls = []
    hook = new_machine.hf.register_forward_pre_hook(lambda *a: calls.append(threading.current_thread().name))
    try:
        t0 = time.perf_counter()
        at = open_app("Patching", **PAIR)
        took = time.perf_counter() - t0
    finally:
        hook.remove()
    no_exception(at)
    assert shown_estimate(at) > 0
    on_the_page = [name for name in calls if name != "patchcore-calibrate"]
    assert on_the_page == [], f"{len(on_the_page)} forwards while the page waited ({took:.1f} s)"


def run_and_estimate(at, slot: str, button: str):
    at.button(key=button).click().run()
    wait_for_job(at, slot)
    no_exception(at)
    return run_result(at, slot), shown_estimate(at)


def timing_off(model, factor: float) -> None:
    """As on the machine of issue 16 (~51 s shown for a 3 s sweep): the model's timing says
    `factor` times what sweeps really take."""
    for t in threading.enumerate():
        if t.name == "patchcore-calibrate":
            t.join(timeout=120)
    cal = estimate.calibrate(model)
    estimate._CALIBRATIONS[model.hf] = estimate.Calibration(cal.unit_s * factor)


def test_after_the_first_run_the_estimate_is_within_half_of_the_actual_time(new_machine):
    at = open_app("Patching", **PAIR)            # layer × position, 240 patches
    timing_off(new_machine, 15)
    at.run()
    before = shown_estimate(at)
    first, after_first = run_and_estimate(at, "patch", "run_patch")
    assert before > 5 * first.seconds, (before, first.seconds)   # far off before any run here
    assert abs(after_first - first.seconds) <= 0.5 * first.seconds + 0.5, (after_first, first.seconds)
    second, _ = run_and_estimate(at, "patch", "run_patch")
    assert abs(after_first - second.seconds) <= 0.5 * second.seconds + 0.5, (after_first, second.seconds)
    assert machine_cache.get("estimates", machine_cache.model_key(new_machine, "sweep")) is not None


def test_dataset_estimates_learn_from_dataset_runs(new_machine):
    at = open_app("Patching")
    at.switch_page("pages/4_Datasets.py").run()
    at.number_input(key="w_ds_n").set_value(3).run()
    at.radio(key="w_ds_directions").set_value("denoise").run()
    at.selectbox(key="w_ds_sweep").select("layer").run()
    no_exception(at)
    timing_off(new_machine, 15)
    run, after = run_and_estimate(at, "dataset", "ds_run")
    assert abs(after - run.result.seconds) <= 0.5 * run.result.seconds + 0.5, (after, run.result.seconds)
    assert machine_cache.get("estimates", machine_cache.model_key(new_machine, "dataset")) is not None
