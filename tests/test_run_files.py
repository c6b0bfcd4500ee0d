"""Run files (`patchcore runs import`, the History page's import): checked as a whole against the
run schema before anything is stored; a bad file gets one line naming the field (issue 17, point 7).

The results are built by hand (no model), so every field is known and the tests are cheap.
"""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from patchcore.results import BothResult, DatasetResult
from patchcore.dataset_summary import dataset_summary, quadrant_summary
from patchcore.charts import heatmap
from patchcore.history import History, HistoryError
from patchcore.prompts import PromptPair
from patchcore.results import PatchResult
from patchcore.summary import summarize

PATCHCORE = [sys.executable, "-m", "patchcore.cli"]
PAIR = PromptPair("Anna met Tom, Tom said hi to", "Anna met Tom, Anna said hi to", " Anna", " Tom")
TOKENS = ["Anna", " met", " Tom", ",", " Tom", " said", " hi", " to"]
CREATED = "2026-11-28T08:00:00+00:00"


def single_result() -> PatchResult:
    values = np.linspace(-1, 2, 3 * len(TOKENS)).reshape(3, len(TOKENS))
    values[0, 0] = np.nan  # a cell that was not computed: null in JSON
    return PatchResult(model="tiny-llama", sweep="layer_pos", direction="denoise", metric="logit_diff",
                       axes=("layer", "position"), values=values, tokens=list(TOKENS), clean_metric=2.0,
                       corrupted_metric=-1.0, pair=PAIR, n_layers=3, n_heads=4, seconds=0.5,
                       forward_rows=26, batch_size=8, clean_top=[(" Anna", 0.4)],
                       corrupted_top=[(" Tom", 0.3)], diff_positions=[4], warnings=["a warning"],
                       created=CREATED)


def dataset_result(direction: str = "denoise", n: int = 3) -> DatasetResult:
    rng = np.random.default_rng(0)
    per_pair = rng.normal(size=(n, 3, 4))  # sweep 'head': layer × head
    mean = per_pair.mean(axis=0)
    return DatasetResult(
        model="tiny-llama", sweep="head", direction=direction, metric="logit_diff", axes=("layer", "head"),
        values=mean, tokens=list(TOKENS), clean_metric=2.0, corrupted_metric=-1.0, pair=PAIR, n_layers=3,
        n_heads=4, seconds=1.0, created=CREATED, n_pairs=n, per_pair=per_pair,
        pair_clean=np.full(n, 2.0), pair_corrupted=np.full(n, -1.0), ci_low=mean - 0.1, ci_high=mean + 0.1,
        normalized_low=mean - 0.2, normalized_high=mean + 0.2, aligned_by="none",
        pairs=[{**PAIR.to_dict(), "line": k + 2, "meta": {"template": "t"}} for k in range(n)],
        dataset={"source": "upload", "file": "pairs.csv", "format": "csv"},
        notes=["a note"], rejected=[{"line": 9, "reason": "repeats the pair on line 2"}])


def export_of(result) -> dict:
    return {"format": "patchcore-run", "version": 1,
            "run": {"id": 7, "created": CREATED, "saved": CREATED, "kind": "single", "source": "cli",
                    "title": "my run", "model": "tiny-llama", "sweep": "layer_pos", "direction": "denoise",
                    "metric": "logit_diff", "n_pairs": 1, "seconds": 0.5,
                    "settings": {"model": "tiny-llama", "batch_size": None, "seed": 0},
                    "timings": {"sweep_seconds": 0.5, "load_seconds": 1.5},
                    "result": json.loads(json.dumps(result.to_json()))}}


@pytest.fixture
def history(tmp_path):
    return History(tmp_path / "h.sqlite3")


def test_good_files_import_and_open(history):
    """The three kinds of result, as export and as bare JSON, import and open; what the History
    page draws works on them."""
    single, ds = single_result(), dataset_result()
    both = BothResult(dataset_result("denoise"), dataset_result("noise"))
    for res in (single, ds, both):
        rid = history.import_json(json.dumps(export_of(res)).encode())
        rec = history.get(rid)
        assert rec.title == "my run" and rec.timings["load_seconds"] == 1.5 and rec.created == CREATED
        back = rec.open()
        assert type(back) is type(res)
        history.import_json(json.dumps(res.to_json()))
    assert history.count() == 6
    s = history.get(1).open()
    np.testing.assert_allclose(s.values, single.values)
    assert summarize(s) and heatmap(s).to_dict()
    assert dataset_summary(history.get(3).open())
    assert quadrant_summary(history.get(5).open())
    kinds = [r.kind for r in history.list()]
    assert kinds == ["both", "both", "dataset", "dataset", "single", "single"]


def _set(doc, path, value):
    """doc with the field at `path` (keys and indexes, '.' separated) set to value (DELETE removes it)."""
    doc = copy.deepcopy(doc)
    *head, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for p in head:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()
R = "run.result"

# (probe, path to change, new value, the field the one-line message must name)
SINGLE_PROBES = [
    ("version is text", "version", "abc", "'version'"),
    ("version is a fraction", "version", 1.5, "'version'"),
    ("timings is a list", "run.timings", [1, 2], "'run.timings'"),
    ("a timing is text", "run.timings.sweep_seconds", "abc", "'run.timings.sweep_seconds'"),
    ("seconds is text", f"{R}.seconds", "abc", f"'{R}.seconds'"),
    ("negative seconds", f"{R}.seconds", -3, f"'{R}.seconds'"),
    ("title is an object (Error binding parameter)", "run.title", {"a": 1}, "'run.title'"),
    ("direction is null (NOT NULL constraint failed)", f"{R}.direction", None, f"'{R}.direction'"),
    ("model is a list", f"{R}.model", ["a"], f"'{R}.model'"),
    ("unknown sweep", f"{R}.sweep", "everything", f"'{R}.sweep'"),
    ("unknown direction", f"{R}.direction", "sideways", f"'{R}.direction'"),
    ("unknown metric", f"{R}.metric", "accuracy", f"'{R}.metric'"),
    ("unknown kind", f"{R}.kind", "many", f"'{R}.kind'"),
    ("axes do not match the sweep", f"{R}.axes", ["layer"], f"'{R}.axes'"),
    ("too few layers of values", f"{R}.values", [[0.0] * 8] * 2, f"'{R}.values'"),
    ("a row longer than the tokens", f"{R}.values.1", [0.0] * 9, f"'{R}.values[1]'"),
    ("a value is text", f"{R}.values.2.3", "abc", f"'{R}.values[2][3]'"),
    ("a value is a list", f"{R}.values.2.3", [1], f"'{R}.values[2][3]'"),
    ("n_layers disagrees with values", f"{R}.n_layers", 30, f"'{R}.values'"),
    ("n_layers is text", f"{R}.n_layers", "3", f"'{R}.n_layers'"),
    ("a diff position beyond the tokens", f"{R}.diff_positions", [4, 8], f"'{R}.diff_positions[1]'"),
    ("a negative diff position", f"{R}.diff_positions", [-1], f"'{R}.diff_positions[0]'"),
    ("no tokens", f"{R}.tokens", [], f"'{R}.tokens'"),
    ("a token is a number", f"{R}.tokens.2", 5, f"'{R}.tokens[2]'"),
    ("clean metric is text", f"{R}.clean_metric", "high", f"'{R}.clean_metric'"),
    ("clean metric is missing", f"{R}.clean_metric", DELETE, f"'{R}.clean_metric'"),
    ("pair lacks its answer", f"{R}.pair.answer", DELETE, f"'{R}.pair.answer'"),
    ("pair has an unknown field", f"{R}.pair.extra", "x", f"'{R}.pair.extra'"),
    ("top tokens are not pairs", f"{R}.clean_top", [[" Anna"]], f"'{R}.clean_top[0]'"),
    ("warnings is text", f"{R}.warnings", "careful", f"'{R}.warnings'"),
    ("created is not a date", "run.created", "yesterday", "'run.created'"),
    ("a huge integer", f"{R}.n_heads", 10**40, f"'{R}.n_heads'"),
    ("n_pairs is text", f"{R}.n_pairs", "abc", f"'{R}.n_pairs'"),
    ("a lone surrogate in the model name", f"{R}.model", "\ud800", f"'{R}.model'"),
    ("settings is a list", "run.settings", [1], "'run.settings'"),
]


@pytest.mark.parametrize("probe, path, value, field", SINGLE_PROBES, ids=[p[0] for p in SINGLE_PROBES])
def test_bad_single_run_files_get_one_line_naming_the_field(history, probe, path, value, field):
    doc = _set(export_of(single_result()), path, value)
    with pytest.raises(HistoryError) as exc:
        history.import_json(json.dumps(doc).encode())
    msg = exc.value.message
    assert len(msg.splitlines()) == 1 and field in msg, msg
    assert history.count() == 0  # nothing stored


DATASET_PROBES = [
    ("per_pair has one pair too few", f"{R}.per_pair", "drop", f"'{R}.per_pair'"),
    ("n_pairs disagrees with per_pair", f"{R}.n_pairs", 4, f"'{R}.per_pair'"),
    ("an interval has the wrong shape", f"{R}.ci_low.0", [0.0], f"'{R}.ci_low[0]'"),
    ("pair_clean is a number", f"{R}.pair_clean", 2.0, f"'{R}.pair_clean'"),
    ("per_pair is missing", f"{R}.per_pair", DELETE, f"'{R}.per_pair'"),
    ("a pair is text", f"{R}.pairs.1", "a pair", f"'{R}.pairs[1]'"),
    ("a pair's line is text", f"{R}.pairs.1.line", "two", f"'{R}.pairs[1].line'"),
    ("rejected rows without a reason", f"{R}.rejected.0", {"line": 9}, f"'{R}.rejected[0]'"),
    ("unknown alignment", f"{R}.aligned_by", "magic", f"'{R}.aligned_by'"),
    ("interval level above 1", f"{R}.ci_level", 95, f"'{R}.ci_level'"),
    ("dataset is a list", f"{R}.dataset", ["ioi"], f"'{R}.dataset'"),
    ("notes hold a number", f"{R}.notes", [1], f"'{R}.notes[0]'"),
    ("kind single with pairs", f"{R}.kind", "single", f"'{R}.kind'"),
]


@pytest.mark.parametrize("probe, path, value, field", DATASET_PROBES, ids=[p[0] for p in DATASET_PROBES])
def test_bad_dataset_run_files(history, probe, path, value, field):
    doc = export_of(dataset_result())
    if value == "drop":
        value = doc["run"]["result"]["per_pair"][:-1]
    doc = _set(doc, path, value)
    with pytest.raises(HistoryError) as exc:
        history.import_json(json.dumps(doc))
    assert len(exc.value.message.splitlines()) == 1 and field in exc.value.message, exc.value.message
    assert history.count() == 0


def test_bad_both_directions_files(history):
    good = export_of(BothResult(dataset_result("denoise"), dataset_result("noise")))
    for path, value, field in [(f"{R}.noise.direction", "denoise", f"'{R}.noise.direction'"),
                               (f"{R}.noise", DELETE, f"'{R}.noise'"),
                               (f"{R}.noise.sweep", "layer", f"'{R}.noise.axes'"),
                               (f"{R}.noise.model", "other", f"'{R}.noise.model'"),
                               (f"{R}.denoise.values.0", [1, 2], f"'{R}.denoise.values[0]'")]:
        with pytest.raises(HistoryError) as exc:
            history.import_json(json.dumps(_set(good, path, value)))
        assert field in exc.value.message, exc.value.message
    assert history.count() == 0


@pytest.mark.parametrize("data, needle", [
    (b"[" * 100_000 + b"]" * 100_000, "nests"),                     # RecursionError in json
    (b'{"format": "patchcore-run", "version": ' + b"7" * 5000 + b"}", "number too long"),  # int digits
    (json.dumps({**single_result().to_json(), "clean_metric": float("nan")}).encode(),  # a NaN literal
     "'clean_metric' must be a finite number"),
], ids=["deep nesting", "5000-digit integer", "NaN"])
def test_unreadable_json_is_one_line(history, data, needle):
    with pytest.raises(HistoryError) as exc:
        history.import_json(data)
    assert needle in exc.value.message and len(exc.value.message.splitlines()) == 1
    assert history.count() == 0


def test_deep_free_form_values_and_bare_results_are_checked_too(history):
    deep = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(HistoryError, match="'run.settings.a.*nests deeper"):
        history.import_json(_set(export_of(single_result()), "run.settings", {"a": deep}))
    bare = single_result().to_json()
    bare["values"] = bare["values"][:2]
    with pytest.raises(HistoryError, match=r"field 'values' has 2 entries, not 3"):
        history.import_json(json.dumps(bare))
    with pytest.raises(HistoryError, match="not a patchcore run"):
        history.import_json(json.dumps([1, 2]))
    assert history.count() == 0


def _cli(*args, env_db):
    import os
    env = dict(os.environ, PATCHCORE_HISTORY_DB=str(env_db))
    return subprocess.run(PATCHCORE + list(args), capture_output=True, text=True, timeout=300, env=env)


def test_runs_import_command_exit_2_one_line(tmp_path):
    """The command line: every probe exits 2 with one line, no traceback, nothing stored."""
    db = tmp_path / "h.sqlite3"
    files = {"deep.json": b"[" * 100_000 + b"]" * 100_000,
             "digits.json": b'{"values": ' + b"1" * 5000 + b"}",
             "version.json": json.dumps(_set(export_of(single_result()), "version", "abc")).encode(),
             "timings.json": json.dumps(_set(export_of(single_result()), "run.timings", [])).encode(),
             "axes.json": json.dumps(_set(export_of(single_result()), f"{R}.values", [[1.0]] * 3)).encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        proc = _cli("runs", "import", str(tmp_path / name), env_db=db)
        assert proc.returncode == 2, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("patchcore: error:")
    # /dev/zero: the size limit is checked on what was read, and reading stops there
    proc = _cli("runs", "import", "/dev/zero", env_db=db)
    assert proc.returncode == 2 and "over 64 MiB" in proc.stderr, proc.stderr
    assert History(db).count() == 0
    good = tmp_path / "good.json"
    good.write_text(json.dumps(export_of(single_result())))
    proc = _cli("runs", "import", str(good), env_db=db)
    assert proc.returncode == 0 and "imported as run 1" in proc.stdout, proc.stderr
