"""Path patching for people: the senders → receivers graph (patchcore.path_charts), the sentence
naming the heads that act directly, what senders/receivers a link may hold, and the cost shown
before a run (patchcore.path_report)."""
from __future__ import annotations

import numpy as np
import pytest

from patchcore.errors import SweepError
from patchcore.path_charts import graph_frames, path_graph
from patchcore.path_report import path_cost, path_story, receivers_problem, sender_kind, senders_problem
from patchcore.paths import parse_receivers, parse_senders, run_path
from patchcore.results import PatchResult
from patchcore.summary import summarize
from test_interventions import PAIR
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _path_result(values, direction="denoise", receivers=("logits",), sweep="head") -> PatchResult:
    values = np.asarray(values, dtype=float)
    axes = ("layer", "head") if sweep == "head" else ("layer",)
    return PatchResult(model="m", sweep=sweep, direction=direction, metric="logit_diff", axes=axes,
                       values=values, tokens=["a"] * 4, clean_metric=1.0, corrupted_metric=0.0, pair=PAIR,
                       n_layers=values.shape[0], n_heads=values.shape[-1] if sweep == "head" else 1,
                       path={"senders": "head:*" if sweep == "head" else "mlp:*", "receivers": list(receivers)})


def test_graph_shows_the_strongest_senders_with_edges_as_wide_as_their_effect():
    r = _path_result([[0.02, 0.3, 0.0], [-0.5, 0.05, 0.2], [0.0, 0.9, np.nan]])
    nodes, edges = graph_frames(r, top=3)
    assert list(edges["sender"]) == ["head:2.1", "head:1.0", "head:0.1"]     # by |effect|
    np.testing.assert_allclose(edges["effect"], [0.9, -0.5, 0.3])
    np.testing.assert_allclose(edges["width"], [0.9, 0.5, 0.3])
    assert set(edges["receiver"]) == {"logits"} and list(edges["sign"])[1] == "against it"
    at = nodes.set_index("id")
    assert at.loc["head:2.1", "y"] == 2 and at.loc["head:1.0", "y"] == 1 and at.loc["logits", "y"] == 3
    assert at.loc["logits", "role"] == "receiver" and at.loc["head:2.1", "label"] == "head 2.1"
    # each edge runs from its sender's node to its receiver's node
    for _, e in edges.iterrows():
        assert (e["x"], e["y"]) == (at.loc[e["sender"], "x"], at.loc[e["sender"], "y"])
        assert (e["x2"], e["y2"]) == (at.loc[e["receiver"], "x"], at.loc[e["receiver"], "y"])
    # the drawn chart encodes those fields: width -> strokeWidth from 0, nodes at their layer
    spec = path_graph(r, top=3).to_dict()
    rule = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rule")
    assert rule["encoding"]["strokeWidth"]["field"] == "width"
    assert rule["encoding"]["strokeWidth"]["scale"]["domain"] == [0, pytest.approx(0.9)]
    assert rule["encoding"]["y"]["field"] == "y" and rule["encoding"]["y2"]["field"] == "y2"


def test_noising_edges_carry_the_share_destroyed():
    r = _path_result([[0.2, 1.0]], direction="noise")   # scores: 0.2 destroys 80%, 1.0 nothing
    _, edges = graph_frames(r, top=1)
    assert list(edges["sender"]) == ["head:0.0"] and edges["effect"][0] == pytest.approx(0.8)


def test_graph_of_receivers_inside_the_model_and_of_a_sender_set(llama):
    r = run_path(llama, PAIR, "head:*", "head:2.1,mlp:2")
    nodes, edges = graph_frames(r, top=2)
    assert set(nodes[nodes.role == "receiver"]["id"]) == {"q:2.1", "k:2.0", "v:2.0", "mlp:2"}
    assert set(nodes[nodes.role == "receiver"]["layer"]) == {2}
    assert len(edges) == 2 * 4
    group = run_path(llama, PAIR, "head:0.1,mlp:1", "head:2.1:q")
    nodes, edges = graph_frames(group, n_layers=3)
    assert list(nodes["id"]) == ["head:0.1", "mlp:1", "q:2.1"] and list(nodes["layer"]) == [0, 1, 2]
    far = run_path(llama, PAIR, "head:0.1", "logits")      # rows only for layers with a node
    nodes, _ = graph_frames(far, n_layers=30)
    assert list(nodes["layer"]) == [0, 30] and list(nodes["y"]) == [0.0, 1.0]
    axis = path_graph(far, n_layers=30).to_dict()["layer"][0]["encoding"]["y"]["axis"]
    assert axis["values"] == [0, 1] and '["layer 0", "logits"]' in axis["labelExpr"]
    assert list(edges["effect"]) == [pytest.approx(group.normalized)] * 2    # the group's one number
    path_graph(group).to_dict()
    with pytest.raises(SweepError, match="not path patching"):
        graph_frames(_path_result([[0.1]]).__class__(**{**_path_result([[0.1]]).__dict__, "path": None}))


def test_the_story_names_the_heads_acting_directly():
    r = _path_result([[0.02, 0.3, 0.0], [-0.5, 0.05, 0.2], [0.0, 0.9, np.nan]])
    assert path_story(r) == ("Heads that act on the answer directly: head 2.1 (90%), head 0.1 (30%), "
                             "head 1.2 (20%) (the share of the clean behaviour each restores on this path). "
                             "Working against it: head 1.0 (-50%).")
    through = _path_result([[0.0, 0.4]], receivers=["q:9.6", "k:9.2", "v:9.2"])
    assert path_story(through).startswith("Heads that act through q:9.6, k:9.2, v:9.2: head 0.1 (40%)")
    assert path_story(_path_result([[0.05, -0.02]])) == \
        "No single head acts on the answer directly with 10% or more of the clean behaviour on its own."
    mlps = _path_result([0.0, 0.5, -0.3], sweep="mlp", direction="noise")   # noising: 1 - score
    assert path_story(mlps) == ("MLPs that act on the answer directly: MLP 2 (130%), MLP 0 (100%), MLP 1 (50%) "
                                "(the share of the clean behaviour each destroys on this path).")
    assert path_story(_path_result([[0.5]]).__class__(**{**_path_result([[0.5]]).__dict__, "path": None})) is None


def test_summarize_tells_the_path_story(llama):
    r = run_path(llama, PAIR, "head:*", "logits")
    sentences = summarize(r)
    assert sentences[0].startswith("Path patching: each cell is one sender's effect through logits")
    assert sentences[1] == path_story(r) and sentences[1].startswith(("Heads that act", "No single head"))


@pytest.mark.parametrize("text", ["head:*", "mlp:*", "head:12.*", "head:9.6", "head:9.6,mlp:3", "mlp:2@4", ""])
def test_senders_a_link_may_hold(text):
    assert senders_problem(text) is None


@pytest.mark.parametrize("text, words", [
    ("resid:3", "senders are heads or MLPs"), ("head:9.6,q:1.2", "senders are heads or MLPs"),
    ("mlp:1.*", "not a site"), ("head:x", "not a site"), ("head:1.2,head:1.2", "listed twice"),
    ("head:1." + "1," * 1500, "longer than"),
])
def test_senders_a_link_may_not_hold(text, words):
    assert words in senders_problem(text)


@pytest.mark.parametrize("text", ["logits", "all", "head:9.6:q", "head:9.6", "head:9.6@3:k,mlp:4", "v:2.1", ""])
def test_receivers_a_link_may_hold(text):
    assert receivers_problem(text) is None


@pytest.mark.parametrize("text", ["head:9.6:x", "resid:3", "logit", "mlp:4:q", "head:*", "head:1.2,head:1.2"])
def test_receivers_a_link_may_not_hold(text):
    assert receivers_problem(text) is not None


def test_what_the_link_check_accepts_the_engine_parses(llama):
    for text in ["head:*", "mlp:*", "head:1.*", "head:2.3,mlp:0", "mlp:1@3"]:
        assert senders_problem(text) is None
        parse_senders(text, llama.components)
    for text in ["logits", "all", "head:2.1:q", "head:2.1", "head:2.3@4:k,mlp:2", "v:2.1"]:
        assert receivers_problem(text) is None
        parse_receivers(text, llama.components)
    assert sender_kind("head:*") == sender_kind("head:3.*") == "sweep" and sender_kind("head:3.1") == "set"


@pytest.mark.parametrize("senders, receivers", [("head:*", "logits"), ("mlp:*", "head:2.1:q"),
                                                ("head:1.*", "all"), ("head:0.1,mlp:1", "head:2.0,mlp:2")])
def test_the_cost_shown_before_is_what_the_run_counts(llama, senders, receivers):
    pairs = [PAIR, PAIR]
    cost = path_cost(llama, senders, receivers, [12, 12])
    got = run_path(llama, pairs, senders, receivers)
    assert cost["forward_rows"] == got.forward_rows
    n_senders = {"head:*": 12, "mlp:*": 3, "head:1.*": 4}.get(senders, 1)
    assert cost["paths"] == n_senders and cost["pairs"] == 2
    receivers_named = got.receivers if hasattr(got, "receivers") and got.receivers else got.path["receivers"]
    assert [cost["receivers"]] == receivers_named if isinstance(cost["receivers"], str) else \
        cost["receivers"] == receivers_named


def test_the_cost_refuses_what_the_run_refuses(llama):
    with pytest.raises(SweepError, match="layer 7 does not exist"):
        path_cost(llama, "head:7.*", "logits", [12])
    with pytest.raises(SweepError, match="layer 7 does not exist"):
        path_cost(llama, "head:7.1,mlp:0", "logits", [12])
    with pytest.raises(SweepError, match="head 5 does not exist"):
        path_cost(llama, "head:*", "head:2.5:q", [12])
    with pytest.raises(SweepError, match="position 12 is past"):
        path_cost(llama, "head:1.1@12", "logits", [14, 12])
    with pytest.raises(SweepError, match="not a receiver"):
        path_cost(llama, "head:*", "resid:2", [12])
