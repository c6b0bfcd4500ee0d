"""A history that cannot be written is still read: `runs list/show/export` work, changes get one
line that keeps the data (issue 17, point 8).

Permissions do not bind root, so as root the command runs in a user namespace (`unshare --user`)
where it owns the files but has no capabilities: the read-only modes then apply as for any user.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from patchcore.history import History
from test_run_files import export_of, single_result

PATCHCORE = [sys.executable, "-m", "patchcore.cli"]
UNSHARE = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]


def unprivileged(cmd: list) -> list:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("unshare") is None or subprocess.run(UNSHARE + ["true"], capture_output=True).returncode:
        pytest.skip("root, and no user namespace to drop the right to write read-only files")
    return UNSHARE + cmd


def cli(db, *args):
    env = dict(os.environ, PATCHCORE_HISTORY_DB=str(db))
    return subprocess.run(unprivileged(PATCHCORE + list(args)), capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def read_only_history(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "history.sqlite3"
    h = History(db)
    for _ in range(2):
        h.save(single_result(), source="cli", settings={"seed": 0})
    assert sorted(p.name for p in folder.iterdir()) == ["history.sqlite3"]  # WAL files are gone
    db.chmod(0o444)
    folder.chmod(0o555)
    yield db
    folder.chmod(0o755)
    db.chmod(0o644)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_only_history_is_read_and_not_changed(read_only_history, tmp_path):
    db = read_only_history
    before = digest(db)
    proc = cli(db, "runs", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == [2, 1]
    proc = cli(db, "runs", "show", "1")
    assert proc.returncode == 0 and proc.stdout.startswith("run 1: layer_pos denoise"), proc.stderr
    proc = cli(db, "runs", "export", "2")
    assert proc.returncode == 0 and json.loads(proc.stdout)["run"]["id"] == 2, proc.stderr

    good = tmp_path / "run.json"
    good.write_text(json.dumps(export_of(single_result())))
    for args in (["runs", "delete", "1"], ["runs", "import", str(good)]):
        proc = cli(db, *args)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1 and "read-only" in line, line
        assert "Move that file away" not in line and "new history starts" not in line
    assert digest(db) == before
    assert History(db).count() == 2


def test_missing_history_in_a_read_only_folder_reads_as_empty(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = cli(folder / "data" / "history.sqlite3", "runs", "list")
        assert proc.returncode == 0 and "No stored runs yet" in proc.stdout, proc.stderr
        proc = cli(folder / "data" / "history.sqlite3", "runs", "show", "1")
        assert proc.returncode == 2 and "no run with id 1" in proc.stderr
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
