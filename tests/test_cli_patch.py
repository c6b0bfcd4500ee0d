"""`patchcore patch` and `patchcore path` on the command line: JSON, the reference, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from patchcore import cli
from patchcore.history import History
import reference_sites as ref
from reference_paths import path_metric
from test_interventions import ids_of
from patchcore.prompts import DEFAULT_PAIR

PATCHCORE = [sys.executable, "-m", "patchcore.cli"]
THREE_HEADS = "head:23.3,head:29.1,head:20.0"   # the demo's strongest heads (README)


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "h.sqlite3"
    monkeypatch.setenv("PATCHCORE_HISTORY_DB", str(path))
    return path


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.embedded
def test_patch_on_the_embedded_model_equals_the_reference(embedded, tmp_path, db):
    out = tmp_path / "p.json"
    proc = subprocess.run(PATCHCORE + ["patch", "--sites", THREE_HEADS, "--direction", "noise",
                                       "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["sites"] == THREE_HEADS.split(",") and got["direction"] == "noise"
    assert got["ablation"] == "corrupted" and set(got) >= {"value", "normalized", "clean_metric",
                                                           "corrupted_metric"}
    clean, corrupted, a, w = ids_of(embedded.tokenizer, DEFAULT_PAIR)
    src = ref.capture(embedded.hf, corrupted, "head")[1]
    writes = [("head", int(s[5:7]), int(s[8]), None, src[int(s[5:7])]) for s in THREE_HEADS.split(",")]
    want = ref.metric("logit_diff", ref.patched_logits(embedded.hf, clean, writes), a, w)
    assert abs(got["value"] - want) <= 1e-3
    assert abs(got["normalized"] - (want - got["corrupted_metric"]) /
               (got["clean_metric"] - got["corrupted_metric"])) <= 1e-3
    assert History(db).count() == 1 and History(db).list()[0].kind == "patch"


@pytest.mark.embedded
def test_path_on_the_embedded_model_equals_the_reference(embedded, capsys, tmp_path, db):
    code, out, err = run_main(capsys, "path", "--senders", "head:20.0,head:23.3", "--receivers",
                              "head:29.1:q", "--json", tmp_path / "p.json", "--no-history")
    assert code == 0, err
    got = json.loads((tmp_path / "p.json").read_text())
    assert got["senders"] == ["head:20.0", "head:23.3"] and got["receivers"] == ["q:29.1"]
    clean, corrupted, a, w = ids_of(embedded.tokenizer, DEFAULT_PAIR)
    want = path_metric(embedded.hf, corrupted, clean, a, w,
                       [("head", 20, 0, None), ("head", 23, 3, None)], [("q", 29, 1)])
    assert abs(got["value"] - want) <= 1e-3


def test_sender_sweep_json_has_axes_like_a_sweep(tiny_folder, capsys, tmp_path, db):
    code, out, err = run_main(capsys, "path", "--model", tiny_folder, "--senders", "head:*",
                              "--receivers", "logits", "--json", tmp_path / "s.json")
    assert code == 0, err
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["axes"] == ["layer", "head"] and np.array(got["values"]).shape == (3, 4)
    assert got["path"] == {"senders": "head:*", "receivers": ["logits"]} and got["method"] == "path"
    assert History(db).count() == 1


@pytest.mark.parametrize("argv, words", [
    (["patch", "--sites", "emb:1"], ["'emb:1'", "unknown component"]),
    (["patch", "--sites", "head:3.1"], ["'head:3.1'", "layers 0–2"]),
    (["patch", "--sites", "k:1.2"], ["'k:1.2'", "2 key/value heads"]),
    (["patch", "--sites", "resid:0@99"], ["'resid:0@99'", "position 99"]),
    (["patch", "--sites", "head:1.1,head:1.1"], ["'head:1.1'", "twice"]),
    (["patch", "--sites", "head:1.1", "--ablation", "resample"], ["--ablation resample", "--ioi"]),
    (["path", "--senders", "resid:1", "--receivers", "logits"], ["'resid:1'", "heads or MLPs"]),
    (["path", "--senders", "head:0.1", "--receivers", "head:2.1:x"], ["'head:2.1:x'", "q, k and v"]),
    (["sweep", "--sweep", "head_k", "--ablation", "fancy"], ["--ablation", "invalid choice"]),
])
def test_bad_input_exits_2_with_one_line_and_stores_nothing(tiny_folder, capsys, db, argv, words):
    code, out, err = run_main(capsys, *argv, "--model", tiny_folder)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert not db.exists() or History(db).count() == 0


def test_sweep_takes_an_ablation(tiny_folder, capsys, tmp_path, db):
    code, _, err = run_main(capsys, "sweep", "--model", tiny_folder, "--sweep", "head_v",
                            "--ablation", "zero", "--direction", "noise", "--json", tmp_path / "z.json")
    assert code == 0, err
    got = json.loads((tmp_path / "z.json").read_text())
    assert got["ablation"] == "zero" and got["axes"] == ["layer", "kv_head"]
    assert np.array(got["values"]).shape == (3, 2)


def test_a_remote_dataset_is_accepted_and_asks_for_the_key(capsys, monkeypatch, db):
    """Datasets go to NDIF too (two requests per token length): with no key the command says
    what to do, after the flags were accepted."""
    from nnsight import CONFIG
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    code, out, err = run_main(capsys, "sweep", "--remote", "--model", "org/some-model", "--ioi", "2")
    assert code == 2 and "API key" in err and "locally only" not in err
