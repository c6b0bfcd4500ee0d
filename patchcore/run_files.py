"""What a run file must hold, checked field by field before anything is stored.

`runs import` and the History page's import both call check_run_file: a file that does not
match gives one line naming the field (never a database error or a broken page later).
"""
from __future__ import annotations

import datetime as _dt
import math

from .errors import HistoryError

EXPORT_FORMAT = "patchcore-run"
EXPORT_VERSION = 1
# Bounds of an imported run file. Generous for real runs; they only stop values that would break
# the database, the History page or this process.
MAX_DEPTH = 32            # nesting of free-form values (settings, pair meta)
MAX_TEXT = 100_000        # characters in one text value
MAX_NAME = 1_000          # characters in a model name, token or label
MAX_ITEMS = 100_000       # entries in one free-form list or object, or one list of texts
MAX_DIM = 100_000         # layers, heads, tokens, pairs
MAX_INT = 2**63 - 1       # what SQLite stores
ALIGNMENTS = ("role", "position", "none")
METHODS = ("exact", "atp", "path")
PAIR_KEYS = ("clean", "corrupted", "answer", "wrong")
_SINGLE_KEYS = {"model", "sweep", "direction", "metric", "method", "backend", "tokens", "clean_metric",
                "corrupted_metric", "axes", "values", "normalized", "seconds", "forward_rows", "n_patches",
                "batch_size", "device", "dtype", "n_layers", "n_heads", "pair", "clean_top", "corrupted_top",
                "diff_positions", "warnings", "created", "kind", "ablation", "reference", "path",
                "n_kv_heads", "noise_floor", "corrupted_tokens"}
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
    from .ablations import ABLATIONS
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
    n_kv = _int(d.get("n_kv_heads", n_heads), at("n_kv_heads"), 1, MAX_DIM)
    if "ablation" in d:
        _text(d["ablation"], at("ablation"), choices=list(ABLATIONS))
    if "reference" in d:
        _text(d["reference"], at("reference"))
    if "corrupted_tokens" in d:
        other = _texts(d["corrupted_tokens"], at("corrupted_tokens"), max_len=MAX_NAME)
        if other and len(other) != len(tokens):
            _bad(at("corrupted_tokens"), f"has {len(other)} entries, not {len(tokens)} (one per token)")
    if "noise_floor" in d:
        _num(d["noise_floor"], at("noise_floor"), lo=0)
    if d.get("path") is not None:
        path = _obj(d["path"], at("path"))
        _text(path.get("senders"), _at(at("path"), "senders"), max_len=MAX_NAME)
        _texts(path.get("receivers"), _at(at("path"), "receivers"), max_len=MAX_NAME)
    spec = SWEEPS[sweep]
    axes = _texts(d["axes"], at("axes"), max_len=MAX_NAME)
    if axes != list(spec.axes):
        _bad(at("axes"), f"must be {list(spec.axes)} for sweep {sweep}, not {axes[:4]}")
    shape = spec.shape(n_layers, len(tokens), n_kv if spec.head_axis == "kv_head" else n_heads)
    sizes = {"layer": f"n_layers {n_layers}", "position": f"{len(tokens)} tokens",
             "head": f"n_heads {n_heads}", "kv_head": f"n_kv_heads {n_kv}"}
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


def _check_patch_set(d, where: str) -> None:
    """Sites patched together, or a path (PatchSetResult.to_json)."""
    from .ablations import ABLATIONS
    from .metrics import METRICS
    from .sites import parse_site
    from .sweeps import DIRECTIONS

    at = lambda k: _at(where, k)  # noqa: E731
    for k in ("model", "sites", "direction", "metric", "value", "clean_metric", "corrupted_metric"):
        if k not in d:
            _bad(at(k), "is missing")
    _text(d["model"], at("model"), max_len=MAX_NAME)
    for i, s in enumerate(_texts(d["sites"], at("sites"), max_len=MAX_NAME)):
        try:
            parse_site(s)
        except Exception:  # noqa: BLE001 - named below
            _bad(_at(at("sites"), i), f"is not a site like head:9.6 or resid:5@3 ({s[:40]!r})")
    for k in ("receivers", "senders"):
        if d.get(k) is not None:
            _texts(d[k], at(k), max_len=MAX_NAME)
    _text(d["direction"], at("direction"), choices=list(DIRECTIONS))
    _text(d["metric"], at("metric"), choices=list(METRICS))
    _text(d.get("ablation", "corrupted"), at("ablation"), choices=list(ABLATIONS))
    for k in ("value", "normalized", "clean_metric", "corrupted_metric", "ci_low", "ci_high",
              "normalized_low", "normalized_high"):
        if k in d:
            _num(d[k], at(k), null=True)
    n = _int(d.get("n_pairs", 1), at("n_pairs"), 1, MAX_DIM)
    for k in ("per_pair", "per_pair_normalized", "pair_clean", "pair_corrupted"):
        if k in d:
            _grid(d[k], at(k), (n,), f"n_pairs is {n}")
    for k in ("n_sites", "forward_rows"):
        if k in d:
            _int(d[k], at(k))
    if "seconds" in d:
        _num(d["seconds"], at("seconds"), lo=0)
    _texts(d.get("warnings", []), at("warnings"))
    _created(d.get("created"), at("created"))
    for k, v in d.items():
        _free(v, at(k), 1)


def check_result_json(d, where: str = "") -> None:
    """Raise HistoryError (one line naming the field) unless `d` is a whole result JSON: a single
    pair's, a dataset's, or both directions of a dataset ({"kind": "both", ...})."""
    _obj(d, where or "result")
    kind = d.get("kind")
    if kind is not None:
        _text(kind, _at(where, "kind"), choices=("single", "dataset", "both", "patch", "circuit"))
    if kind == "circuit":
        from .circuit_result import check_circuit_json
        check_circuit_json(d, where)
        return
    if kind == "patch":
        _check_patch_set(d, where)
        return
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
    if "values" in doc or doc.get("kind") in ("both", "patch", "circuit"):
        check_result_json(doc)
        return doc, {}, {}, None, doc.get("created") if doc.get("kind") != "both" else None
    raise HistoryError("This file is not a patchcore run (export one with `patchcore runs export ID` "
                       "or the History page).")


