"""AppTest: the experiment lives in the URL – round trips, fresh sessions, hostile parameters,
links that carry only their page's settings."""
from urllib.parse import parse_qs

import pytest

from app_helpers import ROOT, errors, no_exception, open_app, plain, run_job, served_on
from patchcore.presets import PRESETS

pytestmark = pytest.mark.embedded

FACTUAL = PRESETS["factual"].pair
EXPERIMENT = {  # every setting away from its default
    "sweep": "head", "direction": "noise", "metric": "prob", "cell": "2,3", "view": "raw",
    "clean": FACTUAL.clean, "corrupted": FACTUAL.corrupted, "answer": FACTUAL.answer, "wrong": FACTUAL.wrong,
}


def widgets(at) -> dict:
    return {"sweep": at.selectbox(key="w_sweep").value, "direction": at.radio(key="w_direction").value,
            "metric": at.selectbox(key="w_metric").value}


def test_link_sets_the_experiment_and_the_url_keeps_it():
    at = open_app("Patching", **EXPERIMENT)
    no_exception(at)
    assert at.warning == [] or not any("not valid" in w.value for w in at.warning)
    assert widgets(at) == {"sweep": "head", "direction": "noise", "metric": "prob"}
    assert any(FACTUAL.clean in t.value for t in at.text)
    assert at.query_params == EXPERIMENT  # nothing lost or added on the way
    assert {m.label: m.value for m in at.metric}["Patches"] == "270"
    at.selectbox(key="w_sweep").select("mlp_pos").run()  # a new sweep: the old cell no longer applies
    assert at.query_params["sweep"] == "mlp_pos" and "cell" not in at.query_params


def test_a_copied_link_reproduces_the_experiment_in_a_fresh_session():
    first = open_app("Patching")
    first.selectbox(key="w_sweep").select("mlp_pos").run()
    first.radio(key="w_direction").set_value("noise").run()
    first.selectbox(key="w_metric").select("logprob").run()
    link = dict(first.query_params)
    assert link == {"sweep": "mlp_pos", "direction": "noise", "metric": "logprob"}
    second = open_app("Patching", **link)  # another browser, another session
    no_exception(second)
    assert widgets(second) == {"sweep": "mlp_pos", "direction": "noise", "metric": "logprob"}
    first.selectbox(key="w_sweep").select("layer_pos").run()  # back to the default: leaves the URL
    assert "sweep" not in first.query_params


def test_choices_carry_across_pages_and_prompts_from_a_link_fill_the_form():
    at = open_app("Prompts", **{k: EXPERIMENT[k] for k in ("clean", "corrupted", "answer", "wrong")})
    no_exception(at)
    assert at.selectbox(key="w_preset").value == "factual"  # recognised as the preset it is
    assert at.text_area(key="w_clean").value == FACTUAL.clean
    at.text_input(key="w_answer").input(" Berlin").run()
    at.switch_page("pages/3_Patching.py").run()
    assert any("' Berlin'" in t.value for t in at.text)
    assert at.query_params["answer"] == " Berlin"
    at.selectbox(key="w_sweep").select("attn_pos").run()
    at.switch_page("pages/2_Prompts.py").run()
    assert at.text_input(key="w_answer").value == " Berlin"  # still there after two page changes
    at.switch_page("pages/3_Patching.py").run()
    assert at.selectbox(key="w_sweep").value == "attn_pos"


HOSTILE = {
    "sweep": "<script>alert(1)</script>",
    "direction": "sideways",
    "metric": "",
    "model": "/etc/passwd",
    "device": "tpu",
    "dtype": "fp8",
    "revision": "main; rm -rf /",
    "cell": "1;DROP TABLE",
    "view": "3d",
    "clean": "x" * 5000,
    "answer": "a\x00b",
}


def test_hostile_parameters_fall_back_to_defaults_with_a_notice():
    for page in (None, "Patching", "Prompts", "Model"):
        at = open_app(page, **HOSTILE, unrelated="kept")
        no_exception(at)
        assert errors(at) == []
        (notice,) = [w.value for w in at.warning if "not valid" in w.value]
        for key in HOSTILE:
            assert f"'{key}'" in notice.replace("\\", ""), key
        assert "<script>" not in notice  # shown escaped, never as markup
        ss = at.session_state
        assert (ss["sweep"], ss["direction"], ss["metric"], ss["model"], ss["device"], ss["dtype"]) == \
            ("layer_pos", "denoise", "logit_diff", "embedded", "auto", "fp32")
        assert ss["clean"] != "x" * 5000 and ss["cell"] == "" and ss["view"] == "normalized"
        assert dict(at.query_params) == {"unrelated": "kept"}  # bad values dropped from the link
    at.run()  # the notice is shown once, not on every rerun
    assert not any("not valid" in w.value for w in at.warning)


def test_a_hub_model_in_a_link_is_not_loaded_until_run():
    """A link may name a hub model; opening it loads nothing (no surprise downloads)."""
    at = open_app("Patching", model="patchcore-tests/no-such-model-xyz")
    no_exception(at)
    assert at.session_state["model"] == "patchcore-tests/no-such-model-xyz"
    assert any("not loaded yet" in w.value for w in at.warning)
    assert at.metric == [] or not len(at.metric)
    at.button(key="run_patch").click().run()  # one click on Run loads it (and fails here: offline/unknown)
    no_exception(at)
    (msg,) = errors(at)
    assert "'patchcore-tests/no-such-model-xyz'" in msg
    assert run_job(at, "patch") is None


@pytest.fixture
def served_locally():
    """The dashboard as `make run` serves it (127.0.0.1): local paths are the user's own choice on
    the Model page, so only the link rule keeps a shared link from naming one."""
    with served_on("127.0.0.1"):
        yield


@pytest.mark.parametrize("name", ["docs", "tests", "patchcore", "pages"])
def test_a_link_cannot_name_a_folder_of_the_server(served_locally, name):
    """`?model=docs` looks like a hub id, but transformers would read the server's ./docs."""
    assert (ROOT / name).is_dir()  # the server runs in the repository: these folders exist
    at = open_app("Patching", model=name)
    no_exception(at)
    (notice,) = [plain(w.value) for w in at.warning if "not valid" in w.value]
    assert f"'model' = '{name}' was ignored" in notice and "not a file path" in notice
    assert at.session_state["model"] == "embedded" and "model" not in at.query_params


def test_a_link_model_is_checked_again_when_it_loads(served_locally, tmp_path, monkeypatch):
    """A name that was no folder when the link was opened, but is one when Run is pressed."""
    from tiny import build_hf, embedded_tokenizer
    monkeypatch.chdir(tmp_path)
    at = open_app("Patching", model="later-folder")
    assert at.session_state["model"] == "later-folder"  # a valid hub id when the link was read
    build_hf("gpt2").save_pretrained(tmp_path / "later-folder")  # a model the server could read
    embedded_tokenizer().save_pretrained(tmp_path / "later-folder")
    at.button(key="run_patch").click().run()
    no_exception(at)
    (msg,) = errors(at)
    assert "The link names the model 'later-folder'" in msg and "not a file path" in msg
    assert run_job(at, "patch") is None and "_loaded_spec" not in at.session_state
    # typed on the Model page instead, the same folder is the local user's to load
    at.switch_page("pages/1_Model.py").run()
    at.radio(key="w_model_choice").set_value("__other__").run()
    at.text_input(key="w_model_other").input("later-folder").run()
    at.button[0].click().run()
    no_exception(at)
    assert errors(at) == [] and at.session_state["model"] == "later-folder"


# ---------------------------------------------------------------- issue 16, points 8 and 9

def sidebar_links(at) -> dict:
    """The sidebar's page list: {label: (page, settings the link carries)}."""
    return {link.proto.label: (link.proto.page, {k: v[0] for k, v in parse_qs(link.proto.query_string).items()})
            for link in at.sidebar.get("page_link")}


def test_links_carry_only_the_settings_of_the_page_they_open():
    at = open_app("Patching", **EXPERIMENT)
    links = sidebar_links(at)
    assert list(links)[:9] == ["Home", "Model", "Prompts", "Patching", "Datasets", "History", "Paths",
                               "Circuit", "Guide"]
    assert links["Patching"][1] == EXPERIMENT                        # the whole experiment
    assert links["Prompts"][1] == {k: EXPERIMENT[k] for k in ("clean", "corrupted", "answer", "wrong", "metric")}
    for page in ("Paths", "Circuit"):                                # the pair, direction and metric
        assert links[page][1] == {k: EXPERIMENT[k] for k in ("clean", "corrupted", "answer", "wrong",
                                                             "direction", "metric")}, page
    for page in ("Home", "Model", "Datasets", "History", "Guide"):
        assert links[page][1] == {}, page                            # nothing of the Patching page
    at.switch_page("pages/4_Datasets.py").run()
    assert dict(at.query_params) == {}                               # the Datasets page's own URL
    at.switch_page("pages/3_Patching.py").run()
    assert dict(at.query_params) == EXPERIMENT                       # and the session kept it all


def test_dataset_settings_are_in_the_link():
    at = open_app()
    at.switch_page("pages/4_Datasets.py").run()
    no_exception(at)
    at.number_input(key="w_ds_n").set_value(7).run()
    at.number_input(key="w_ds_seed").set_value(3).run()
    at.selectbox(key="w_ds_corruption").select("abc").run()
    at.radio(key="w_ds_directions").set_value("noise").run()
    link = dict(at.query_params)
    assert link == {"pairs": "7", "seed": "3", "corruption": "abc", "directions": "noise"}
    assert sidebar_links(at)["Datasets"][1] == link and sidebar_links(at)["Patching"][1] == {}
    fresh = open_app(**link)                                         # another browser opens the link
    fresh.switch_page("pages/4_Datasets.py").run()
    no_exception(fresh)
    assert (fresh.number_input(key="w_ds_n").value, fresh.number_input(key="w_ds_seed").value,
            fresh.selectbox(key="w_ds_corruption").value, fresh.radio(key="w_ds_directions").value) == \
        (7, 3, "abc", "noise")
    assert {m.label: m.value for m in fresh.metric}["Pairs"] == "7"
    bad = open_app(pairs="0", seed="-1", corruption="x")
    assert "'pairs'" in " ".join(w.value for w in bad.warning).replace("\\", "")
