"""PatchResult: tidy table, JSON round trip, NaN handling, warnings."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from patchcore import PatchResult, PromptPair, run_sweep
from patchcore.results import result_warnings

PAIR = PromptPair("Mary met John; John thanked", "John met Mary; Mary thanked", " Mary", " John")
TOKENS = ["The", " cat", " saw", " the", " cat"]  # " cat" twice: duplicates must survive


def make(axes, shape, values=None, clean=2.0, corrupted=-1.0, tokens=TOKENS, **kw):
    if values is None:
        values = np.arange(int(np.prod(shape)), dtype=float).reshape(shape) / 10 - 1
    return PatchResult(model="m", sweep="s", direction="denoise", metric="logit_diff", axes=tuple(axes),
                       values=np.asarray(values, dtype=float), tokens=list(tokens), clean_metric=clean,
                       corrupted_metric=corrupted, pair=PAIR, n_layers=shape[0],
                       n_heads=shape[-1] if "head" in axes else 4, **kw)


@pytest.mark.parametrize("axes, shape, columns", [
    (("layer",), (3,), ["layer", "value", "normalized"]),
    (("layer", "position"), (2, 5), ["layer", "position", "token", "value", "normalized"]),
    (("layer", "head"), (2, 4), ["layer", "head", "value", "normalized"]),
    (("layer", "position", "head"), (2, 5, 3), ["layer", "position", "token", "head", "value", "normalized"]),
])
def test_frame_columns_and_rows(axes, shape, columns):
    r = make(axes, shape)
    df = r.to_frame()
    assert list(df.columns) == columns
    assert len(df) == r.values.size == r.n_patches
    # one row per cell in C order over the axes, values and normalised values alongside
    idx = np.indices(shape).reshape(len(shape), -1).T
    for j, axis in enumerate(axes):
        assert df[axis].tolist() == idx[:, j].tolist()
    np.testing.assert_allclose(df["value"], r.values.ravel())
    np.testing.assert_allclose(df["normalized"], (r.values.ravel() + 1.0) / 3.0)
    if "position" in axes:
        assert df["token"].tolist() == [TOKENS[p] for p in df["position"]]


def test_frame_keeps_token_text_in_order_with_duplicates():
    df = make(("layer", "position"), (2, 5)).to_frame()
    assert df[df.layer == 0]["token"].tolist() == TOKENS
    assert df[df.layer == 1]["token"].tolist() == TOKENS
    assert (df["token"] == " cat").sum() == 4  # 2 positions x 2 layers, not merged
    assert df[df.token == " cat"]["position"].tolist() == [1, 4, 1, 4]


def test_normalized_formula_both_signs():
    r = make(("layer",), (3,), values=[-1.0, 0.5, 2.0], clean=2.0, corrupted=-1.0)
    np.testing.assert_allclose(r.normalized, [0.0, 0.5, 1.0])
    # noising with clean < corrupted still maps clean -> 1 and corrupted -> 0
    r = make(("layer",), (3,), values=[3.0, 1.0, -1.0], clean=-1.0, corrupted=3.0)
    np.testing.assert_allclose(r.normalized, [0.0, 0.5, 1.0])


def test_json_round_trip():
    r = make(("layer", "position", "head"), (2, 5, 3), seconds=1.25, forward_rows=32, batch_size=7,
             clean_top=[(" John", 0.5), (" Mary", 0.25)], diff_positions=[0, 2],
             warnings=["careful"], created="2026-01-01T00:00:00+00:00")
    text = json.dumps(r.to_json(), allow_nan=False)  # strict JSON
    d = json.loads(text)
    for key in ("model", "sweep", "direction", "metric", "tokens", "clean_metric", "corrupted_metric",
                "axes", "values", "normalized", "seconds", "forward_rows"):
        assert key in d
    assert d["axes"] == ["layer", "position", "head"]
    assert np.array(d["values"]).shape == (2, 5, 3)
    back = PatchResult.from_json(d)
    np.testing.assert_array_equal(back.values, r.values)
    np.testing.assert_array_equal(back.normalized, r.normalized)
    for attr in ("model", "sweep", "direction", "metric", "axes", "tokens", "clean_metric",
                 "corrupted_metric", "pair", "n_layers", "n_heads", "seconds", "forward_rows",
                 "batch_size", "clean_top", "diff_positions", "warnings", "created", "method", "backend"):
        assert getattr(back, attr) == getattr(r, attr), attr
    pd.testing.assert_frame_equal(back.to_frame(), r.to_frame())


def test_nan_when_clean_equals_corrupted():
    r = make(("layer", "position"), (2, 5), clean=1.5, corrupted=1.5)
    assert np.isnan(r.normalized).all()
    assert r.to_frame()["normalized"].isna().all()
    assert not r.gap_ok
    d = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert d["normalized"] == [[None] * 5] * 2
    assert PatchResult.from_json(d).values.tolist() == r.values.tolist()
    assert make(("layer",), (3,), clean=1.0, corrupted=1.0 + 1e-9).gap_ok is False
    assert make(("layer",), (3,), clean=1.0, corrupted=1.1).gap_ok is True


def test_nan_and_inf_values_become_null_and_come_back_as_nan():
    r = make(("layer",), (4,), values=[0.5, np.nan, np.inf, -1.0])
    d = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert d["values"] == [0.5, None, None, -1.0]
    assert d["normalized"][1] is None and d["normalized"][0] == pytest.approx(0.5)
    back = PatchResult.from_json(d)
    assert np.isnan(back.values[1]) and np.isnan(back.values[2]) and back.values[3] == -1.0


def test_result_warnings():
    assert result_warnings(make(("layer",), (3,), clean=4.0, corrupted=-3.0)) == []
    nan = result_warnings(make(("layer",), (3,), values=[0.0, np.nan, 1.0]))
    assert len(nan) == 1 and "NaN" in nan[0]
    same = result_warnings(make(("layer",), (3,), clean=0.25, corrupted=0.25))
    assert len(same) == 1 and "undefined" in same[0] and "0.25" in same[0]
    close = result_warnings(make(("layer",), (3,), clean=10.0, corrupted=9.8))
    assert len(close) == 1 and "very close" in close[0]


def test_real_sweep_result_round_trips(tiny, single_thread):
    r = run_sweep(tiny("gpt2"), PAIR, "head_pos", "noise", "logprob", batch_size=7)
    assert r.warnings == result_warnings(r)
    assert r.tokens == ["Mary", " met", " John", ";", " John", " thanked"]
    assert r.diff_positions == [0, 2, 4]
    df = r.to_frame()
    assert len(df) == 3 * 6 * 4 and df["token"].tolist()[:4] == ["Mary"] * 4
    back = PatchResult.from_json(json.loads(json.dumps(r.to_json(), allow_nan=False)))
    np.testing.assert_array_equal(back.values, r.values)
    pd.testing.assert_frame_equal(back.to_frame(), df)
    assert back.pair == PAIR and back.metric == "logprob" and back.direction == "noise"
