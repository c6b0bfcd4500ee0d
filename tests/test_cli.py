"""The command line's contract: arguments, JSON keys and shapes, exit codes, one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from patchcore import cli
from patchcore.prompts import DEFAULT_PAIR

PATCHCORE = [sys.executable, "-m", "patchcore.cli"]


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main(list(argv)))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("argv, needle", [
    (["sweep", "--sweep", "nope"], "invalid choice: 'nope'"),
    (["sweep", "--direction", "sideways"], "invalid choice: 'sideways'"),
    (["sweep", "--metric", "accuracy"], "invalid choice: 'accuracy'"),
    (["sweep", "--clean", ""], "clean prompt is empty"),
    (["sweep", "--answer", " Johnathanson"], "must be exactly one token"),
    (["sweep", "--wrong", " John"], "are the same token"),
    (["sweep", "--corrupted", "After John and Mary went to the store, John Smith gave a bottle of milk to"],
     "different lengths"),
    (["sweep", "--model", "./no/such/folder"], "No model folder"),
    (["sweep", "--model", "/tmp/definitely-missing.gguf"], "No GGUF file"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("patchcore: error:")
    assert needle in lines[0] or needle in out
    assert "Traceback" not in err + out


def test_unknown_hub_model_offline_fails_fast_and_names_embedded(capsys, monkeypatch):
    # The hub is the one boundary we fake: this machine (and CI) cannot reach it anyway,
    # so force the offline answer to keep the test independent of the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_main(capsys, "sweep", "--model", "nobody/no-such-model-xyz")
    assert code == 2
    assert "embedded" in err and "offline" in err
    assert len(err.strip().splitlines()) == 1


def test_length_mismatch_prints_aligned_tokens(capsys):
    code, out, err = run_main(capsys, "sweep", "--corrupted",
                              "After John and Mary went to the store, John Smith gave a bottle of milk to")
    assert code == 2
    assert "<- differs" in out  # the aligned token table goes to stdout


def test_json_contract_and_csv(tmp_path):
    """The issue's contract, end to end in a real process, on the embedded model (layer sweep)."""
    out_json, out_csv = tmp_path / "out.json", tmp_path / "out.csv"
    proc = subprocess.run(PATCHCORE + ["sweep", "--sweep", "layer", "--json", str(out_json),
                                       "--csv", str(out_csv)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out_json.read_text())
    for key in ("model", "sweep", "direction", "metric", "tokens", "clean_metric", "corrupted_metric",
                "axes", "values", "normalized", "seconds", "forward_rows"):
        assert key in d, key
    assert d["sweep"] == "layer" and d["direction"] == "denoise" and d["metric"] == "logit_diff"
    assert d["axes"] == ["layer"]
    assert len(d["tokens"]) == 16
    assert d["clean_metric"] == pytest.approx(5.14, abs=0.05)
    assert d["corrupted_metric"] == pytest.approx(-3.83, abs=0.05)
    assert len(d["values"]) == 30 and len(d["normalized"]) == 30
    # whole-layer residual patches restore everything downstream
    assert np.allclose(d["normalized"], 1.0, atol=0.02)
    assert d["forward_rows"] == 32 and d["seconds"] > 0
    csv = out_csv.read_text().splitlines()
    assert csv[0].split(",")[:2] == ["layer", "value"] and len(csv) == 31


def test_default_sweep_prints_summary_and_table(capsys):
    """No --json: the summary and a compact table on stdout (attn_pos on a short pair)."""
    code, out, err = run_main(capsys, "sweep", "--sweep", "attn_pos", "--quiet",
                              "--clean", "When Anna met Tom, Tom said hi to",
                              "--corrupted", "When Anna met Tom, Anna said hi to",
                              "--answer", " Anna", "--wrong", " Tom")
    assert code == 0
    assert "Baseline:" in out and "Strongest effect" in out
    table = [l for l in out.splitlines() if l.strip().startswith(("layer", "0 ", "29 "))]
    n_tok = len(table[0].split()) - 1  # 'layer' + one column per token
    assert table[0].split()[0] == "layer" and n_tok >= 8
    assert f"{30 * n_tok} patches" in out


def test_noise_direction_and_prob_metric_json(tmp_path, capsys):
    path = tmp_path / "n.json"
    code, out, err = run_main(capsys, "sweep", "--sweep", "layer", "--direction", "noise",
                              "--metric", "prob", "--json", str(path))
    assert code == 0
    d = json.loads(path.read_text())
    assert d["direction"] == "noise" and d["metric"] == "prob"
    assert 0.0 <= d["clean_metric"] <= 1.0 and 0.0 <= d["corrupted_metric"] <= 1.0
    # noising the whole residual at a layer gives the corrupted run's behaviour: score 0
    assert np.allclose(d["normalized"], 0.0, atol=0.02)
    assert DEFAULT_PAIR.clean == d["pair"]["clean"]


def test_remote_without_key_or_with_the_embedded_model_says_what_to_do(capsys, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    code, out, err = run_main(capsys, "sweep", "--remote", "--model", "meta-llama/Llama-3.1-8B")
    assert code == 2 and "NDIF_API_KEY" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_main(capsys, "sweep", "--remote")
    assert code == 2 and "needs a hub id" in err


def test_atp_method_with_top_k_check_and_agreement(capsys, tmp_path):
    path = tmp_path / "atp.json"
    code, out, err = run_main(capsys, "sweep", "--method", "atp", "--sweep", "head",
                              "--check-top", "3", "--compare-exact", "--quiet", "--json", str(path))
    assert code == 0, err
    d = json.loads(path.read_text())
    assert d["method"] == "atp" and d["axes"] == ["layer", "head"] and len(d["values"]) == 30
    assert "Top 3 cells by the estimate, run exactly" in out
    assert "Spearman" in out


def test_bench_subcommand_passes_its_arguments_through(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    assert "--seed-patches" in capsys.readouterr().out
