"""Low precision, honestly: a bf16 run measures and reports its own noise floor."""
from __future__ import annotations

import json

import numpy as np
import torch

import patchcore as pc
from patchcore.results import PatchResult
from patchcore.run_files import check_result_json
from patchcore.summary import summarize
from tiny import build_hf, embedded_tokenizer, tiny_model


def test_bf16_reports_a_measured_noise_floor(single_thread):
    m = pc.wrap_model(build_hf("llama").to(torch.bfloat16), embedded_tokenizer(), label="tiny-bf16")
    r = pc.run_sweep(m, pc.DEFAULT_PAIR, "head")
    r32 = pc.run_sweep(tiny_model("llama"), pc.DEFAULT_PAIR, "head")
    assert r.dtype == "bfloat16" and r.values.dtype == np.float64
    assert 0 < r.noise_floor < 0.5 and r32.noise_floor == 0.0
    assert r.forward_rows > r32.forward_rows          # the control rows ran, and are counted
    assert np.abs(r.values - r32.values).max() < 0.5  # bf16 is close to fp32, not equal
    assert any("rounding noise" in s for s in summarize(r))
    d = json.loads(json.dumps(r.to_json()))
    check_result_json(d)
    assert PatchResult.from_json(d).noise_floor == r.noise_floor
