"""Attribution patching: exact where the metric is linear, agreement maths, top-k checks, warnings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import patchcore as pc
from patchcore.attribution import agreement, check_top_k, effects, run_atp, spearman, top_k_cells
from patchcore.backends.hooks import HookBackend
from patchcore.results import PatchResult

from tiny import build_hf, embedded_tokenizer

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("single_thread_module")


class Zero(torch.nn.Module):
    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


def linear_top(family: str, zero_last_mlp: bool):
    """A tiny model whose logits are linear in the last layer's activations.

    The final norm becomes the identity, so logits = unembed(residual). With the last
    MLP zeroed as well, the last attention output reaches the logits linearly too.
    """
    hf = build_hf(family)
    if family == "gpt2":
        hf.transformer.ln_f = torch.nn.Identity()
        blocks = hf.transformer.h
    else:
        hf.model.norm = torch.nn.Identity()
        blocks = hf.model.layers
    if zero_last_mlp:
        blocks[-1].mlp = Zero()
    return pc.wrap_model(hf, embedded_tokenizer(), label=f"linear-top-{family}")


def exact(m, sweep, direction):
    return pc.run_sweep(m, pc.DEFAULT_PAIR, sweep, direction, skip_lower=False,
                        backend=HookBackend(m, reuse_prefix=False, group=False))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_atp_is_exact_where_the_metric_is_linear(family, direction):
    cases = {False: ["layer_pos", "layer", "mlp_pos"], True: ["attn_pos", "head", "head_pos"]}
    for zero_mlp, sweeps in cases.items():
        m = linear_top(family, zero_mlp)
        for sweep in sweeps:
            a, e = run_atp(m, pc.DEFAULT_PAIR, sweep, direction), exact(m, sweep, direction)
            assert a.method == "atp" and a.values.shape == e.values.shape
            last_a, last_e = a.values[-1], e.values[-1]
            if sweep != "layer":  # a whole-layer residual patch always restores the source run
                assert float(np.ptp(last_e)) > 1e-3, "the last layer must move the metric"
            assert float(np.abs(last_a - last_e).max()) <= TOL, f"{family} {sweep}: last layer"
            assert abs(a.clean_metric - e.clean_metric) <= TOL
            assert abs(a.corrupted_metric - e.corrupted_metric) <= TOL
        # below the last layer the model is not linear: AtP is an estimate there, not a copy
        a, e = run_atp(m, pc.DEFAULT_PAIR, "layer_pos", direction), exact(m, "layer_pos", direction)
        assert float(np.abs(a.values[:-1] - e.values[:-1]).max()) > 1e-3


def _result(values, clean=4.0, corrupted=0.0, direction="denoise", sweep="head"):
    values = np.asarray(values, dtype=float)
    axes = pc.SWEEPS[sweep].axes
    return PatchResult(model="m", sweep=sweep, direction=direction, metric="logit_diff", axes=axes,
                       values=values, tokens=["a", "b"], clean_metric=clean, corrupted_metric=corrupted,
                       pair=pc.DEFAULT_PAIR, n_layers=values.shape[0], n_heads=values.shape[-1])


def test_agreement_hand_example():
    est = _result([[1.0, 2.0], [3.0, 4.0]])
    ex = _result([[1.0, 3.0], [2.0, 4.0]])
    rep = agreement(est, ex, k=2)
    # ranks 1 2 3 4 vs 1 3 2 4: rho = 1 - 6 * (1 + 1) / (4 * 15) = 0.8
    assert rep["spearman"] == pytest.approx(0.8)
    # top 2 by |effect| (base = corrupted = 0): {3, 2} vs {3, 1} -> one shared of two
    assert rep["top_k_overlap"] == pytest.approx(0.5) and rep["top_k_shared"] == [3]
    assert rep["max_abs_diff_normalized"] == pytest.approx(0.25)      # |2 - 3| / 4
    assert rep["mean_abs_diff_normalized"] == pytest.approx(0.125)
    # noising: effects are measured from the clean run (4): |effect| ranks flip
    rep = agreement(_result([[1.0, 2.0], [3.0, 4.0]], direction="noise"),
                    _result([[1.0, 3.0], [2.0, 4.0]], direction="noise"), k=1)
    assert rep["top_k_shared"] == [0] and rep["top_k_overlap"] == 1.0
    np.testing.assert_allclose(effects(_result([[1.0, 2.0]], direction="noise")), [[-3.0, -2.0]])


def test_spearman_matches_textbook_formula_and_ties():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    d = a.argsort().argsort() - b.argsort().argsort()
    assert spearman(a, b) == pytest.approx(1 - 6 * (d ** 2).sum() / (30 * (30 ** 2 - 1)))
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ties get average ranks: [1.5, 1.5, 3] vs [1, 2, 3]
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert top_k_cells(np.array([0.1, -5.0, 2.0, np.nan]), 2).tolist() == [1, 2]


@pytest.mark.parametrize("sweep", ["head_pos", "layer_pos"])
def test_check_top_k_equals_exact(tiny, sweep):
    m = tiny("llama")
    atp = run_atp(m, pc.DEFAULT_PAIR, sweep, "denoise")
    ex = exact(m, sweep, "denoise")
    df = check_top_k(m, pc.DEFAULT_PAIR, atp, k=6)
    assert len(df) == 6
    idx = tuple(df[a].to_numpy() for a in atp.axes)
    np.testing.assert_allclose(df["exact"], ex.values[idx], atol=TOL)
    np.testing.assert_allclose(df["atp"], atp.values[idx], atol=1e-9)
    # they are the estimate's top 6 by |effect|, highest first
    top = np.sort(np.abs(effects(atp)).ravel())[::-1][:6]
    np.testing.assert_allclose(np.abs(df["atp"] - atp.corrupted_metric), top, atol=1e-9)
    np.testing.assert_allclose(df["exact_normalized"], ex.normalized[idx], atol=1e-3)
    assert "token" in df.columns


def test_agreement_on_a_real_sweep(tiny):
    m = tiny("qwen2")
    a, e = run_atp(m, pc.DEFAULT_PAIR, "head", "noise"), exact(m, "head", "noise")
    rep = agreement(a, e, k=3)
    assert rep["n_cells"] == e.values.size and 0 <= rep["top_k_overlap"] <= 1
    assert -1 <= rep["spearman"] <= 1
    with pytest.raises(ValueError):
        agreement(a, exact(m, "layer_pos", "noise"))


def test_warnings_for_weak_spots(tiny):
    m = tiny("llama")
    text = lambda r: " ".join(r.warnings)  # noqa: E731
    assert "residual stream" in text(run_atp(m, pc.DEFAULT_PAIR, "layer_pos"))
    assert "first layer's MLP" in text(run_atp(m, pc.DEFAULT_PAIR, "mlp_pos"))
    head = text(run_atp(m, pc.DEFAULT_PAIR, "head"))
    assert "residual stream" not in head and "first layer's MLP" not in head


def _attention_model(q_scale: float):
    hf = build_hf("llama")
    with torch.no_grad():
        for i, layer in enumerate(hf.model.layers):
            layer.self_attn.q_proj.weight.mul_(q_scale if i == 0 else 0.0)
    return pc.wrap_model(hf, embedded_tokenizer(), label=f"q{q_scale}")


def test_saturated_attention_warning():
    sharp = run_atp(_attention_model(1000.0), pc.DEFAULT_PAIR, "head")
    assert any("saturated" in w and "L0H" in w for w in sharp.warnings), sharp.warnings
    flat = run_atp(_attention_model(0.0), pc.DEFAULT_PAIR, "head")      # uniform attention
    assert not any("saturated" in w for w in flat.warnings), flat.warnings


def test_atp_on_sdpa_model_restores_attention_and_works_in_inference_mode():
    m = pc.wrap_model(build_hf("llama", attn_implementation="sdpa"), embedded_tokenizer(), label="sdpa")
    with torch.inference_mode():
        a = run_atp(m, pc.DEFAULT_PAIR, "head_pos")
    assert m.hf.config._attn_implementation == "sdpa"
    assert not any("could not be checked" in w for w in a.warnings)
    b = run_atp(pc.wrap_model(build_hf("llama"), embedded_tokenizer(), label="eager"), pc.DEFAULT_PAIR, "head_pos")
    np.testing.assert_allclose(a.values, b.values, atol=TOL)
    assert a.forward_rows == 2 and a.to_json()["method"] == "atp"
