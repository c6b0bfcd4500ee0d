"""The hypothesis check's engine side: heatmap cell -> site (site_of / cell_of), the top N
cells, the three runs of run_check and what they say, on tiny random models."""
from __future__ import annotations

import numpy as np
import pytest

from patchcore import Cancelled, PromptPair, run_sweep
from patchcore.errors import SweepError
from patchcore.hypothesis import (HypothesisCheck, complement_reading, pairs_of, position_problem, run_check,
                                  split_senders, top_sites)
from patchcore.interventions import run_patch
from patchcore.results import DatasetResult, PatchResult
from patchcore.sites import parse_site
from patchcore.sweeps import SWEEPS, cell_of, site_of
from test_interventions import PAIR
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread_module")

# the table: a cell of each sweep -> the site it patches
CELLS = {
    ("layer_pos", (2, 5)): "resid:2@5", ("attn_pos", (1, 3)): "attn:1@3", ("mlp_pos", (0, 7)): "mlp:0@7",
    ("head", (2, 1)): "head:2.1", ("head_pos", (1, 4, 3)): "head:1.3@4", ("head_q", (2, 3)): "q:2.3",
    ("head_k", (1, 1)): "k:1.1", ("head_v", (0, 1)): "v:0.1", ("head_pattern", (2, 0)): "pattern:2.0",
    ("layer", (1,)): "resid:1", ("attn", (2,)): "attn:2", ("mlp", (0,)): "mlp:0",
}


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")   # 3 layers, 4 query heads sharing 2 key/value heads


def test_the_cell_to_site_table_covers_every_sweep():
    assert {s for s, _ in CELLS} == set(SWEEPS)
    for (sweep, cell), want in CELLS.items():
        assert str(site_of(sweep, cell)) == want, sweep
        assert cell_of(sweep, parse_site(want)) == cell, sweep


def test_cell_of_inverts_site_of_on_every_cell_and_refuses_other_kinds(llama):
    n_tokens = 9
    for name, spec in SWEEPS.items():
        cells = spec.grid(llama.components, n_tokens)
        for row in cells:
            cell = tuple(int(row[("layer", "position", spec.head_axis).index(a)]) for a in spec.axes)
            site = site_of(spec, cell)
            assert cell_of(spec, site) == cell
            others = [o for o in SWEEPS.values() if o.component is not spec.component
                      or o.per_position != spec.per_position or o.per_head != spec.per_head]
            assert all(cell_of(o, site) is None for o in others), (name, site)


@pytest.mark.parametrize("bad", [(1,), (1, 2, 3), (-1, 2), ("a", 2), None])
def test_site_of_refuses_a_cell_of_the_wrong_shape(bad):
    with pytest.raises(SweepError, match="head sweep has 2 numbers"):
        site_of("head", bad)


@pytest.mark.parametrize("sweep", list(SWEEPS))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_a_cells_site_patched_alone_gives_the_cells_value(llama, sweep, direction):
    """The mapping means what the heatmap means: run_patch of site_of(cell) = the sweep's cell."""
    result = run_sweep(llama, PAIR, sweep, direction)
    flat = np.abs(result.values - result.values.mean()).reshape(-1)
    for i in (int(np.argmax(flat)), result.values.size // 2):     # a cell that moves, and another
        cell = tuple(int(x) for x in np.unravel_index(i, result.values.shape))
        got = run_patch(llama, PAIR, [site_of(sweep, cell)], direction)
        assert got.value == pytest.approx(float(result.values[cell]), abs=1e-4), (sweep, cell)


def _result(values, direction="denoise", sweep="head", axes=("layer", "head")) -> PatchResult:
    values = np.asarray(values, dtype=float)
    return PatchResult(model="m", sweep=sweep, direction=direction, metric="logit_diff", axes=axes,
                       values=values, tokens=["a"] * 4, clean_metric=1.0, corrupted_metric=0.0, pair=PAIR,
                       n_layers=values.shape[0], n_heads=values.shape[-1])


def test_top_sites_are_the_strongest_effects_in_either_direction():
    vals = [[0.1, 0.9, np.nan], [0.5, -2.0, 0.7]]
    assert top_sites(_result(vals), 3) == ["head:0.1", "head:1.2", "head:1.0"]   # restored most
    # noising: the effect is the share destroyed, 1 - score: the lowest scores first
    assert top_sites(_result(vals, "noise"), 2) == ["head:1.1", "head:0.0"]
    assert top_sites(_result(vals), 10)[-1] == "head:1.1" and len(top_sites(_result(vals), 10)) == 5
    assert top_sites(_result(vals), 0) == []
    # no normalised score (clean = corrupted): the largest raw change from the target run
    flat = _result([[0.2, -3.0], [1.0, 0.0]])
    flat.clean_metric = flat.corrupted_metric = 0.0
    assert top_sites(flat, 2) == ["head:0.1", "head:1.0"]


def test_pairs_and_positions_of_a_dataset_result():
    single = _result([[0.1]])
    assert pairs_of(single) == [PAIR]
    other = PromptPair("A B", "C D", " x", " y")
    kw = {f: getattr(_result([[0.1]]), f) for f in PatchResult.__dataclass_fields__}
    ds = DatasetResult(**kw, n_pairs=2, pairs=[PAIR.to_dict(), {**other.to_dict(), "line": 3}], aligned_by="role")
    assert pairs_of(ds) == [PAIR, other]
    assert "lined up by role" in position_problem(ds, ["head:1.2@3", "mlp:0"])
    assert position_problem(ds, ["head:1.2", "mlp:0"]) is None
    assert position_problem(single, ["resid:1@3"]) is None
    for aligned in ("position", "none"):   # positions are tokens (run_patch checks the lengths)
        ds.aligned_by = aligned
        assert position_problem(ds, ["resid:1@3"]) is None


def test_split_senders_keeps_heads_and_mlps():
    assert split_senders(["head:1.2", "resid:0@3", "mlp:2", "q:1.1", "head:0.0@4"]) == \
        (["head:1.2", "mlp:2", "head:0.0@4"], ["resid:0@3", "q:1.1"])


def test_run_check_is_three_patch_runs_and_reads_them(llama):
    sites = ["head:2.1", "mlp:1", "head:0.3"]
    progress = []
    check = run_check(llama, [PAIR], sites, progress=lambda d, t: progress.append((d, t)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    want = {"sufficiency": run_patch(llama, PAIR, sites, "denoise"),
            "necessity": run_patch(llama, PAIR, sites, "noise"),
            "complement": run_patch(llama, PAIR, sites, "denoise", complement=True)}
    for name, res in check.runs().items():
        assert res.value == pytest.approx(want[name].value, abs=1e-6), name
        assert res.sites == sites and res.complement == (name == "complement")
    assert check.complement.n_sites == 3 * 4 - 2 + 3 - 1     # other heads, other MLPs
    assert check.reading("sufficiency").startswith("Together they bring back")
    assert check.reading("necessity").startswith("Corrupting them leaves")
    assert check.reading("complement") == complement_reading(check.complement.normalized)
    assert check.verdict().startswith("In short: these 3 sites")
    assert check.interval("sufficiency") is None    # one pair: no interval


def test_necessity_uses_the_ablation_and_the_other_runs_the_clean_activations(llama):
    check = run_check(llama, [PAIR], ["mlp:1"], ablation="zero")
    assert check.necessity.ablation == "zero"
    assert check.sufficiency.ablation == check.complement.ablation == "corrupted"
    assert check.necessity.value == pytest.approx(
        run_patch(llama, PAIR, ["mlp:1"], "noise", ablation="zero").value, abs=1e-6)


def test_on_a_dataset_each_run_has_an_interval(llama):
    pairs = [PAIR, PromptPair("When Anna and Tom met, Tom thanked her", "When Tom and Anna met, Anna thanked her",
                              " Anna", " Tom"),
             PromptPair("When Mary and John met, Mary thanked him", "When John and Mary met, John thanked him",
                        " John", " Mary")]
    check = run_check(llama, pairs, ["head:2.1", "mlp:2"], n_boot=200)
    for name in ("sufficiency", "necessity", "complement"):
        lo, hi = check.interval(name)
        assert lo <= getattr(check, name).normalized <= hi and lo < hi
        assert getattr(check, name).n_pairs == 3


def test_sites_covering_their_kind_have_no_complement_and_cancel_stops(llama):
    check = run_check(llama, [PAIR], ["mlp:0", "mlp:1", "mlp:2"])
    assert check.complement is None and list(check.runs()) == ["sufficiency", "necessity"]
    assert check.notes == ["No complement run: the sites already cover every site of their kind."]
    assert check.sufficiency.value == pytest.approx(run_patch(llama, PAIR, "mlp:0,mlp:1,mlp:2").value, abs=1e-6)
    with pytest.raises(Cancelled):
        run_check(llama, [PAIR], ["mlp:0"], cancel=lambda: True)


def _check(s, n):
    r = lambda v, d: type("R", (), {"normalized": v, "direction": d, "n_pairs": 1})()  # noqa: E731
    return HypothesisCheck(["a", "b"], r(s, "denoise"), r(n, "noise"))


@pytest.mark.parametrize("s, n, words", [
    (1.0, 0.1, "are enough on their own, and the model needs them: together they carry the behaviour."),
    (0.9, 0.95, "are enough on their own, and the model does not need them: something else can do the job "
                "too (a backup)."),
    (0.5, 0.5, "are part of the story (not enough alone), and the model partly needs them."),
    (0.05, 0.9, "are not enough on their own, and the model does not need them."),
])
def test_the_verdict_in_one_sentence(s, n, words):
    assert _check(s, n).verdict() == f"In short: these 2 sites {words}"


def test_no_verdict_without_a_normalised_score():
    assert _check(np.nan, 0.1).verdict().startswith("No verdict")
