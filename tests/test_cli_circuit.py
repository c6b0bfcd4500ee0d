"""`patchcore circuit` on the command line: the embedded model with the exact top-edge check and the
faithfulness identities, the history, and bad input (exit 2, one line, before the model loads)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from patchcore.history import History
from patchcore.prompts import PromptPair
from reference_edges import edge_patches
from test_circuits import node
from test_cli_patch import PATCHCORE, db, run_main  # noqa: F401 (db is a fixture)
from test_interventions import ids_of


@pytest.mark.embedded
def test_circuit_on_the_embedded_model(embedded, tmp_path, db, capsys):
    out = tmp_path / "c.json"
    proc = subprocess.run(PATCHCORE + ["circuit", "--method", "eap-ig", "--steps", "2", "--ioi", "2",
                                       "--check-top", "3", "--edges", "50", "--points", "4",
                                       "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["kind"] == "circuit" and got["method"] == "eap-ig" and got["steps"] == 2
    assert got["n_pairs"] == 2 and got["n_edges"] == len(got["edges"]) == 70651
    scores = np.array([e["score"] for e in got["edges"]])
    assert np.all(np.diff(np.abs(scores)) <= 0)
    assert [("exact" in e) for e in got["edges"][:4]] == [True, True, True, False]
    # the exact check equals the reference's edge patching, averaged over the pairs
    want = np.zeros(3)
    for p in got["pairs"]:
        clean, corrupted, a, w = ids_of(embedded.tokenizer, PromptPair(**{k: p[k] for k in
                                                                          ("clean", "corrupted", "answer", "wrong")}))
        edges = [(node(e["sender"]), node(e["receiver"])) for e in got["edges"][:3]]
        want += np.array(edge_patches(embedded.hf, corrupted, clean, a, w, edges)) / 2
    np.testing.assert_allclose([e["exact"] for e in got["edges"][:3]], want, atol=1e-3)
    # faithfulness: 0 edges = the corrupted run = 0, all edges = the clean run = 1
    curve = got["curve"]
    assert curve[0]["edges"] == 0 and curve[-1]["edges"] == 70651 and 50 in [c["edges"] for c in curve]
    assert curve[0]["faithfulness"] == 0 and curve[-1]["faithfulness"] == 1
    assert abs(curve[0]["metric"] - got["corrupted_metric"]) <= 1e-3
    assert abs(curve[-1]["metric"] - got["clean_metric"]) <= 1e-3
    assert got["faithfulness_top_k"] == next(c["faithfulness"] for c in curve if c["edges"] == 50)
    runs = History(db).list()
    assert len(runs) == 1 and runs[0].kind == "circuit" and "circuit eap-ig" in runs[0].title
    assert History(db).get(runs[0].id).settings["check_top"] == 3
    code, text, err = run_main(capsys, "runs", "show", runs[0].id)
    assert code == 0 and "70,651 edges scored" in text and "top 50 edges keep" in text
    code, text, err = run_main(capsys, "runs", "import", out)
    assert code == 0 and History(db).count() == 2


@pytest.mark.parametrize("argv, flag", [
    ([], "--ioi N"),
    (["--ioi", "2", "--method", "eap", "--steps", "3"], "--steps"),
    (["--ioi", "2", "--ablation", "resample"], "--ablation resample"),
    (["--ioi", "2", "--edges", "0"], "--edges"),
    (["--ioi", "2", "--check-top", "-1"], "--check-top"),
    (["--ioi", "2", "--steps", "0"], "--steps"),
    (["--ioi", "2", "--method", "acdc"], "--method"),
    (["--ioi", "2", "--points", "x"], "--points"),
    (["--ioi", "0"], "--ioi"),
    (["--pairs", "/nonexistent/pairs.csv"], "pairs file"),
    (["--ioi", "2", "--json", "/"], "--json"),
])
def test_bad_input_exits_2_before_the_model_loads(argv, flag, capsys, monkeypatch, db):
    import patchcore.models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(patchcore.models, "load_model", no_model)
    code, out, err = run_main(capsys, "circuit", *argv)
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and flag in err, err
    assert History(db).count() == 0
