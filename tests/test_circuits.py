"""Circuit discovery against an independent reference (tests/reference_edges.py) on every family:
exact edge patching, EAP, EAP-IG, circuit forwards; the faithfulness identities; the refusal of
families whose residual stream does not split into edges; the result's JSON and subgraph."""
from __future__ import annotations

import json

import numpy as np
import pytest

import patchcore as pc
from patchcore.ablations import RefSet
from patchcore.circuit_graph import Graph
from patchcore.circuit_result import CircuitResult
from patchcore.circuits import run_circuit
from patchcore.errors import SweepError
from patchcore.run_files import check_run_file
from reference_edges import circuit_metric, eap_scores, edge_patches
from reference_paths import path_metric
from test_interventions import PAIR as EARLY, ids_of
from tiny import FAMILIES, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread_module")

REFUSED = ["gemma2", "gemma3_text"]
ADDITIVE = [f for f in FAMILIES if f not in REFUSED]
TOL = 1e-4
# the IOI demo pair (16 tokens, first differs at position 9: the forwards of scores and curves
# start there, from a cached prefix) and a second one; EARLY differs at position 1
PAIR = pc.PromptPair(clean="After John and Mary went to the store, Mary gave a bottle of milk to",
                     corrupted="After John and Mary went to the store, John gave a bottle of milk to",
                     answer=" John", wrong=" Mary")
PAIR2 = pc.PromptPair(clean="After Anna and Tom went to the park, Tom gave a ball to",
                      corrupted="After Anna and Tom went to the park, Anna gave a ball to",
                      answer=" Anna", wrong=" Tom")


def node(name: str) -> tuple:
    """Site notation -> the reference's node tuples."""
    if name in ("input", "logits"):
        return (name,)
    kind, rest = name.split(":", 1)
    if kind == "mlp":
        return ("mlp", int(rest))
    where, _, port = rest.partition(":")
    layer, head = (int(x) for x in where.split("."))
    return (port, layer, head) if port else ("head", layer, head)


def runs(m, direction, pair=PAIR):
    clean, corrupted, a, w = ids_of(m.tokenizer, pair)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return base, source, a, w


def edges_of(r: CircuitResult) -> list:
    return [(node(s), node(v)) for s, v in zip(r.sender, r.receiver)]


@pytest.mark.parametrize("family", ADDITIVE)
def test_edge_patching_equals_the_reference(family):
    """Every edge of the tiny model, patched alone through the engine, both directions."""
    m = tiny_model(family)
    for direction, pair in (("denoise", PAIR), ("noise", EARLY)):
        r = run_circuit(m, pair, "eap", direction=direction, check_top=10**6, curve_points=0)
        assert np.isfinite(r.exact).all() and r.check_top == r.n_edges
        want = edge_patches(m.hf, *runs(m, direction, pair), edges_of(r))
        np.testing.assert_allclose(r.exact, want, atol=TOL, err_msg=f"{family} {direction}")
        assert np.abs(r.exact).max() > 1e-3          # the patches move the metric


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_edge_patching_equals_single_path_patching(family):
    """A third route: path patching (reference_paths) with one sender and one receiver."""
    m = tiny_model(family)
    r = run_circuit(m, PAIR, "eap", check_top=10**6, curve_points=0)
    base, source, a, w = runs(m, "denoise")
    from reference_sites import metric, capture
    base_metric = metric("logit_diff", capture(m.hf, base, "head")[0], a, w)
    checked = 0
    for i, (u, v) in enumerate(edges_of(r)):
        if u[0] == "input" or i % 7:
            continue
        sender = (u[0], u[1], u[2] if u[0] == "head" else None, None)
        recv = "logits" if v[0] == "logits" else [("mlp_in", v[1], None) if v[0] == "mlp" else v]
        want = path_metric(m.hf, base, source, a, w, [sender], recv) - base_metric
        assert abs(r.exact[i] - want) <= TOL, (family, u, v, r.exact[i], want)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("family", ADDITIVE)
def test_eap_equals_the_reference(family):
    m = tiny_model(family)
    for direction in ("denoise", "noise"):
        r = run_circuit(m, PAIR, "eap", direction=direction, curve_points=0)
        want = eap_scores(m.hf, *runs(m, direction))
        assert len(want) == r.n_edges                  # the same graph
        np.testing.assert_allclose(r.score, [want[e] for e in edges_of(r)], atol=TOL, rtol=TOL)
        assert np.all(np.diff(np.abs(r.score)) <= 0)   # sorted by |score|


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen3", "gemma"])
def test_eap_ig_equals_the_reference(family):
    m = tiny_model(family)
    r = run_circuit(m, PAIR, "eap-ig", steps=3, metric="logprob", curve_points=0)
    want = eap_scores(m.hf, *runs(m, "denoise"), metric="logprob", steps=3)
    np.testing.assert_allclose(r.score, [want[e] for e in edges_of(r)], atol=TOL, rtol=TOL)
    eap = run_circuit(m, PAIR, "eap", metric="logprob", curve_points=0)
    assert np.abs(np.sort(np.abs(r.score)) - np.sort(np.abs(eap.score))).max() > 1e-4  # IG moved


@pytest.mark.parametrize("family", ADDITIVE)
def test_eap_ig_with_one_step_is_eap(family):
    m = tiny_model(family)
    eap = run_circuit(m, PAIR, "eap", curve_points=0)
    ig = run_circuit(m, PAIR, "eap-ig", steps=1, curve_points=0)
    assert ig.steps == 1 and ig.method == "eap-ig"
    assert ig.sender == eap.sender and ig.receiver == eap.receiver
    np.testing.assert_allclose(ig.score, eap.score, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ADDITIVE)
def test_faithfulness_identities(family):
    """No edges = the base run (0), all edges = the source run (1), in both directions."""
    m = tiny_model(family)
    for direction in ("denoise", "noise"):
        r = run_circuit(m, [PAIR, PAIR2], "eap", direction=direction, edges=7, curve_points=5)
        ks = [p["edges"] for p in r.curve]
        assert ks[0] == 0 and ks[-1] == r.n_edges and 7 in ks and ks == sorted(set(ks))
        assert r.curve[0]["faithfulness"] == 0.0 and r.curve[-1]["faithfulness"] == 1.0
        base = r.corrupted_metric if direction == "denoise" else r.clean_metric
        source = r.clean_metric if direction == "denoise" else r.corrupted_metric
        assert abs(r.curve[0]["metric"] - base) <= TOL, (family, direction)
        assert abs(r.curve[-1]["metric"] - source) <= TOL, (family, direction)
        assert r.faithfulness_top_k == r.faithfulness(7)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "mistral"])
def test_circuit_forward_equals_the_reference(family):
    """Mid-curve points: the top k edges kept, the rest carrying the base run's values."""
    m = tiny_model(family)
    r = run_circuit(m, PAIR, "eap", direction="noise", edges=12, curve_points=3)
    edges = edges_of(r)
    base, source, a, w = runs(m, "noise")
    for point in r.curve[1:-1]:
        want = circuit_metric(m.hf, base, source, a, w, set(edges[:point["edges"]]))
        assert abs(point["metric"] - want) <= TOL, (family, point, want)


def test_mean_ablation_over_the_base_prompt_is_the_corrupted_ablation():
    """With one reference prompt, the base prompt itself, the mean is the base run's output."""
    m = tiny_model("llama")
    base, *_ = runs(m, "denoise")
    want = run_circuit(m, PAIR, "eap-ig", steps=2, check_top=5, edges=9, curve_points=3)
    got = run_circuit(m, PAIR, "eap-ig", steps=2, check_top=5, edges=9, curve_points=3,
                      ablation="mean", reference=RefSet([base], "the base prompt"))
    assert got.ablation == "mean" and "the base prompt" in got.reference
    np.testing.assert_allclose(got.score, want.score, atol=1e-6)
    np.testing.assert_allclose(got.exact[:5], want.exact[:5], atol=TOL)
    assert [p["edges"] for p in got.curve] == [p["edges"] for p in want.curve]
    np.testing.assert_allclose([p["metric"] for p in got.curve], [p["metric"] for p in want.curve], atol=TOL)
    other = run_circuit(m, [PAIR, PAIR2], "eap", ablation="mean", curve_points=2)   # the dataset's mean
    zero = run_circuit(m, PAIR, "eap", ablation="zero", curve_points=2)
    for r in (other, zero):
        assert r.curve[0]["faithfulness"] == 0.0 and r.curve[-1]["faithfulness"] == 1.0
        assert abs(r.curve[-1]["metric"] - r.clean_metric) <= TOL


def test_the_cached_prefix_changes_nothing(monkeypatch):
    """Scores and curve start at the first differing position; from position 0 they are the same."""
    import patchcore.circuits as circuits
    from patchcore.prompts import prepare_pair
    m = tiny_model("gpt_neox")
    assert circuits.Prefix.start(m, prepare_pair(m.tokenizer, PAIR), True) == 9
    assert circuits.Prefix.start(m, prepare_pair(m.tokenizer, PAIR), False) == 0   # mean, zero
    fast = run_circuit(m, [PAIR, EARLY], "eap-ig", steps=2, curve_points=3)
    monkeypatch.setattr(circuits.Prefix, "start", staticmethod(lambda *a: 0))
    slow = run_circuit(m, [PAIR, EARLY], "eap-ig", steps=2, curve_points=3)
    assert fast.sender == slow.sender
    np.testing.assert_allclose(fast.score, slow.score, atol=1e-6)
    np.testing.assert_allclose([p["metric"] for p in fast.curve], [p["metric"] for p in slow.curve], atol=1e-5)


def test_scores_average_over_pairs():
    m = tiny_model("qwen2")
    both = run_circuit(m, [PAIR, PAIR2], "eap", curve_points=0)
    one = [run_circuit(m, p, "eap", curve_points=0) for p in (PAIR, PAIR2)]
    per = [dict(zip(zip(r.sender, r.receiver), r.score)) for r in one]
    mean = [(per[0][e] + per[1][e]) / 2 for e in zip(both.sender, both.receiver)]
    np.testing.assert_allclose(both.score, mean, atol=1e-6)
    assert both.n_pairs == 2


@pytest.mark.parametrize("family", REFUSED)
def test_post_normed_families_are_refused(family):
    m = tiny_model(family)
    with pytest.raises(SweepError) as exc:
        run_circuit(m, PAIR, "eap")
    assert exc.value.field == "model" and "norm" in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1 and str(exc.value).count(". ") == 0


def test_the_graph():
    """Edge counts follow from the rules: embedded shape (GQA), NeoX's parallel residual."""
    g = Graph(30, 9, 3, parallel=False)            # the embedded SmolLM2
    assert (g.n_senders, g.n_receivers) == (301, 481)
    per_layer = [15 * (1 + 10 * l) + (1 + 10 * l + 9) for l in range(30)]
    assert len(g.edges()[0]) == sum(per_layer) + 301 == 70651
    def names(g):
        s, r = g.edges()
        return set(zip((g.senders()[i] for i in s), (g.receivers()[j] for j in r)))
    p = Graph(2, 2, 2, parallel=True)
    assert ("head:0.1", "mlp:0") not in names(p) and ("head:0.1", "mlp:1") in names(p)
    assert ("head:0.1", "mlp:0") in names(Graph(2, 2, 2, parallel=False))
    assert ("mlp:1", "head:1.0:q") not in names(p) and ("mlp:0", "head:1.0:q") in names(p)
    assert p.parse_node("head:1.1:k", receiver=True) == p.receivers().index("head:1.1:k")
    with pytest.raises(SweepError):
        p.parse_node("head:1.2:k", receiver=True)     # key/value head 2 does not exist


def test_json_round_trip_subgraph_and_run_file():
    m = tiny_model("gpt2")
    r = run_circuit(m, [PAIR, PAIR2], "eap-ig", steps=2, edges=10, check_top=3, curve_points=4)
    d = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert d["kind"] == "circuit" and d["method"] == "eap-ig" and d["n_pairs"] == 2
    assert len(d["edges"]) == r.n_edges and set(d["edges"][0]) == {"sender", "receiver", "score", "exact"}
    assert "exact" not in d["edges"][3] and d["top_k"] == 10
    assert d["faithfulness_top_k"] == r.faithfulness(10)
    assert {"edges", "faithfulness", "metric"} == set(d["curve"][0])
    back = CircuitResult.from_json(d)
    assert back.sender == r.sender and back.receiver == r.receiver
    np.testing.assert_array_equal(back.score, r.score)
    np.testing.assert_array_equal(np.isnan(back.exact), np.isnan(r.exact))
    assert back.curve == r.curve and back.to_json() == d
    check_run_file(d)                                  # importable as it is
    sub = r.top(10)
    assert len(sub.edges) == 10 and sub.edges[0]["sender"] == r.sender[0] and "exact" in sub.edges[0]
    names = {n["name"] for n in sub.nodes}
    assert names == {e["sender"] for e in sub.edges} | {e["receiver"] for e in sub.edges}
    layers = [n["layer"] for n in sub.nodes]
    assert layers == sorted(layers)
    assert all(n["kind"] in ("input", "head", "mlp", "logits", "q", "k", "v") for n in sub.nodes)
    assert len(r.to_frame()) == r.n_edges and r.top(0).edges == []
    bad = dict(d, edges=[dict(d["edges"][0], sender="head:x")] + d["edges"][1:])
    with pytest.raises(pc.PatchError, match=r"edges\[0\]"):
        check_run_file(bad)
    with pytest.raises(pc.PatchError, match="top_k"):
        check_run_file(dict(d, top_k=11))


def test_bad_arguments():
    m = tiny_model("llama")
    for kw, field in [({"method": "acdc"}, "method"), ({"steps": 0}, "steps"),
                      ({"ablation": "resample"}, "ablation"), ({"edges": 0}, "edges")]:
        with pytest.raises(SweepError) as exc:
            run_circuit(m, PAIR, **kw)
        assert exc.value.field == field
    r = run_circuit(m, PAIR, "eap", edges=10**6, curve_points=0)
    assert r.top_k == r.n_edges and r.faithfulness_top_k == 1.0 and "the circuit is all of them" in r.warnings[-1]


def test_faithfulness_of_any_circuit_size():
    """circuit_faithfulness re-measures a stored result at other sizes; the run's own points agree."""
    from patchcore.circuit_faith import circuit_faithfulness
    m = tiny_model("qwen2")
    r = run_circuit(m, [PAIR, PAIR2], "eap", edges=10, curve_points=3)
    again = circuit_faithfulness(m, CircuitResult.from_json(r.to_json()), [10, 33])
    assert [p["edges"] for p in again] == [0, 10, 33, r.n_edges]
    assert again[0]["faithfulness"] == 0.0 and again[-1]["faithfulness"] == 1.0
    assert abs(again[1]["faithfulness"] - r.faithfulness(10)) <= 1e-6
    kept = set(edges_of(r)[:33])
    want = np.mean([circuit_metric(m.hf, *runs(m, "denoise", p), kept) for p in (PAIR, PAIR2)])
    assert abs(again[2]["metric"] - want) <= TOL
    with pytest.raises(SweepError):
        circuit_faithfulness(tiny_model("gpt2"), r, [5])
