"""Sets of sites, ablations, q/k/v and attention patterns equal an independent reference.

tests/reference_sites.py patches with its own hooks (one forward per intervention, patterns
through torch's softmax inside eager attention); every tiny family, both directions, fp32,
within 1e-4. Deliberately wrong reference variants must differ.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import patchcore as pc
from patchcore.ablations import RefSet
from patchcore.errors import SweepError
from patchcore.interventions import complement_sites, run_patch
from patchcore.sites import check_sites, parse_sites
import reference_sites as ref
from tiny import FAMILIES, build_hf, embedded_tokenizer, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread_module")

TOL = 1e-4
# 9 tokens (longer than the tiny Gemma sliding window of 8); differs at positions 1, 3, 6
PAIR = pc.PromptPair(clean="When Mary and John met, John thanked her",
                     corrupted="When John and Mary met, Mary thanked her", answer=" Mary", wrong=" John")
# every component, with and without heads and positions; k/v 1 is a key/value head
SITES = "resid:1@5,attn:0@3,mlp:0,head:1.2,q:2.1,k:1.1,v:2.0,pattern:1.3,pattern:2.0@8"
DIRECTIONS = ["denoise", "noise"]


def ids_of(tok, pair):
    clean, corrupted = tok(pair.clean)["input_ids"], tok(pair.corrupted)["input_ids"]
    a = tok(pair.answer, add_special_tokens=False)["input_ids"][0]
    w = tok(pair.wrong, add_special_tokens=False)["input_ids"][0]
    return list(clean), list(corrupted), a, w


def _site_tuples(text):
    out = []
    for part in text.split(","):
        comp, rest = part.split(":")
        pos = None
        if "@" in rest:
            rest, p = rest.split("@")
            pos = int(p)
        layer, _, head = rest.partition(".")
        out.append((comp, int(layer), int(head) if head else None, pos))
    return out


def reference_joint(hf, tok, pair, sites, direction, values=None, mistakes=()):
    """(clean, corrupted, patched) logit differences; values(comp, layer) -> what to write
    (default: the other prompt's activation)."""
    clean, corrupted, a, w = ids_of(tok, pair)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    acts, logits = {}, {}
    for comp, *_ in sites:
        if comp not in acts:
            logits["clean"], acts[comp] = ref.capture(hf, source, comp)
    writes = [(comp, layer, head, pos, values(comp, layer) if values else acts[comp][layer])
              for comp, layer, head, pos in sites]
    got = ref.patched_logits(hf, base, writes, mistakes)
    lc = ref.capture(hf, clean, "mlp")[0]
    lk = ref.capture(hf, corrupted, "mlp")[0]
    return ref.metric("logit_diff", lc, a, w), ref.metric("logit_diff", lk, a, w), ref.metric("logit_diff", got, a, w)


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_together_equal_the_reference(family):
    m = tiny_model(family)
    sites = _site_tuples(SITES)
    for direction in DIRECTIONS:
        got = run_patch(m, PAIR, SITES, direction)
        clean, corrupted, want = reference_joint(m.hf, m.tokenizer, PAIR, sites, direction)
        assert abs(got.clean_metric - clean) <= TOL and abs(got.corrupted_metric - corrupted) <= TOL
        assert abs(got.value - want) <= TOL, (family, direction, got.value, want)
        target = corrupted if direction == "denoise" else clean
        assert abs(want - target) > 1e-3          # the patch moved something: equality has teeth
        assert got.sites == SITES.split(",") and got.n_sites == len(sites)


def _sweep_reference(m, sweep, direction):
    spec = pc.SWEEPS[sweep]
    comp = spec.component.name
    f = ref.facts(m.hf)
    n = f["kv"] if comp in ("k", "v") else f["heads"]
    out = np.empty((f["layers"], n))
    for layer in range(f["layers"]):
        for head in range(n):
            out[layer, head] = reference_joint(m.hf, m.tokenizer, PAIR, [(comp, layer, head, None)],
                                               direction)[2]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_qkv_and_pattern_sweeps_equal_the_reference(family):
    m = tiny_model(family)
    for sweep in ("head_q", "head_k", "head_v", "head_pattern"):
        for direction in DIRECTIONS:
            got = pc.run_sweep(m, PAIR, sweep, direction, batch_size=5)
            want = _sweep_reference(m, sweep, direction)
            assert got.values.shape == want.shape
            assert got.axes[-1] == ("kv_head" if sweep in ("head_k", "head_v") else "head")
            np.testing.assert_allclose(got.values, want, atol=TOL, rtol=0, err_msg=f"{sweep} {direction}")


def test_k_sliced_by_query_head_is_caught():
    """The comparison has teeth: under grouped-query attention, counting k/v heads like query
    heads writes another head's keys, and the numbers differ."""
    m = tiny_model("llama")   # 4 query heads, 2 key/value heads
    got = pc.run_sweep(m, PAIR, "head_k", "denoise").values
    wrong = np.empty_like(got)
    for layer in range(got.shape[0]):
        for head in range(got.shape[1]):
            wrong[layer, head] = reference_joint(m.hf, m.tokenizer, PAIR, [("k", layer, head, None)],
                                                 "denoise", mistakes=("kv_by_query_head",))[2]
    assert float(np.abs(got - wrong).max()) > 1e-3


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_patterns_on_an_sdpa_model_equal_the_eager_reference(family):
    eager = tiny_model(family)
    sdpa = pc.wrap_model(build_hf(family, attn_implementation="sdpa"), embedded_tokenizer(),
                         label=f"tiny-{family}-sdpa")
    got = pc.run_sweep(sdpa, PAIR, "head_pattern", "noise").values
    np.testing.assert_allclose(got, _sweep_reference(eager, "head_pattern", "noise"), atol=TOL, rtol=0)
    assert sdpa.hf.config._attn_implementation == "sdpa"     # restored after the run


def _same_length_pairs(tok, n):
    """n IOI-like pairs of one token length (so means and resamples line up by position)."""
    names = [" Mary", " John", " Anna", " Tom", " Sarah", " Paul"]
    out = []
    for i in range(n):
        a, b = names[i % 6], names[(i + 1) % 6]
        out.append(pc.PromptPair(f"When{a} and{b} met,{b} thanked", f"When{a} and{b} met,{a} thanked", a, b))
    lengths = {len(tok(p.clean)["input_ids"]) for p in out}
    assert len(lengths) == 1
    return out


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "gemma3_text"])
def test_ablations_equal_the_reference(family):
    m = tiny_model(family)
    tok = m.tokenizer
    pairs = _same_length_pairs(tok, 4)
    sites_text = "head:1.2,v:2.0,pattern:2.1,mlp:1@4"
    sites = _site_tuples(sites_text)
    prompts = [ids for p in pairs for ids in ids_of(tok, p)[:2]]
    reference = RefSet(prompts, "test prompts")
    caps = {c: [ref.capture(m.hf, ids, c)[1] for ids in prompts] for c in {s[0] for s in sites}}
    mean = {c: [torch.stack([x[layer] for x in caps[c]]).mean(0) for layer in range(3)] for c in caps}
    for ablation, values in [("zero", lambda c, layer: torch.zeros_like(caps[c][0][layer])),
                             ("mean", lambda c, layer: mean[c][layer])]:
        got = run_patch(m, pairs[0], sites_text, "noise", ablation=ablation, reference=reference)
        want = reference_joint(m.hf, tok, pairs[0], sites, "noise", values=values)[2]
        assert abs(got.value - want) <= TOL, (ablation, got.value, want)
        assert "4" in got.reference or "8" in got.reference or ablation == "zero"
    # resample: each pair gets its own K draws of other pairs' corrupted prompts, averaged
    got = run_patch(m, pairs, sites_text, "noise", ablation="resample", draws=3, seed=7)
    assert len(got.draws) == 4 and all(len(d) == 3 and i not in d for i, d in enumerate(got.draws))
    for i, pair in enumerate(pairs):
        vals = []
        for j in got.draws[i]:
            other = ids_of(tok, pairs[j])[1]
            acts = {c: ref.capture(m.hf, other, c)[1] for c in caps}
            vals.append(reference_joint(m.hf, tok, pair, sites, "noise",
                                        values=lambda c, layer: acts[c][layer])[2])
        assert abs(got.per_pair[i] - np.mean(vals)) <= TOL


def test_complement_is_every_other_site_of_the_kind():
    m = tiny_model("llama")
    c = m.components
    sites = parse_sites("head:1.2,head:0.0")
    comp = complement_sites(sites, c, 9)
    assert len(comp) == c.n_layers * c.n_heads - 2 and "head:1.2" not in {str(s) for s in comp}
    got = run_patch(m, PAIR, "head:1.2,head:0.0", "noise", complement=True)
    want = run_patch(m, PAIR, [str(s) for s in comp], "noise")
    assert got.complement and got.n_sites == len(comp)
    assert abs(got.value - want.value) <= 1e-6
    mixed = complement_sites(parse_sites("resid:1@2,v:0.1"), c, 9)
    assert len(mixed) == (c.n_layers * 9 - 1) + (c.n_layers * c.n_kv_heads - 1)


def test_one_site_equals_its_sweep_cell_and_pairs_share_one_forward():
    m = tiny_model("gpt2")
    cell = pc.run_sweep(m, PAIR, "head", "denoise").values[1, 3]
    assert abs(run_patch(m, PAIR, "head:1.3", "denoise").value - cell) <= 1e-5
    pairs = _same_length_pairs(m.tokenizer, 6)
    rows = []
    hook = m.hf.register_forward_pre_hook(lambda mod, args, kw: rows.append(kw["input_ids"].shape[0]),
                                          with_kwargs=True)
    try:
        got = run_patch(m, pairs, "head:1.3,mlp:0", "denoise")
    finally:
        hook.remove()
    assert got.n_pairs == 6 and rows == [12, 6]   # one baseline forward, one patched forward
    assert got.ci_low <= got.value <= got.ci_high and got.ci_low < got.ci_high
    singles = [run_patch(m, p, "head:1.3,mlp:0", "denoise").value for p in pairs]
    np.testing.assert_allclose(got.per_pair, singles, atol=1e-5)


@pytest.mark.parametrize("text, words", [
    ("head:3.0", ["'head:3.0'", "layers 0–2"]),
    ("head:1.4", ["'head:1.4'", "4 heads"]),
    ("k:1.2", ["'k:1.2'", "2 key/value heads"]),
    ("resid:0@9", ["'resid:0@9'", "position 9"]),
    ("head:1.1,head:1.1", ["'head:1.1'", "twice"]),
    ("emb:0", ["'emb:0'", "unknown component"]),
    ("mlp:1.2", ["'mlp:1.2'", "no heads"]),
])
def test_bad_sites_are_named(text, words):
    m = tiny_model("llama")
    with pytest.raises(SweepError) as err:
        check_sites(parse_sites(text), m.components, 9)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_resample_without_a_dataset_says_what_to_do():
    m = tiny_model("llama")
    with pytest.raises(SweepError, match="needs a dataset"):
        run_patch(m, PAIR, "head:1.2", "noise", ablation="resample")
