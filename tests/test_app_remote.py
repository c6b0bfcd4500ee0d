"""AppTest: running on NDIF from the dashboard (Model page → Connect, Patching and Prompts runs).

The simulated mode (PATCHCORE_NDIF_MODE=local: nnsight's remote="local" dry run, every request
serialised, run in-process with local modules hidden as on NDIF, and deserialised) runs real
sweeps on a tiny llama saved to a folder; the numbers must equal the plain local run.
The real mode is driven up to the network boundary: no key, a closed port as NDIF, a small
HTTP server on 127.0.0.1 playing NDIF (tests/test_remote.py's FakeNDIF), and a hub cache
folder holding a tiny model's config and tokenizer (the hub itself is not reachable here).
"""
from __future__ import annotations

import copy
import json
import logging
import time

import numpy as np
import pytest

from app_helpers import (chart_data, charts, errors, isolated_history, no_exception,  # noqa: F401
                         open_app, plain, run_job, run_result, wait_for_job)
from patchcore import ModelSpec, PromptPair, load_model, run_sweep
from patchcore.history import History
from patchcore.backends.ndif import NDIF_KEY_URL, ndif_host
from test_remote import FakeNDIF, _closed_port
from tiny import build_hf, embedded_tokenizer

# 8 tokens of the tiny models' (the embedded model's) tokenizer, one differing position
PAIR = PromptPair(clean="Mary and John met, and John thanked",
                  corrupted="Mary and John met, and Mary thanked", answer=" Mary", wrong=" John")
PAIR_PARAMS = dict(clean=PAIR.clean, corrupted=PAIR.corrupted, answer=PAIR.answer, wrong=PAIR.wrong)
FAKE_KEY = "sk-ndif-FAKE-7f3a9c1e5b"
HUB_MODEL = "org/tiny-gpt2"  # the hub id FakeNDIF serves; its config and tokenizer sit in a fake hub cache


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny llama saved like any transformers model folder (weights, config, tokenizer)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_hf("llama").save_pretrained(folder)
    embedded_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def no_env_key(monkeypatch):
    """No key anywhere: not in NDIF_API_KEY, not in nnsight's config."""
    from nnsight import CONFIG
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)


@pytest.fixture
def simulated(monkeypatch, no_env_key):
    monkeypatch.setenv("PATCHCORE_NDIF_MODE", "local")


@pytest.fixture
def real_ndif(monkeypatch, no_env_key):
    monkeypatch.delenv("PATCHCORE_NDIF_MODE", raising=False)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The hub cache as huggingface_hub lays it out, holding HUB_MODEL's config and tokenizer;
    nnsight's canonical id for it pinned (both would come from huggingface.co)."""
    import huggingface_hub.constants as hc
    import nnsight.modeling.huggingface as hfmod

    repo = tmp_path / "hub" / ("models--" + HUB_MODEL.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    build_hf("gpt2").config.save_pretrained(snap)
    embedded_tokenizer().save_pretrained(snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setitem(hfmod._ID_CACHE, HUB_MODEL, HUB_MODEL)


@pytest.fixture
def fake_ndif(monkeypatch):
    servers = []

    def start(mode):
        servers.append(FakeNDIF(mode))
        monkeypatch.setenv("NDIF_HOST", servers[-1].url)
        return servers[-1]
    yield start
    for s in servers:
        s.close()


# ---------------------------------------------------------------- helpers

def sidebar_text(at) -> str:
    return " ".join(str(e.value) for e in list(at.sidebar.markdown) + list(at.sidebar.caption))


def all_text(at) -> str:
    """Every piece of text the page shows, main area and sidebar (widget values excluded)."""
    kinds = ("markdown", "caption", "text", "error", "info", "warning", "success", "code", "exception",
             "metric", "title", "subheader")
    out = []
    for kind in kinds:
        for e in at.get(kind):
            out.append(str(getattr(e, "value", "")))
            out.append(str(getattr(e, "label", "")))
    for p in at.get("progress"):
        out.append(p.proto.text)
    return "\n".join(out)


def connect(at, model: str, key: str | None = None):
    """Model page: choose NDIF, type the hub id (and key), press Connect."""
    at.radio(key="w_run_where").set_value("ndif").run()
    at.text_input(key="w_ndif_model").input(model)
    if key is not None:
        at.text_input(key="w_ndif_key").input(key)
    at.run()
    at.button(key="ndif_connect").click().run()
    no_exception(at)
    return at


def to_page(at, page: str):
    at.switch_page(page)
    at.run()
    no_exception(at)
    return at


def wait_until(predicate, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.1)


# ---------------------------------------------------------------- simulated NDIF: real sweeps

def test_simulated_ndif_sweep_equals_the_local_run(simulated, tiny_folder, single_thread, isolated_history):
    at = open_app("Model", **PAIR_PARAMS)
    no_exception(at)
    at.radio(key="w_run_where").set_value("ndif").run()
    assert any("Simulated NDIF" in i.value for i in at.info)
    assert at.text_input(key="w_ndif_key").disabled  # no key in the dry run
    connect(at, str(tiny_folder))
    assert errors(at) == []
    remote = at.session_state["_remote"]
    assert remote.simulated and remote.hub_id == str(tiny_folder)
    assert "NDIF (remote)" in sidebar_text(at) and "simulated" in sidebar_text(at)
    facts = dict(zip(at.dataframe[0].value.iloc[:, 0], at.dataframe[0].value["value"]))
    assert facts["layers"] == "3" and facts["device"].startswith("NDIF (remote)")

    to_page(at, "pages/3_Patching.py")
    assert "NDIF (remote)" in sidebar_text(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Patches"] == str(3 * 8) and metrics["NDIF requests"] == "2"
    assert metrics["Runs on"] == "simulated NDIF"
    assert at.button(key="preview_patch").disabled  # attribution needs a local model
    at.button(key="run_patch").click().run()
    no_exception(at)
    wait_for_job(at, "patch")
    no_exception(at)
    assert errors(at) == []

    result = run_result(at, "patch")
    # the simulated dry run is an nnsight run that never left this machine: backend "nnsight"
    # (a run on the real NDIF says "remote"); the device says where it went
    assert result.backend == "nnsight" and result.device.startswith("NDIF (simulated")
    assert "simulated NDIF" in result.model
    ref = run_sweep(load_model(ModelSpec(name=str(tiny_folder))), PAIR, "layer_pos", "denoise")
    assert np.abs(ref.values - ref.corrupted_metric).max() > 1e-3  # the patches move the metric
    (chart,) = charts(at)
    data = chart_data(chart).sort_values(["layer", "position"])
    assert len(data) == ref.values.size == 3 * 8
    np.testing.assert_allclose(data["value"].to_numpy(), ref.values.reshape(-1), atol=1e-4, rtol=0)
    np.testing.assert_allclose(data["normalized"].to_numpy(), ref.normalized.reshape(-1), atol=1e-4, rtol=0)
    assert result.clean_metric == pytest.approx(ref.clean_metric, abs=1e-4)
    assert result.corrupted_metric == pytest.approx(ref.corrupted_metric, abs=1e-4)
    # what the job reported on the way (status callback), under the result
    n_sent = 3 * (8 - min(result.diff_positions))  # cells before the first difference are not sent
    assert f"Simulated NDIF, 2 requests: baseline SENDING → COMPLETED; {n_sent} patches SENDING → COMPLETED." \
        in [plain(c.value) for c in at.caption]

    (info,) = History(isolated_history).list()
    rec = History(isolated_history).get(info.id)
    assert rec.settings["remote"] is True and rec.settings["ndif"] == "simulated"
    assert rec.settings["model"] == str(tiny_folder) and rec.result["backend"] == "nnsight"

    # the Prompts page runs its baseline through the same connection, on request
    to_page(at, "pages/2_Prompts.py")
    assert not any(m.label.startswith("Clean") for m in at.metric)
    at.button(key="ndif_run_baseline").click().run()
    wait_for_job(at, "ndif_baseline")
    no_exception(at)
    assert errors(at) == []
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Clean logit difference"] == f"{ref.clean_metric:+.3f}"
    assert metrics["Corrupted logit difference"] == f"{ref.corrupted_metric:+.3f}"

    # loading a local model ends the NDIF connection
    to_page(at, "pages/1_Model.py")
    at.radio(key="w_run_where").set_value("local").run()
    at.button[0].click().run()  # Load model (the embedded one)
    no_exception(at)
    assert "_remote" not in at.session_state and "NDIF" not in sidebar_text(at)


# ---------------------------------------------------------------- the real NDIF: messages

def test_no_key_gives_the_key_message_and_keeps_the_inputs(real_ndif):
    at = open_app("Model")
    at.radio(key="w_run_where").set_value("ndif").run()
    assert at.text_input(key="w_ndif_model").value == "meta-llama/Llama-3.1-8B"  # the suggestion
    assert any(NDIF_KEY_URL in plain(c.value) for c in at.caption)  # where to get a key
    at.text_input(key="w_ndif_revision").input("main").run()
    at.button(key="ndif_connect").click().run()
    no_exception(at)
    (msg,) = errors(at)
    assert "needs an API key" in msg and NDIF_KEY_URL in msg and "NDIF_API_KEY" in msg
    assert at.text_input(key="w_ndif_model").value == "meta-llama/Llama-3.1-8B"
    assert at.text_input(key="w_ndif_revision").value == "main"
    assert at.radio(key="w_run_where").value == "ndif"
    assert "_remote" not in at.session_state and at.session_state["model"] == "embedded"
    # a file path is not a hub id on the real NDIF
    at.text_input(key="w_ndif_model").input("/data/models/llama").run()
    at.button(key="ndif_connect").click().run()
    (msg,) = errors(at)
    assert "hub id" in msg and "not a file path" in msg


def test_network_down_model_not_served_and_hub_unreachable(real_ndif, monkeypatch):
    at = open_app("Model")
    at.radio(key="w_run_where").set_value("ndif").run()
    at.text_input(key="w_ndif_key").input(FAKE_KEY).run()

    monkeypatch.setenv("NDIF_HOST", f"http://127.0.0.1:{_closed_port()}")
    at.button(key="ndif_connect").click().run()
    no_exception(at)
    (msg,) = errors(at)
    assert "Could not reach NDIF" in msg

    status = FakeNDIF("status", served=["meta-llama/Llama-3.1-70B", "patchcore-tests/no-such-model-xyz"])
    try:
        monkeypatch.setenv("NDIF_HOST", status.url)
        at.button(key="ndif_connect").click().run()  # the 8B is not in the list
        (msg,) = errors(at)
        assert "does not serve 'meta-llama/Llama-3.1-8B'" in msg and "meta-llama/Llama-3.1-70B" in msg
        at.text_input(key="w_ndif_model").input("patchcore-tests/no-such-model-xyz").run()
        at.button(key="ndif_connect").click().run()  # served, but its config is not on the hub
        no_exception(at)
        (msg,) = errors(at)
        assert "'patchcore-tests/no-such-model-xyz'" in msg and "Hugging Face hub" in msg
    finally:
        status.close()
    assert "_remote" not in at.session_state
    assert at.text_input(key="w_ndif_key").value == FAKE_KEY  # still typed in, for the next try


def test_ndif_job_state_in_the_progress_and_cancel(real_ndif, hub_cache, fake_ndif):
    ndif = fake_ndif("slow")  # accepts the job, then reports RUNNING forever
    at = open_app("Model", **PAIR_PARAMS)
    connect(at, HUB_MODEL, FAKE_KEY)
    assert errors(at) == []
    remote = at.session_state["_remote"]
    assert remote.mode is True and "device **NDIF (remote)**" in " ".join(c.value for c in at.sidebar.caption)
    assert "(NDIF)" in remote.model.label and str(remote.model.device) == "meta"  # no weights here

    to_page(at, "pages/3_Patching.py")
    assert {m.label: m.value for m in at.metric}["Runs on"] == "NDIF"
    at.button(key="run_patch").click().run()
    job = run_job(at, "patch")
    wait_until(lambda: "RUNNING" in job.status)
    at.run()
    (bar,) = at.get("progress")
    assert bar.proto.text.startswith("NDIF: RUNNING (baseline)")
    at.button(key="cancel_patch").click().run()
    wait_for_job(at, "patch", timeout=60)
    no_exception(at)
    assert any("cancelled" in i.value for i in at.info) and errors(at) == []
    assert ndif.keys == [FAKE_KEY]  # the key travelled in the request header, once


def test_failed_job_message(real_ndif, hub_cache, fake_ndif):
    ndif = fake_ndif("fail")
    at = open_app("Model", **PAIR_PARAMS)
    connect(at, HUB_MODEL, FAKE_KEY)
    to_page(at, "pages/3_Patching.py")
    at.button(key="run_patch").click().run()
    wait_for_job(at, "patch", timeout=120)
    no_exception(at)
    (msg,) = errors(at)
    assert msg.startswith(f"The NDIF job for {HUB_MODEL} failed") and "index 99" in msg
    assert FAKE_KEY not in msg and ndif.keys == [FAKE_KEY]


# ---------------------------------------------------------------- the key stays in the session

def test_the_key_never_leaves_the_session(real_ndif, hub_cache, fake_ndif, tiny_folder, monkeypatch,
                                          single_thread, isolated_history, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    at = open_app("Model", **PAIR_PARAMS)

    # 1. NDIF unreachable: the message, the page, the URL hold no key
    closed = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("NDIF_HOST", closed)
    assert ndif_host() == closed
    connect(at, "meta-llama/Llama-3.1-8B", FAKE_KEY)
    (msg,) = errors(at)
    assert "Could not reach NDIF" in msg
    seen = [all_text(at), json.dumps(dict(at.query_params))]

    # 2. connected, a job that fails on the server
    ndif = fake_ndif("fail")
    at.text_input(key="w_ndif_model").input(HUB_MODEL).run()
    at.button(key="ndif_connect").click().run()
    assert errors(at) == [] and "_remote" in at.session_state
    remote = at.session_state["_remote"]
    assert FAKE_KEY not in repr(remote)
    assert copy.copy(remote)._Remote__key is None  # a copied or pickled connection drops the key
    to_page(at, "pages/3_Patching.py")
    at.button(key="run_patch").click().run()
    wait_for_job(at, "patch", timeout=120)
    assert any("failed" in e for e in errors(at))
    assert ndif.keys == [FAKE_KEY]
    seen += [all_text(at), json.dumps(dict(at.query_params))]

    # 3. the same session, switched to the simulated NDIF, runs a sweep: URL, result JSON
    #    (the page's JSON download) and the run history's export hold no key
    monkeypatch.setenv("PATCHCORE_NDIF_MODE", "local")
    to_page(at, "pages/1_Model.py")
    at.radio(key="w_run_where").set_value("ndif").run()
    assert at.text_input(key="w_ndif_key").value == FAKE_KEY  # still in this session
    at.text_input(key="w_ndif_model").input(str(tiny_folder)).run()
    at.button(key="ndif_connect").click().run()
    assert errors(at) == []
    to_page(at, "pages/3_Patching.py")
    at.button(key="run_patch").click().run()
    wait_for_job(at, "patch")
    no_exception(at)
    assert errors(at) == []
    result = run_result(at, "patch")
    seen += [all_text(at), json.dumps(dict(at.query_params)), json.dumps(result.to_json())]
    history = History(isolated_history)
    for info in history.list():
        seen.append(json.dumps(history.get(info.id).to_export()))
    assert len(history.list()) == 1  # the failed run was not stored; the simulated one was

    out, err = capfd.readouterr()
    seen += [out, err, caplog.text]
    for text in seen:
        assert FAKE_KEY not in text
    assert all(FAKE_KEY not in v for v in at.query_params.values())
