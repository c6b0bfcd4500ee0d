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
import os
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HistoryError  # noqa: F401 (part of this module's API)
from .run_files import EXPORT_FORMAT, EXPORT_VERSION, check_run_file

DB_NAME = "history.sqlite3"
SCHEMA_VERSION = 1
MAX_IMPORT_BYTES = 64 * 2**20
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created     TEXT NOT NULL,            -- when the run was made (UTC, ISO 8601)
    saved       TEXT NOT NULL,            -- when this row was written (import time for imports)
    kind        TEXT NOT NULL,            -- single | dataset | both | patch | circuit
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
        from .results import result_from_json
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
    if result_json.get("kind") == "circuit":
        from .circuit_result import describe_circuit
        return describe_circuit(result_json)
    if result_json.get("kind") == "patch":   # sites together, or a path: the sites are the title
        r = result_json
        sites = ", ".join(r.get("sites") or []) or "no senders"
        what = (sites if len(sites) <= 50 else sites[:47] + "...") + \
            (f" → {', '.join(r['receivers'])}" if r.get("receivers") else "") + \
            (" (complement)" if r.get("complement") else "")
        n_pairs = int(r.get("n_pairs", 1) or 1)
        return {"kind": "patch", "model": str(r.get("model", "")),
                "sweep": "path" if r.get("receivers") else "patch", "direction": r.get("direction", ""),
                "metric": str(r.get("metric", "")), "n_pairs": n_pairs,
                "seconds": float(r.get("seconds", 0) or 0),
                "title": f"{'path' if r.get('receivers') else 'patch'} {r.get('direction', '')} – {what}"
                         + (f" ×{n_pairs}" if n_pairs > 1 else ""),
                "created": r.get("created") or ""}
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
    from .results import result_from_json
    try:
        result_from_json(result)
        describe(result)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable run
        raise HistoryError(f"The run in this file cannot be read ({type(exc).__name__}: {exc}).") from None


def save_run(result, *, source: str, settings: dict | None = None, timings: dict | None = None,
             path=None) -> int | None:
    """Store a run in the default history; returns its id, or None if history is switched off
    (PATCHCORE_NO_HISTORY=1)."""
    if os.environ.get("PATCHCORE_NO_HISTORY", "").strip() not in ("", "0"):
        return None
    return History(path).save(result, source=source, settings=settings, timings=timings)
