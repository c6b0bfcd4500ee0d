"""AppTest: every page renders with its defaults; the Model page loads and reports models."""
import pytest

from app_helpers import PAGES, ROOT, errors, no_exception, open_app, put_run, run_job, served_on
from patchcore import DEFAULT_PAIR, check_pair, plan, run_baseline

pytestmark = pytest.mark.embedded


def sidebar_text(at) -> str:
    return " ".join(str(e.value) for e in list(at.sidebar.markdown) + list(at.sidebar.caption))


def test_landing_page_defaults():
    at = open_app()
    no_exception(at)
    assert errors(at) == []
    assert at.title[0].value.startswith("Which parts of a language model")
    (demo,) = [b for b in at.button if b.label == "Run demo"]
    assert not demo.disabled
    assert "Activation patching" in at.markdown[0].value
    assert any(DEFAULT_PAIR.clean in t.value for t in at.text)
    assert "SmolLM2" in sidebar_text(at)  # the sidebar names the chosen model even before loading


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_with_defaults(page):
    at = open_app(page)
    no_exception(at)
    assert errors(at) == []
    assert at.title[0].value == ("How to read the results" if page == "Guide" else page)
    assert "device" in sidebar_text(at) and "dtype" in sidebar_text(at)


def test_prompts_page_shows_baseline_of_the_default_pair(embedded):
    at = open_app("Prompts")
    no_exception(at)
    prepared, _ = check_pair(embedded.tokenizer, DEFAULT_PAIR)
    base = run_baseline(embedded, DEFAULT_PAIR)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Clean logit difference"] == f"{base.clean_metric:+.3f}"
    assert metrics["Corrupted logit difference"] == f"{base.corrupted_metric:+.3f}"
    ids = " ".join(m.value for m in at.markdown)
    assert f"token id **{prepared.answer_id}**" in ids and f"token id **{prepared.wrong_id}**" in ids
    clean_top = at.dataframe[-2].value
    assert list(clean_top["token"]) == [t.replace(" ", "␣") for t, _ in base.clean_top]
    assert list(clean_top["probability"]) == pytest.approx([p for _, p in base.clean_top], abs=1e-4)
    # the token table lines the prompts up and marks the one differing position
    assert any("1 position(s) differ" in c.value for c in at.caption)
    # once loaded, the sidebar shows the model's real device and dtype
    assert "cpu" in " ".join(c.value for c in at.sidebar.caption) or "cuda" in sidebar_text(at)
    assert "float32" in sidebar_text(at)


def test_patching_page_shows_the_plan_before_running(embedded):
    at = open_app("Patching")
    no_exception(at)
    n = check_pair(embedded.tokenizer, DEFAULT_PAIR)[0].n_tokens
    p = plan(embedded, n, "layer_pos", first_diff=9)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Patches"] == f"{p['patches']:,}" == "480"
    assert metrics["Forward rows"] == f"{p['forward_rows']:,}" == f"{30 * 7 + 2}"
    assert int(metrics["Batches"]) >= 2
    assert at.selectbox(key="w_sweep").value == "layer_pos"
    assert at.radio(key="w_direction").value == "denoise"
    assert at.selectbox(key="w_metric").value == "logit_diff"
    assert at.selectbox(key="w_sweep").help and at.radio(key="w_direction").help  # tooltips
    at.selectbox(key="w_sweep").set_value("head").run()
    assert {m.label: m.value for m in at.metric}["Patches"] == "270"  # 30 layers x 9 heads
    at.selectbox(key="w_sweep").set_value("layer").run()
    assert any("restores everything" in i.value for i in at.info)  # the whole-layer caveat


def test_model_page_loads_the_embedded_model():
    at = open_app("Model")
    no_exception(at)
    assert at.radio(key="w_model_choice").value == "embedded"
    at.button[0].click().run()  # Load model
    no_exception(at)
    assert errors(at) == []
    facts = dict(zip(at.dataframe[0].value.iloc[:, 0], at.dataframe[0].value["value"]))
    assert facts["layers"] == "30" and facts["heads"] == "9" and facts["head size"] == "64"
    assert facts["parameters"] == "134,515,008"
    assert "float32" in sidebar_text(at)


def test_model_page_bad_path_keeps_input_and_model():
    at = open_app("Model")
    at.radio(key="w_model_choice").set_value("__other__").run()
    at.text_input(key="w_model_other").input("/nonexistent/folder/model.gguf").run()
    at.button[0].click().run()
    no_exception(at)
    assert any("No GGUF file at '/nonexistent/folder/model.gguf'" in e for e in errors(at))
    assert at.text_input(key="w_model_other").value == "/nonexistent/folder/model.gguf"
    assert at.session_state["model"] == "embedded"  # the session keeps its working model


@pytest.fixture
def served_to_network():
    """This dashboard as if started with --server.address 0.0.0.0."""
    with served_on("0.0.0.0"):
        yield


def test_model_page_refuses_local_paths_when_served_to_a_network(served_to_network, tmp_path):
    at = open_app("Model")
    at.radio(key="w_model_choice").set_value("__other__").run()
    at.text_input(key="w_model_other").input(str(tmp_path)).run()
    at.button[0].click().run()
    no_exception(at)
    assert any("PATCHCORE_MODEL_DIRS" in e and "served to other machines" in e for e in errors(at)), errors(at)
    assert at.text_input(key="w_model_other").value == str(tmp_path)
    assert at.session_state["model"] == "embedded"


def test_model_page_an_invalid_id_is_called_invalid_not_unreachable():
    """Issue 16, point 14: 'not a valid id!!' got the 'hub unreachable' message."""
    at = open_app("Model")
    at.radio(key="w_model_choice").set_value("__other__").run()
    at.text_input(key="w_model_other").input("not a valid id!!").run()
    at.button[0].click().run()
    no_exception(at)
    (msg,) = errors(at)
    assert "'not a valid id!!' is not a valid model id" in msg and "openai-community/gpt2" in msg
    assert "reach" not in msg
    assert at.session_state["model"] == "embedded"


def test_the_first_page_is_called_home():
    """Issue 16, point 8: Streamlit named the entry page after its file ('dashboard')."""
    at = open_app("Guide")
    labels = [link.proto.label for link in at.sidebar.get("page_link")]
    assert labels[0] == "Home" and "dashboard" not in " ".join(labels).lower()
    import tomllib
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["showSidebarNavigation"] is False          # Streamlit's own list is off


def test_model_page_unknown_hub_model_gives_a_clear_message():
    """No hub access here (and a name that exists nowhere): one readable line, no traceback."""
    at = open_app("Model")
    at.radio(key="w_model_choice").set_value("__other__").run()
    at.text_input(key="w_model_other").input("patchcore-tests/no-such-model-xyz").run()
    at.button[0].click().run()
    no_exception(at)
    (msg,) = errors(at)
    assert "'patchcore-tests/no-such-model-xyz'" in msg
    assert "hub" in msg
    assert at.session_state["model"] == "embedded"


# ---------------------------------------------------------------- remote code on a public server

def test_model_page_trust_remote_code_is_off_for_visitors(served_to_network, custom_repo, monkeypatch):
    repo_id, marker = custom_repo
    at = open_app("Model")
    at.radio(key="w_model_choice").set_value("__other__").run()
    at.text_input(key="w_model_other").input(repo_id).run()
    assert at.checkbox(key="w_trust").disabled and not at.checkbox(key="w_trust").value
    rule = " ".join(c.value for c in at.caption).replace("\\", "")
    assert "PATCHCORE_TRUST_REMOTE_CODE=owner/name" in rule, rule
    at.button[0].click().run()  # Load model: the repository needs its code, which is not allowed here
    no_exception(at)
    (msg,) = errors(at)
    assert "needs custom code" in msg and "PATCHCORE_TRUST_REMOTE_CODE" in msg and "local cache" not in msg
    assert at.session_state["model"] == "embedded" and not marker.exists()

    # the operator lists the repository: the box can be ticked for it, and only for it
    monkeypatch.setenv("PATCHCORE_TRUST_REMOTE_CODE", repo_id)
    at.run()
    assert not at.checkbox(key="w_trust").disabled
    assert repo_id in " ".join(c.value for c in at.caption).replace("\\", "")
    at.text_input(key="w_model_other").input("someone/else").run()
    assert at.checkbox(key="w_trust").disabled


def test_a_crafted_session_cannot_turn_on_remote_code(served_to_network, custom_repo):
    """Session state that says trust_remote_code (no widget allows it here): the load refuses."""
    repo_id, marker = custom_repo
    at = open_app("Patching")
    at.session_state["model"] = repo_id
    at.session_state["trust_remote_code"] = True
    at.run()
    at.button(key="run_patch").click().run()
    no_exception(at)
    (msg,) = errors(at)
    assert "does not run code from" in msg and "PATCHCORE_TRUST_REMOTE_CODE" in msg
    assert run_job(at, "patch") is None and not marker.exists()
    # and past the page: the engine itself refuses, whatever the cache is asked
    from patchcore import ModelLoadError
    from ui.model import _cached_model
    with pytest.raises(ModelLoadError, match="PATCHCORE_TRUST_REMOTE_CODE"):
        _cached_model(repo_id, "cpu", "fp32", "", True)
    assert not marker.exists()


# ---------------------------------------------------------------- bugs: an id, not a traceback

def test_a_bug_shows_an_error_id_and_logs_the_traceback_under_it(tmp_path):
    import logging
    import re

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("patchcore.dashboard")
    log.addHandler(handler)
    try:
        at = open_app()
        secret = f"{tmp_path}/server-side/path.py"
        put_run(at, "patch", error=RuntimeError(f"boom in {secret}"))
        at.switch_page("pages/3_Patching.py").run()
    finally:
        log.removeHandler(handler)
    no_exception(at)
    (msg,) = errors(at)
    shown = " ".join(str(e.value) for e in list(at.main) if hasattr(e, "value"))
    assert "a bug, not your input" in msg
    assert "Traceback" not in shown and secret not in shown and str(tmp_path) not in shown
    assert not at.get("expander") or not any("bug report" in str(e.label) for e in at.get("expander"))
    error_id = re.search(r"error id \**([0-9a-f]{10})", msg).group(1)
    (rec,) = [r for r in records if error_id in r.getMessage()]
    assert rec.exc_info and "boom in" in str(rec.exc_info[1])  # the whole traceback, in the server log
