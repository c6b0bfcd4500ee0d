"""Run history on a real SQLite file: store, list, search, get, delete, export/import, and two
writers at once (two processes, and several threads)."""
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from patchcore.dataset_run import run_both
from patchcore.results import BothResult
from patchcore.ioi import generate_ioi
from patchcore.engine import run_sweep
from patchcore.history import History, HistoryError, data_dir, default_db_path, save_run
from patchcore.prompts import DEFAULT_PAIR

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def results():
    from tiny import tiny_model
    m = tiny_model("gpt2", seed=2)
    single = run_sweep(m, DEFAULT_PAIR, "layer_pos")
    both = run_both(m, generate_ioi(m.tokenizer, 3, seed=4), "head", n_boot=200)
    return single, both


def test_store_list_search_get_delete(tmp_path, results):
    single, both = results
    h = History(tmp_path / "h.sqlite3")
    a = h.save(single, source="cli", settings={"clean": DEFAULT_PAIR.clean}, timings={"load_seconds": 1.5})
    b = h.save(both, source="dashboard", settings={"file": "my_pairs.csv"})
    assert (a, b) == (1, 2) and h.count() == 2
    runs = h.list()
    assert [r.id for r in runs] == [b, a]  # newest first
    assert runs[0].kind == "both" and runs[0].direction == "both" and runs[0].n_pairs == 3
    assert runs[1].kind == "single" and runs[1].sweep == "layer_pos" and runs[1].model == "tiny-gpt2"
    assert "IOI ×3 (seed 4, swap)" in runs[0].title
    assert [r.id for r in h.list("ioi head")] == [b]          # words must all match, any case
    assert [r.id for r in h.list("my_pairs")] == [b]          # settings text is searched
    assert [r.id for r in h.list("layer_pos cli")] == [a]
    assert h.list("100%_") == []                              # LIKE wildcards are literal
    rec = h.get(a)
    assert rec.settings == {"clean": DEFAULT_PAIR.clean}
    assert rec.timings["load_seconds"] == 1.5 and rec.timings["sweep_seconds"] == pytest.approx(single.seconds)
    back = rec.open()
    np.testing.assert_allclose(back.values, single.values)
    assert back.tokens == single.tokens
    both_back = h.get(b).open()
    assert isinstance(both_back, BothResult)
    np.testing.assert_allclose(both_back.noise.ci_high, both.noise.ci_high)
    assert h.rename(a, "my favourite run") and h.get(a).title == "my favourite run"
    assert h.delete(a) is True and h.delete(a) is False
    with pytest.raises(HistoryError, match="no run with id 1"):
        h.get(a)
    with sqlite3.connect(h.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_export_import_round_trip_and_bad_files(tmp_path, results):
    single, both = results
    src = History(tmp_path / "a.sqlite3")
    dst = History(tmp_path / "b.sqlite3")
    rid = src.save(both, source="dashboard", settings={"seed": 4})
    doc = json.loads(json.dumps(src.export_json(rid)))
    assert doc["format"] == "patchcore-run" and doc["run"]["result"]["kind"] == "both"
    new = dst.import_json(json.dumps(doc).encode())
    rec = dst.get(new)
    assert rec.source == "import" and rec.settings == {"seed": 4}
    assert rec.created == src.get(rid).created and rec.title == src.get(rid).title
    assert rec.result == src.get(rid).result
    # the bare JSON that `patchcore sweep --json` writes imports too
    bare = dst.import_json(json.dumps(single.to_json()))
    np.testing.assert_allclose(dst.get(bare).open().normalized, single.normalized)
    for bad, msg in [(b"\xff\xfe", "not UTF-8"), ("{not json", "not valid JSON"),
                     (json.dumps({"hello": 1}), "not a patchcore run"),
                     (json.dumps({"format": "patchcore-run", "version": 1, "run": {}}), "holds no result"),
                     (json.dumps({"format": "patchcore-run", "version": 99, "run": {}}), "newer patchcore"),
                     (json.dumps({"values": [1, 2], "model": "m"}), "field 'sweep' is missing")]:
        with pytest.raises(HistoryError, match=msg):
            dst.import_json(bad)
    assert dst.count() == 2  # nothing half-imported


def test_data_dir_is_configurable(tmp_path, monkeypatch, results):
    monkeypatch.setenv("PATCHCORE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PATCHCORE_HISTORY_DB", raising=False)
    assert data_dir() == tmp_path / "data"
    assert default_db_path() == tmp_path / "data" / "history.sqlite3"
    rid = save_run(results[0], source="api")
    assert (tmp_path / "data" / "history.sqlite3").is_file() and History().get(rid).source == "api"
    monkeypatch.setenv("PATCHCORE_NO_HISTORY", "1")
    assert save_run(results[0], source="api") is None
    monkeypatch.delenv("PATCHCORE_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert data_dir() == tmp_path / "xdg" / "patchcore"


WRITER = textwrap.dedent("""
    import json, sys
    from patchcore.history import History
    path, tag, n, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    result = json.load(open(payload))
    h = History(path)
    for i in range(n):
        h.save(result, source="api", settings={"writer": tag, "i": i}, title=f"{tag}-{i}")
        if i % 5 == 0:
            h.list(limit=5)  # readers interleave with the other writer
    print("done", tag)
""")


def test_two_processes_write_at_once(tmp_path, results):
    payload = tmp_path / "result.json"
    payload.write_text(json.dumps(results[0].to_json()))
    db = tmp_path / "shared.sqlite3"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n = 40
    procs = [subprocess.Popen([sys.executable, str(script), str(db), tag, str(n), str(payload)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("A", "B")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.startswith("done")
    h = History(db)
    runs = h.list(limit=1000)
    assert len(runs) == 2 * n
    assert len({r.id for r in runs}) == 2 * n
    titles = {r.title for r in runs}
    assert titles == {f"{t}-{i}" for t in "AB" for i in range(n)}
    # every stored result is whole
    for rid in (runs[0].id, runs[-1].id, runs[n].id):
        np.testing.assert_allclose(h.get(rid).open().values, results[0].values)


def test_threads_write_and_read_at_once(tmp_path, results):
    db = tmp_path / "threads.sqlite3"
    rj = results[0].to_json()
    errors = []

    def writer(tag):
        try:
            h = History(db)  # each thread its own History, like two browser tabs
            for i in range(15):
                h.save(rj, source="dashboard", title=f"{tag}-{i}")
                h.list(search=tag, limit=3)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert History(db).count() == 60


def test_unusable_database_file_is_a_message(tmp_path):
    bad = tmp_path / "not_a_db.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError, match="cannot|Cannot"):
        History(bad).list()
