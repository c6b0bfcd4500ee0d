"""Command line: `sweep --ioi N`, `sweep --pairs FILE`, `--no-history`, and `patchcore runs ...`
on the embedded model with a history file in a temporary folder."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from patchcore import cli
from patchcore.history import History

pytestmark = pytest.mark.embedded
PATCHCORE = [sys.executable, "-m", "patchcore.cli"]


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main(list(argv)))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("PATCHCORE_DATA_DIR", str(d))
    monkeypatch.delenv("PATCHCORE_HISTORY_DB", raising=False)
    monkeypatch.delenv("PATCHCORE_NO_HISTORY", raising=False)
    return d


def test_sweep_ioi_json_intervals_and_runs_commands(tmp_path, data_dir, capsys):
    out_json = tmp_path / "out.json"
    # one intra-op thread: on a shared 2-core machine torch's thread pool only adds spin-waiting
    env = dict(os.environ, PATCHCORE_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    proc = subprocess.run(PATCHCORE + ["sweep", "--ioi", "4", "--seed", "0", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "stored as run 1" in proc.stderr
    d = json.loads(out_json.read_text())
    assert d["n_pairs"] == 4 and d["sweep"] == "layer_pos" and d["axes"] == ["layer", "position"]
    assert d["tokens"] == ["start", "S1", "and", "IO", "middle", "S2", "after S2", "END"]
    values = np.array(d["values"], dtype=float)
    low, high = np.array(d["ci_low"], dtype=float), np.array(d["ci_high"], dtype=float)
    assert values.shape == low.shape == high.shape == (30, 8)
    assert np.isfinite(values).all()
    assert (low <= values + 1e-9).all() and (values <= high + 1e-9).all()
    assert (high - low).max() > 0  # real intervals, not points
    per_pair = np.array(d["per_pair"], dtype=float)
    np.testing.assert_allclose(values, per_pair.mean(axis=0), atol=1e-9)
    assert d["clean_metric"] > 0 > d["corrupted_metric"]  # the embedded model does IOI
    norm = np.array(d["normalized"], dtype=float)
    # the clean information sits at S2 early and moves to END late (residual stream)
    assert norm[0, 5] > 0.5 and norm[-1, 7] > 0.9
    assert np.allclose(norm[:, :5], 0.0, atol=1e-3)  # before S2 both prompts are identical

    code, out, err = run_main(capsys, "runs", "list")
    assert code == 0 and "IOI ×4 (seed 0, swap)" in out and "layer_pos denoise" in out
    assert out.splitlines()[1].split()[0] == "1"
    code, out, _ = run_main(capsys, "runs", "show", "1")
    assert code == 0 and "Averaged over 4 generated IOI pairs" in out and "95% interval" in out
    export = tmp_path / "run1.json"
    code, _, err = run_main(capsys, "runs", "export", "1", "--out", str(export))
    assert code == 0 and json.loads(export.read_text())["run"]["result"]["n_pairs"] == 4
    code, out, _ = run_main(capsys, "runs", "import", str(export))
    assert code == 0 and "imported as run 2" in out
    code, out, _ = run_main(capsys, "runs", "list", "--json")
    listed = json.loads(out)
    assert [r["id"] for r in listed] == [2, 1] and listed[0]["source"] == "import"
    code, out, _ = run_main(capsys, "runs", "delete", "2")
    assert code == 0 and History().count() == 1
    code, out, err = run_main(capsys, "runs", "show", "99")
    assert code == 2 and err.count("\n") == 1 and "no run with id 99" in err


def test_sweep_pairs_file_rejects_rows_and_no_history(tmp_path, data_dir, capsys, single_thread):
    f = tmp_path / "pairs.csv"
    f.write_text("\n".join([
        "clean,corrupted,answer,wrong",
        '"After John and Mary went to the store, Mary gave a bottle of milk to",'
        '"After John and Mary went to the store, John gave a bottle of milk to"," John"," Mary"',
        '"When Tom and Anna went to the park, Anna gave a ball to",'
        '"When Tom and Anna went to the park, Tom gave a ball to"," Tom"," Anna"',
        '"only two",fields',
        '"The cat sat on the","The dog sat on the"," mat"," mat"',
    ]))
    out_json = tmp_path / "out.json"
    code, out, err = run_main(capsys, "sweep", "--pairs", str(f), "--sweep", "layer", "--no-history",
                              "--json", str(out_json))
    assert code == 0, err
    assert "line 4: has 2 fields" in err and "line 5:" in err and "same token" in err
    d = json.loads(out_json.read_text())
    assert d["n_pairs"] == 2 and len(d["ci_low"]) == 30 and len(d["rejected"]) == 2
    assert not (data_dir / "history.sqlite3").exists() or History().count() == 0
    code, out, err = run_main(capsys, "sweep", "--ioi", "2", "--pairs", str(f))
    assert code == 2 and "not allowed with argument" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("clean,corrupted\na,b\n")
    code, out, err = run_main(capsys, "sweep", "--pairs", str(bad), "--sweep", "layer")
    assert code == 2 and "missing the columns answer, wrong" in err and len(err.strip().splitlines()) == 1
