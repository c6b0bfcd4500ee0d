"""Commands that used to fail after the work or with a traceback (issue 17, points 5, 6 and 9):
bad output paths and bad flags are refused before the model loads, outputs are written all or
none, and a run is stored only when the command succeeded. Every probe: exit 2, one line on
stderr, nothing written, nothing stored.

A tiny llama saved to a folder stands in for a model; in-process runs put a trap on load_model
where the point is that the model never loads.
"""
import errno
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from patchcore import cli
from patchcore.history import History
from tiny import build_hf, embedded_tokenizer

PATCHCORE = [sys.executable, "-m", "patchcore.cli"]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny llama saved like any transformers model folder (weights, config, tokenizer)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_hf("llama").save_pretrained(folder)
    embedded_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "history" / "h.sqlite3"
    monkeypatch.setenv("PATCHCORE_HISTORY_DB", str(path))
    monkeypatch.delenv("PATCHCORE_NO_HISTORY", raising=False)
    return path


def stored(db) -> int:
    return History(db).count() if db.exists() else 0


@pytest.fixture
def no_model(monkeypatch):
    """The model must not load: the command fails on its input first."""
    def trap(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr("patchcore.models.load_model", trap)


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("patchcore: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------- point 5: output paths
def output_probes(tmp):
    probes = []
    for flag in ("--json", "--csv"):
        probes += [([flag, "/proc/x" + flag[1:]], flag),
                   ([flag, tmp / "missing" / ("x." + flag[2:])], flag),
                   ([flag, tmp], flag)]
        if os.path.exists("/dev/full"):
            probes.append(([flag, "/dev/full"], flag))
    probes.append((["--json", tmp / "ok.json", "--csv", "/proc/x.csv"], "--csv"))
    probes.append((["--json", tmp / "ok.json", "--csv", tmp / "ok.json"], "same file"))
    return probes


def test_bad_output_paths_fail_before_the_model_loads(capsys, tmp_path, db, no_model):
    for args, needle in output_probes(tmp_path):
        code, out, err = run_main(capsys, "sweep", "--model", "whatever", "--sweep", "layer", *args)
        one_line_error(code, err, needle)
        assert not (tmp_path / "ok.json").exists()
        assert not (tmp_path / "missing").exists()
    assert stored(db) == 0


def test_json_ok_and_csv_bad_in_a_real_process_writes_and_stores_nothing(tmp_path, db, tiny_folder):
    env = dict(os.environ, PATCHCORE_HISTORY_DB=str(db), OMP_NUM_THREADS="1")
    proc = subprocess.run(PATCHCORE + ["sweep", "--model", str(tiny_folder), "--sweep", "layer",
                                       "--json", str(tmp_path / "ok.json"), "--csv", "/proc/x.csv"],
                          capture_output=True, text=True, timeout=300, env=env)
    one_line_error(proc.returncode, proc.stderr, "--csv", "/proc/x.csv")
    assert not (tmp_path / "ok.json").exists() and stored(db) == 0


def test_a_failed_write_after_the_sweep_leaves_no_file_and_stores_nothing(capsys, tmp_path, db, tiny_folder,
                                                                         monkeypatch):
    """The disk fills up while the CSV is written (after the sweep): the older --json file is kept
    as it was, no new or temporary file is left, and the run is not stored."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.json").write_text("older result")

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    code, _, err = run_main(capsys, "sweep", "--model", tiny_folder, "--sweep", "layer", "--quiet",
                            "--json", out / "r.json", "--csv", out / "r.csv")
    one_line_error(code, err, "--csv", "No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["r.json"]
    assert (out / "r.json").read_text() == "older result"
    assert stored(db) == 0


def test_a_good_run_writes_both_files_then_stores_the_run(capsys, tmp_path, db, tiny_folder):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_main(capsys, "sweep", "--model", tiny_folder, "--sweep", "layer", "--quiet",
                            "--json", out / "r.json", "--csv", out / "r.csv")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["r.csv", "r.json"]  # no temporary file left
    d = json.loads((out / "r.json").read_text())
    assert len((out / "r.csv").read_text().splitlines()) == 1 + 3  # header + one row per layer
    assert oct((out / "r.json").stat().st_mode & 0o777) != oct(0o600)  # a normal file, not a temp file's mode
    assert stored(db) == 1 and History(db).get(1).result["values"] == d["values"]


# ---------------------------------------------------------------- point 6: flags
FLAG_PROBES = [
    (["--clean", "\udcff\udcfe abc"], "--clean"),          # what Python makes of non-UTF-8 bytes in argv
    (["--answer", "\udcff"], "--answer"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", str(10**12)], "--batch-size"),
    (["--ioi", "1", "--seed", "-1"], "--seed"),
    (["--ioi", "0"], "--ioi"),
    (["--ioi", "3", "--n-boot", "5"], "--n-boot"),
    (["--pairs", "/dev/zero"], "5 MiB"),
    (["--method", "atp", "--check-top", "-4"], "--check-top"),
]


@pytest.mark.parametrize("args, needle", FLAG_PROBES, ids=[" ".join(a)[:30] for a, _ in FLAG_PROBES])
def test_bad_flags_exit_2_before_the_model_loads(capsys, db, no_model, args, needle):
    code, out, err = run_main(capsys, "sweep", "--model", "whatever", "--sweep", "layer", *args)
    one_line_error(code, err, needle)
    assert stored(db) == 0


def test_non_utf8_bytes_in_a_real_command_line(tmp_path, db):
    env = dict(os.environ, PATCHCORE_HISTORY_DB=str(db))
    for flag in (b"--clean", b"--answer", b"--corrupted"):
        proc = subprocess.run(PATCHCORE + ["sweep", b"--sweep", b"layer", flag, b"\xff\xfe abc"],
                              capture_output=True, timeout=300, env=env)
        err = proc.stderr.decode("utf-8", "replace")
        one_line_error(proc.returncode, err, flag.decode(), "UTF-8")
    assert stored(db) == 0


@pytest.mark.parametrize("args, needle", [
    (["runs", "show", str(10**30)], "argument id"),
    (["runs", "delete", "-3"], "argument id"),
    (["runs", "list", "--search", "\udcff"], "--search"),
    (["runs", "list", "--limit", "-1"], "--limit"),
    (["runs", "import", "/dev/zero"], "64 MiB"),
])
def test_bad_runs_arguments_exit_2(capsys, db, args, needle):
    code, _, err = run_main(capsys, *args)
    one_line_error(code, err, needle)
    assert stored(db) == 0


def test_runs_export_to_a_bad_path_writes_nothing(capsys, tmp_path, db):
    from test_run_files import single_result
    History(db).save(single_result(), source="cli")
    for path, needle in [(tmp_path / "no" / "r.json", "does not exist"), (tmp_path, "is a folder"),
                         ("/proc/r.json", "no file can be created")]:
        code, _, err = run_main(capsys, "runs", "export", "1", "--out", path)
        one_line_error(code, err, "--out", needle)
    code, _, err = run_main(capsys, "runs", "export", "1", "--out", tmp_path / "r.json")
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["run"]["id"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history", "r.json"]


# ---------------------------------------------------------------- point 9: messages
def test_header_only_pairs_file_says_so_before_the_model_loads(capsys, tmp_path, db, no_model):
    f = tmp_path / "pairs.csv"
    f.write_text("clean,corrupted,answer,wrong\n\n")
    code, _, err = run_main(capsys, "sweep", "--model", "whatever", "--pairs", f)
    one_line_error(code, err, "no pairs under it")
    assert "see the lines above" not in err and "0 rows" not in err
    assert stored(db) == 0


def test_rejected_rows_summary_counts_what_can_run(tokenizer):
    from patchcore.uploads import parse_upload, rejected_summary
    good = '"The cat sat on the","The dog sat on the"," mat"," rug"'
    bad = '"only",two'
    one_bad = parse_upload("clean,corrupted,answer,wrong\n" + bad + "\n", "p.csv", tokenizer)
    assert rejected_summary(one_bad) == ("The file's only row was rejected, so no pair can run; "
                                         "the reason is below.")
    all_bad = parse_upload("clean,corrupted,answer,wrong\n" + bad + "\na,b\n", "p.csv", tokenizer)
    assert rejected_summary(all_bad).startswith("All 2 rows of the file were rejected, so no pair can run")
    mixed = parse_upload("\n".join(["clean,corrupted,answer,wrong", good, bad]), "p.csv", tokenizer)
    assert rejected_summary(mixed) == "1 row of the file was rejected; the other 1 pair can run."
    two = parse_upload("\n".join(["clean,corrupted,answer,wrong", good, good.replace("cat", "cow"), bad, bad]),
                       "p.csv", tokenizer)
    assert rejected_summary(two) == "2 rows of the file were rejected; the other 2 pairs can run."
