"""Run history: every run (dashboard and command line) in an embedded SQLite database.

The database is one file in the user's data directory:
``$PATCHCORE_DATA_DIR/history.sqlite3`` when that variable is set, else the
platform's data folder (``$XDG_DATA_HOME/patchcore`` or
``~/.local/share/patchcore`` on Linux, ``~/Library/Application Support/patchcore``
on macOS, ``%APPDATA%\\patchcore`` on Windows). ``PATCHCORE_HISTORY_DB`` names
the file itself, and ``History(path)`` takes any path.

Two writers at once (two browser tabs, the dashboard and a terminal) are safe:
the database runs in WAL mode, every operation opens its own short
connection with a busy timeout, and writes take the write lock up front
(``BEGIN IMMEDIATE``) and retry while another writer holds it.

A history that cannot be written (a read-only file or folder) can still be
listed, shown and exported: reads fall back to a read-only connection. A run
file is imported only after it passed ``check_run_file``, a full check of its
structure; a bad one gets one line that names the field.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PatchError

DB_NAME = "history.sqlite3"
SCHEMA_VERSION = 1
EXPORT_FORMAT = "patchcore-run"
EXPORT_VERSION = 1
MAX_IMPORT_BYTES = 64 * 2**20
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created     TEXT NOT NULL,            -- when the run was made (UTC, ISO 8601)
    saved       TEXT NOT NULL,            -- when this row was written (import time for imports)
    kind        TEXT NOT NULL,            -- single | dataset | both
    source      TEXT NOT NULL,            -- cli | dashboard | import | api
    title       TEXT NOT NULL,
    model       TEXT NOT NULL,
    sweep       TEXT NOT NULL,
    direction   TEXT NOT NULL,            -- denoise | noise | both
    metric      TEXT NOT NULL,
    n_pairs     INTEGER NOT NULL,
    seconds     REAL NOT NULL,            -- sweep wall time, model loading excluded
    settings    TEXT NOT NULL,            -- JSON: what was asked for
    timings     TEXT NOT NULL,            -- JSON
    result      TEXT NOT NULL             -- JSON: the result as the CLI's --json writes it
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);
"""

_LIST_COLS = ("id", "created", "saved", "kind", "source", "title", "model", "sweep", "direction",
              "metric", "n_pairs", "seconds")


class HistoryError(PatchError):
    """The history database cannot be read or written, or an import file is not a run."""


class _ReadOnly(HistoryError):
    """The history exists but cannot be written (reads still work)."""


class _CannotCreate(HistoryError):
    """The history's file or folder cannot be opened for writing or created (reads still work)."""


def _is_read_only(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return (name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) or "readonly" in str(exc)
            or "unable to open database file" in str(exc))


def data_dir() -> Path:
    """The user's data directory for patchcore (created on first write)."""
    env = os.environ.get("PATCHCORE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "patchcore"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "patchcore"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "patchcore"


def default_db_path() -> Path:
    env = os.environ.get("PATCHCORE_HISTORY_DB")
    return Path(env).expanduser() if env else data_dir() / DB_NAME


@dataclass
class RunInfo:
    """One row of the run list (no result payload)."""
    id: int
    created: str
    saved: str
    kind: str
    source: str
    title: str
    model: str
    sweep: str
    direction: str
    metric: str
    n_pairs: int
    seconds: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _LIST_COLS}


@dataclass
class RunRecord(RunInfo):
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)

    def open(self):
        """The stored result as an object: PatchResult, DatasetResult or BothResult."""
        from .dataset_run import result_from_json
        try:
            return result_from_json(self.result)
        except (KeyError, TypeError, ValueError) as exc:
            raise HistoryError(f"Run {self.id} holds a result this version cannot read ({exc}).") from None

    def to_export(self) -> dict:
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
                "run": {**self.to_dict(), "settings": self.settings, "timings": self.timings,
                        "result": self.result}}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def describe(result_json: dict) -> dict:
    """Index columns of a result JSON: kind, model, sweep, direction, metric, n_pairs, seconds, title."""
    if result_json.get("kind") == "both":
        d, n = result_json["denoise"], result_json["noise"]
        first, kind, direction = d, "both", "both"
        seconds = float(d.get("seconds", 0) or 0) + float(n.get("seconds", 0) or 0)
    else:
        first, direction = result_json, result_json.get("direction", "")
        kind = "dataset" if "n_pairs" in result_json else "single"
        seconds = float(result_json.get("seconds", 0) or 0)
    n_pairs = int(first.get("n_pairs", 1) or 1)
    ds = first.get("dataset") or {}
    if kind == "single":
        clean = (first.get("pair") or {}).get("clean", "")
        what = clean if len(clean) <= 60 else clean[:57] + "..."
    elif ds.get("source") == "ioi":
        what = f"IOI ×{n_pairs} (seed {ds.get('seed')}, {ds.get('corruption')})"
    elif ds.get("source") == "upload":
        what = f"{ds.get('file') or 'uploaded pairs'} ×{n_pairs}"
    else:
        what = f"{n_pairs} pairs"
    title = f"{first.get('sweep', '?')} {direction} – {what}"
    return {"kind": kind, "model": str(first.get("model", "")), "sweep": str(first.get("sweep", "")),
            "direction": direction, "metric": str(first.get("metric", "")), "n_pairs": n_pairs,
            "seconds": seconds, "title": title, "created": first.get("created") or ""}


class History:
    """The run store. Cheap to create; every call opens and closes its own connection."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser() if path else default_db_path()
        self.timeout = timeout
        self._ready = False
        self.read_only = False  # set once a read found the history not writable

    # -- connections -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise _CannotCreate(f"Cannot open the run history at {self.path}: {exc}. Set "
                                f"PATCHCORE_DATA_DIR to a writable folder.") from None
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if not self._ready:
            self._init(con)
        return con

    def _init(self, con: sqlite3.Connection) -> None:
        for attempt in range(50):
            try:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                con.execute("PRAGMA synchronous = NORMAL")
                con.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in filter(str.strip, _SCHEMA.split(";")):
                        con.execute(stmt)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                self.journal_mode = mode
                self._ready = True
                return
            except sqlite3.DatabaseError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    con.close()
                    if _is_read_only(exc):
                        raise _ReadOnly(self._read_only_message(exc)) from None
                    raise HistoryError(f"Cannot use the run history at {self.path}: {exc}. Move that "
                                       f"file away (a new history starts), or set PATCHCORE_DATA_DIR.") from None
                time.sleep(0.05 * (attempt + 1))
        con.close()
        raise HistoryError(f"The run history at {self.path} stayed locked by another program.")

    def _read_only_message(self, exc) -> str:
        return (f"The run history at {self.path} is read-only ({exc}): its runs can be listed, shown and "
                f"exported, not changed. Make the file and its folder writable, or set "
                f"PATCHCORE_HISTORY_DB to another file for new runs.")

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes: for a history whose file or folder is read-only.
        A history that does not exist (and cannot be created) reads as empty."""
        try:
            exists = self.path.exists()
        except OSError as exc:  # a folder on the way that cannot be searched
            raise HistoryError(f"Cannot read the run history at {self.path}: {exc.strerror}.") from None
        if not exists:
            con = sqlite3.connect(":memory:", isolation_level=None)
            con.executescript(_SCHEMA)
        else:
            from urllib.parse import quote
            uri = "file:" + quote(str(self.path.resolve()))
            try:
                con = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=self.timeout, isolation_level=None)
                con.execute("SELECT COUNT(*) FROM runs").fetchone()
            except sqlite3.DatabaseError:
                # WAL mode in a read-only folder without its -shm file: read the file as it is
                con = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _conn(self, write: bool = False):
        if self.read_only and not write:
            con = self._open_read_only()
        else:
            try:
                con = self._connect()
            except (_ReadOnly, _CannotCreate):
                if write:
                    raise
                con = self._open_read_only()
                self.read_only = True
        try:
            yield con
        except sqlite3.DatabaseError as exc:
            if _is_read_only(exc):
                raise HistoryError(self._read_only_message(exc)) from None
            raise HistoryError(f"The run history at {self.path} cannot be used: {exc}.") from None
        finally:
            con.close()

    def _open_read_only(self) -> sqlite3.Connection:
        try:
            return self._connect_read_only()
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"Cannot read the run history at {self.path}: {exc}.") from None

    def _write(self, fn):
        """Run fn(con) inside BEGIN IMMEDIATE ... COMMIT, retrying while the database is busy."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            with self._conn(write=True) as con:
                try:
                    con.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if ("locked" in str(exc) or "busy" in str(exc)) and time.monotonic() < deadline:
                        attempt += 1
                        time.sleep(min(0.5, 0.01 * attempt))
                        continue
                    if _is_read_only(exc):
                        raise HistoryError(self._read_only_message(exc)) from None
                    raise HistoryError(f"The run history is busy ({exc}); try again.") from None
                try:
                    out = fn(con)
                    con.execute("COMMIT")
                    return out
                except BaseException:
                    con.execute("ROLLBACK")
                    raise

    # -- writing ---------------------------------------------------------------------
    def save(self, result, *, source: str = "api", settings: dict | None = None,
             timings: dict | None = None, title: str | None = None, created: str | None = None) -> int:
        """Store a run; result is a PatchResult/DatasetResult/BothResult or its JSON. Returns its id."""
        rj = result if isinstance(result, dict) else result.to_json()
        try:
            payload = json.dumps(rj, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise HistoryError(f"This result cannot be stored as JSON: {exc}.") from None
        info = describe(rj)
        timings = dict(timings or {})
        timings.setdefault("sweep_seconds", info["seconds"])
        row = {
            "created": created or info["created"] or _now(), "saved": _now(), "kind": info["kind"],
            "source": source, "title": title or info["title"], "model": info["model"],
            "sweep": info["sweep"], "direction": info["direction"], "metric": info["metric"],
            "n_pairs": info["n_pairs"], "seconds": info["seconds"],
            "settings": json.dumps(settings or {}, default=str), "timings": json.dumps(timings, default=str),
            "result": payload,
        }
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        return self._write(lambda con: int(con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})",
                                                       row).lastrowid))

    def delete(self, run_id: int) -> bool:
        return self._write(lambda con: con.execute("DELETE FROM runs WHERE id = ?",
                                                   (int(run_id),)).rowcount > 0)

    def rename(self, run_id: int, title: str) -> bool:
        title = title.strip()
        if not title:
            raise HistoryError("A run's title cannot be empty.")
        return self._write(lambda con: con.execute("UPDATE runs SET title = ? WHERE id = ?",
                                                   (title, int(run_id))).rowcount > 0)

    # -- reading ---------------------------------------------------------------------
    def list(self, search: str | None = None, limit: int = 200, offset: int = 0,
             kind: str | None = None) -> list[RunInfo]:
        """Newest stored first. search matches title, model, sweep, direction, metric, source or the
        settings text (case-insensitive); several words must all match."""
        where, args = [], []
        for word in (search or "").split():
            like = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in
                                            ("title", "model", "sweep", "direction", "metric",
                                             "source", "kind", "settings", "CAST(id AS TEXT)")) + ")")
            args += [like] * 9
        if kind:
            where.append("kind = ?")
            args.append(kind)
        sql = f"SELECT {', '.join(_LIST_COLS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        with self._conn() as con:
            rows = con.execute(sql, args + [int(limit), int(offset)]).fetchall()
        return [RunInfo(**dict(r)) for r in rows]

    def count(self) -> int:
        with self._conn() as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def get(self, run_id: int) -> RunRecord:
        with self._conn() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise HistoryError(f"There is no run with id {run_id}. `patchcore runs list` shows the ids.")
        d = dict(row)
        for k in ("settings", "timings", "result"):
            d[k] = json.loads(d[k])
        return RunRecord(**d)

    # -- export / import -------------------------------------------------------------
    def export_json(self, run_id: int) -> dict:
        """A self-contained JSON document of one run (import_json reads it back)."""
        return self.get(run_id).to_export()

    def import_json(self, data) -> int:
        """Store a run exported by export_json (dict, JSON text or bytes). Returns the new id.

        A bare result JSON (what `patchcore sweep --json` writes) is accepted too. The whole file
        is checked first (check_run_file); a bad one raises HistoryError and stores nothing.
        """
        result, settings, timings, title, created = check_run_file(_parse_import(data))
        _check_result(result)
        return self.save(result, source="import", settings=settings, timings=timings, title=title,
                         created=created)


def _parse_import(data):
    if isinstance(data, dict):
        return data
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_IMPORT_BYTES:
            raise HistoryError(f"The file is over {MAX_IMPORT_BYTES // 2**20} MiB; it is not a run export.")
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise HistoryError("The file is not UTF-8 JSON text.") from None
    try:
        return json.loads(data)
    except RecursionError:
        raise HistoryError("The file nests lists or objects too deeply to be a patchcore run.") from None
    except json.JSONDecodeError as exc:
        raise HistoryError(f"The file is not valid JSON ({exc}).") from None
    except ValueError as exc:  # an integer of thousands of digits (int_max_str_digits)
        raise HistoryError(f"The file holds a number too long to read ({str(exc).split(';')[0]}); "
                           f"it is not a patchcore run.") from None
    except TypeError as exc:
        raise HistoryError(f"The file is not valid JSON ({exc}).") from None


def _check_result(result: dict) -> None:
    """Make sure an imported result opens before it is stored (check_run_file makes this a formality)."""
    from .dataset_run import result_from_json
    try:
        result_from_json(result)
        describe(result)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable run
        raise HistoryError(f"The run in this file cannot be read ({type(exc).__name__}: {exc}).") from None


# --------------------------------------------------------------------------- run file schema
# Bounds of an imported run file. Generous for real runs; they only stop values that would break
# the database, the History page or this process.
MAX_DEPTH = 32            # nesting of free-form values (settings, pair meta)
MAX_TEXT = 100_000        # characters in one text value
MAX_NAME = 1_000          # characters in a model name, token or label
MAX_ITEMS = 100_000       # entries in one free-form list or object, or one list of texts
MAX_DIM = 100_000         # layers, heads, tokens, pairs
MAX_INT = 2**63 - 1       # what SQLite stores
ALIGNMENTS = ("role", "position", "none")
METHODS = ("exact", "atp")
PAIR_KEYS = ("clean", "corrupted", "answer", "wrong")
_SINGLE_KEYS = {"model", "sweep", "direction", "metric", "method", "backend", "tokens", "clean_metric",
                "corrupted_metric", "axes", "values", "normalized", "seconds", "forward_rows", "n_patches",
                "batch_size", "device", "dtype", "n_layers", "n_heads", "pair", "clean_top", "corrupted_top",
                "diff_positions", "warnings", "created", "kind"}
_DATASET_KEYS = {"n_pairs", "per_pair", "pair_clean", "pair_corrupted", "ci_low", "ci_high",
                 "normalized_low", "normalized_high", "ci_level", "n_boot", "boot_seed", "aligned_by",
                 "pairs", "dataset", "notes", "rejected"}


def _bad(where: str, problem: str):
    if len(where) > 100:
        where = where[:60] + "…" + where[-30:]
    raise HistoryError(f"This run file cannot be imported: field '{where}' {problem}.")


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _at(where: str, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    key = str(key)[:40]
    return f"{where}.{key}" if where else key


def _obj(v, where: str) -> dict:
    if not isinstance(v, dict):
        _bad(where, f"must be an object, not {_kind(v)}")
    return v


def _text(v, where: str, choices=None, max_len: int = MAX_TEXT) -> str:
    if not isinstance(v, str):
        _bad(where, f"must be text, not {_kind(v)}")
    if len(v) > max_len:
        _bad(where, f"is longer than {max_len:,} characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        _bad(where, "holds text that is not valid Unicode (a lone surrogate)")
    if choices is not None and v not in choices:
        _bad(where, f"must be one of {', '.join(choices)}, not {v[:40]!r}")
    return v


def _int(v, where: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        _bad(where, f"must be a whole number, not {_kind(v)}")
    if not lo <= v <= hi:
        _bad(where, f"must be from {lo:,} to {hi:,}")
    return v


def _num(v, where: str, lo: float | None = None, hi: float | None = None, null: bool = False):
    if v is None and null:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _bad(where, f"must be a number, not {_kind(v)}")
    try:
        x = float(v)
    except OverflowError:
        _bad(where, "is a number too large")
    if not math.isfinite(x):
        _bad(where, "must be a finite number")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        _bad(where, f"must be from {lo:g} to {hi:g}" if lo is not None and hi is not None else
             f"must be at least {lo:g}" if lo is not None else f"must be at most {hi:g}")
    return v


def _list(v, where: str, max_len: int = MAX_ITEMS) -> list:
    if not isinstance(v, list):
        _bad(where, f"must be a list, not {_kind(v)}")
    if len(v) > max_len:
        _bad(where, f"has {len(v):,} entries; at most {max_len:,} are allowed")
    return v


def _texts(v, where: str, max_len: int = MAX_TEXT) -> list:
    for i, t in enumerate(_list(v, where)):
        _text(t, _at(where, i), max_len=max_len)
    return v


def _grid(v, where: str, shape: tuple, because: str) -> None:
    """Nested lists of exactly `shape`; every entry a finite number or null (not computed)."""
    if not shape:
        _num(v, where, null=True)
        return
    if not isinstance(v, list):
        _bad(where, f"must be a list, not {_kind(v)} ({because})")
    if len(v) != shape[0]:
        _bad(where, f"has {len(v):,} entries, not {shape[0]:,} ({because})")
    for i, x in enumerate(v):
        _grid(x, _at(where, i), shape[1:], because)


def _free(v, where: str, depth: int = 0) -> None:
    """Any JSON value within the bounds (settings, pair metadata, fields of newer versions)."""
    if depth > MAX_DEPTH:
        _bad(where, f"nests deeper than {MAX_DEPTH} levels")
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, str):
        _text(v, where)
    elif isinstance(v, int):
        if abs(v) > MAX_INT:
            _bad(where, "is a number too large")
    elif isinstance(v, float):
        _num(v, where)
    elif isinstance(v, list):
        for i, x in enumerate(_list(v, where)):
            _free(x, _at(where, i), depth + 1)
    elif isinstance(v, dict):
        if len(v) > MAX_ITEMS:
            _bad(where, f"has {len(v):,} entries; at most {MAX_ITEMS:,} are allowed")
        for k, x in v.items():
            if not isinstance(k, str):
                _bad(where, f"has a key that is not text ({_kind(k)})")
            _text(k, _at(where, k), max_len=MAX_NAME)
            _free(x, _at(where, k), depth + 1)
    else:
        _bad(where, f"is not a JSON value ({type(v).__name__})")


def _created(v, where: str) -> None:
    if v in (None, ""):
        return
    _text(v, where, max_len=64)
    try:
        _dt.datetime.fromisoformat(v)
    except ValueError:
        _bad(where, f"must be a date and time like 2026-01-31T12:00:00+00:00, not {v[:40]!r}")


def _check_patch_result(d, where: str, dataset: bool) -> None:
    """A single-pair result (PatchResult.to_json), or with `dataset` a DatasetResult's."""
    from .metrics import METRICS
    from .sweeps import DIRECTIONS, SWEEPS

    _obj(d, where)
    at = lambda k: _at(where, k)  # noqa: E731
    required = ["model", "sweep", "direction", "metric", "tokens", "axes", "values", "clean_metric",
                "corrupted_metric", "n_layers", "n_heads", "pair"]
    if dataset:
        required += ["n_pairs", "per_pair", "pair_clean", "pair_corrupted", "ci_low", "ci_high",
                     "normalized_low", "normalized_high"]
    if dataset and "n_pairs" in d:
        _int(d["n_pairs"], at("n_pairs"), 1, MAX_DIM)
    for k in required:
        if k not in d:
            _bad(at(k), "is missing")
    kind = d.get("kind")
    if kind is not None:
        _text(kind, at("kind"), choices=("dataset",) if dataset else ("single", "dataset"))
    _text(d["model"], at("model"), max_len=MAX_NAME)
    sweep = _text(d["sweep"], at("sweep"), choices=list(SWEEPS))
    _text(d["direction"], at("direction"), choices=list(DIRECTIONS))
    _text(d["metric"], at("metric"), choices=list(METRICS))
    if "method" in d:
        _text(d["method"], at("method"), choices=METHODS)
    for k in ("backend", "device", "dtype"):
        if k in d:
            _text(d[k], at(k), max_len=100)
    tokens = _texts(d["tokens"], at("tokens"), max_len=MAX_NAME)
    if not tokens:
        _bad(at("tokens"), "is empty; a run has at least one token")
    if len(tokens) > MAX_DIM:
        _bad(at("tokens"), f"has more than {MAX_DIM:,} entries")
    n_layers = _int(d["n_layers"], at("n_layers"), 1, MAX_DIM)
    n_heads = _int(d["n_heads"], at("n_heads"), 1, MAX_DIM)
    spec = SWEEPS[sweep]
    axes = _texts(d["axes"], at("axes"), max_len=MAX_NAME)
    if axes != list(spec.axes):
        _bad(at("axes"), f"must be {list(spec.axes)} for sweep {sweep}, not {axes[:4]}")
    shape = spec.shape(n_layers, len(tokens), n_heads)
    sizes = {"layer": f"n_layers {n_layers}", "position": f"{len(tokens)} tokens",
             "head": f"n_heads {n_heads}"}
    because = (f"axes {' × '.join(axes)} with {', '.join(sizes[a] for a in axes)} give "
               f"{' × '.join(map(str, shape))}")
    _grid(d["values"], at("values"), shape, because)
    if "normalized" in d:
        _grid(d["normalized"], at("normalized"), shape, because)
    _num(d["clean_metric"], at("clean_metric"))
    _num(d["corrupted_metric"], at("corrupted_metric"))
    pair = _obj(d["pair"], at("pair"))
    for k in PAIR_KEYS:
        if k not in pair:
            _bad(_at(at("pair"), k), "is missing")
        _text(pair[k], _at(at("pair"), k))
    extra = sorted(set(pair) - set(PAIR_KEYS))
    if extra:
        _bad(_at(at("pair"), extra[0]), f"is not a field of a pair ({', '.join(PAIR_KEYS)})")
    if "seconds" in d:
        _num(d["seconds"], at("seconds"), lo=0)
    for k in ("forward_rows", "n_patches", "batch_size"):
        if k in d:
            _int(d[k], at(k))
    for k in ("clean_top", "corrupted_top"):
        for i, item in enumerate(_list(d.get(k, []), at(k), max_len=1000)):
            w = _at(at(k), i)
            if not isinstance(item, list) or len(item) != 2:
                _bad(w, f"must be a [token, probability] pair, not {_kind(item)}")
            _text(item[0], _at(w, 0), max_len=MAX_NAME)
            _num(item[1], _at(w, 1))
    for i, p in enumerate(_list(d.get("diff_positions", []), at("diff_positions"))):
        _int(p, _at(at("diff_positions"), i), 0, len(tokens) - 1)
    _texts(d.get("warnings", []), at("warnings"))
    _created(d.get("created"), at("created"))
    known = _SINGLE_KEYS | (_DATASET_KEYS if dataset else set())
    for k, v in d.items():
        if k not in known:
            _free(v, at(k), 1)
    if not dataset:
        return

    n = _int(d["n_pairs"], at("n_pairs"), 1, MAX_DIM)
    by_pair = f"n_pairs {n} and {because}"
    _grid(d["per_pair"], at("per_pair"), (n,) + shape, by_pair)
    for k in ("pair_clean", "pair_corrupted"):
        _grid(d[k], at(k), (n,), f"n_pairs is {n}")
    for k in ("ci_low", "ci_high", "normalized_low", "normalized_high"):
        _grid(d[k], at(k), shape, because)
    if "ci_level" in d:
        _num(d["ci_level"], at("ci_level"), lo=0.01, hi=0.999)
    if "n_boot" in d:
        _int(d["n_boot"], at("n_boot"), 1, 10**6)
    if "boot_seed" in d:
        _int(d["boot_seed"], at("boot_seed"))
    if "aligned_by" in d:
        _text(d["aligned_by"], at("aligned_by"), choices=ALIGNMENTS)
    pairs = _list(d.get("pairs", []), at("pairs"), max_len=n)
    for i, p in enumerate(pairs):
        w = _at(at("pairs"), i)
        _obj(p, w)
        for k in PAIR_KEYS:
            if k in p:
                _text(p[k], _at(w, k))
        if p.get("line") is not None:
            _int(p["line"], _at(w, "line"), 1)
        _free(p, w, 1)
    ds = _obj(d.get("dataset", {}), at("dataset"))
    for k in ("source", "file", "corruption", "templates", "format"):
        if ds.get(k) is not None:
            _text(ds[k], _at(at("dataset"), k), max_len=MAX_NAME)
    _free(ds, at("dataset"), 1)
    _texts(d.get("notes", []), at("notes"))
    for i, r in enumerate(_list(d.get("rejected", []), at("rejected"))):
        w = _at(at("rejected"), i)
        _obj(r, w)
        if set(r) != {"line", "reason"}:
            _bad(w, "must have exactly the fields line and reason")
        _int(r["line"], _at(w, "line"), 1)
        _text(r["reason"], _at(w, "reason"))


def check_result_json(d, where: str = "") -> None:
    """Raise HistoryError (one line naming the field) unless `d` is a whole result JSON: a single
    pair's, a dataset's, or both directions of a dataset ({"kind": "both", ...})."""
    _obj(d, where or "result")
    kind = d.get("kind")
    if kind is not None:
        _text(kind, _at(where, "kind"), choices=("single", "dataset", "both"))
    if kind != "both":
        is_dataset = kind == "dataset" or "n_pairs" in d or "per_pair" in d
        if kind == "single" and is_dataset:
            _bad(_at(where, "kind"), "says single, but the result has n_pairs or per_pair (a dataset)")
        _check_patch_result(d, where, is_dataset)
        return
    for k in ("denoise", "noise"):
        if k not in d:
            _bad(_at(where, k), "is missing (a run of kind both has denoise and noise)")
        _check_patch_result(d[k], _at(where, k), dataset=True)
        if d[k]["direction"] != k:
            _bad(_at(_at(where, k), "direction"), f"must be {k}")
    den, noi = d["denoise"], d["noise"]
    for k in ("model", "sweep", "metric", "tokens", "n_layers", "n_heads", "n_pairs"):
        if den[k] != noi[k]:
            _bad(_at(_at(where, "noise"), k), "must be the same as in denoise (both directions run the same "
                                               "pairs on the same model)")
    for k, v in d.items():
        if k not in ("kind", "denoise", "noise"):
            _free(v, _at(where, k), 1)


def check_run_file(doc) -> tuple[dict, dict, dict, str | None, str | None]:
    """Check a run file (an export, or a bare result JSON) as a whole before anything is stored.

    Returns (result, settings, timings, title, created). Raises HistoryError with one line that
    names the field at fault."""
    if not isinstance(doc, dict):
        raise HistoryError("This file is not a patchcore run (export one with `patchcore runs export ID` "
                           "or the History page).")
    if doc.get("format") == EXPORT_FORMAT:
        if "version" not in doc:
            _bad("version", "is missing")
        version = _int(doc["version"], "version", 1)
        if version > EXPORT_VERSION:
            raise HistoryError("This run was exported by a newer patchcore; update patchcore to import it.")
        run = doc.get("run")
        if not isinstance(run, dict) or not isinstance(run.get("result"), dict):
            raise HistoryError("The file says it is a patchcore run but holds no result.")
        check_result_json(run["result"], "run.result")
        settings = run.get("settings")
        settings = {} if settings is None else _obj(settings, "run.settings")
        _free(settings, "run.settings", 1)
        timings = run.get("timings")
        timings = {} if timings is None else _obj(timings, "run.timings")
        if len(timings) > 1000:
            _bad("run.timings", "has more than 1,000 entries")
        for k, v in timings.items():
            _text(k, _at("run.timings", k), max_len=MAX_NAME)
            _num(v, _at("run.timings", k), lo=0, null=True)
        title = run.get("title")
        if title is not None:
            _text(title, "run.title", max_len=MAX_NAME)
        _created(run.get("created"), "run.created")
        for k, v in run.items():  # id, saved, kind, model, ...: recomputed from the result on import
            if k not in ("result", "settings", "timings", "title", "created"):
                _free(v, _at("run", k), 1)
        return run["result"], settings, timings, title or None, run.get("created") or None
    if "values" in doc or doc.get("kind") == "both":
        check_result_json(doc)
        return doc, {}, {}, None, doc.get("created") if doc.get("kind") != "both" else None
    raise HistoryError("This file is not a patchcore run (export one with `patchcore runs export ID` "
                       "or the History page).")


def save_run(result, *, source: str, settings: dict | None = None, timings: dict | None = None,
             path=None) -> int | None:
    """Store a run in the default history; returns its id, or None if history is switched off
    (PATCHCORE_NO_HISTORY=1)."""
    if os.environ.get("PATCHCORE_NO_HISTORY", "").strip() not in ("", "0"):
        return None
    return History(path).save(result, source=source, settings=settings, timings=timings)
