"""Command-line parts for datasets and run history (wired into patchcore/cli.py).

    patchcore sweep --ioi N [--seed S] [--corruption swap|abc] ...   an IOI dataset
    patchcore sweep --pairs FILE [--length T] ...                    uploaded pairs (CSV/JSONL)
    patchcore sweep ... --no-history                                 do not store the run
    patchcore runs list [--search TEXT] [--limit N] [--json]
    patchcore runs show ID [--json]
    patchcore runs export ID [--out PATH]
    patchcore runs import PATH
    patchcore runs delete ID

A dataset's JSON is the single-pair JSON with `values` = mean over pairs, plus
`n_pairs`, `ci_low`, `ci_high` (same shape as `values`), the normalised
interval, every pair's values and the pairs themselves.
"""
from __future__ import annotations

import json
import sys

from .errors import PatchError


def add_dataset_args(s) -> None:
    """Flags of `patchcore sweep` for datasets and history."""
    from .cli import MAX_SEED, int_arg
    from .ioi import MAX_IOI_PAIRS
    from .prompts import MAX_PROMPT_TOKENS
    g = s.add_argument_group("datasets (many pairs: means with 95% bootstrap intervals)")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--ioi", type=int_arg(1, MAX_IOI_PAIRS), default=None, metavar="N",
                       help="run N generated IOI pairs instead of one pair")
    g.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0,
                   help="seed of the IOI generator and the bootstrap (default 0)")
    g.add_argument("--corruption", default="swap", choices=["swap", "abc"],
                   help="IOI corruption: swap (S2 becomes the IO name) or abc (three other names)")
    g.add_argument("--templates", default="mixed", choices=["mixed", "baba", "abba"],
                   help="IOI template order (default: mixed BABA and ABBA)")
    which.add_argument("--pairs", default=None, metavar="FILE",
                       help="run the pairs in a CSV or JSONL file (columns clean, corrupted, answer, wrong)")
    g.add_argument("--length", type=int_arg(1, MAX_PROMPT_TOKENS), default=None, metavar="T",
                   help="with --pairs and a per-position sweep: run the pairs of T tokens "
                        "(default: the largest group of equal length)")
    g.add_argument("--n-boot", type=int_arg(100, 100_000), default=1000,
                   help="bootstrap resamples (default 1000)")
    s.add_argument("--no-history", action="store_true", help="do not store this run in the run history")


def add_runs_parser(sub) -> None:
    from .cli import int_arg, utf8_text
    run_id = int_arg(1, 2**63 - 1)
    r = sub.add_parser("runs", help="list, show, export, import or delete stored runs")
    rs = r.add_subparsers(dest="runs_command", required=True, parser_class=type(r))
    ls = rs.add_parser("list", help="stored runs, newest first")
    ls.add_argument("--search", default=None, type=utf8_text,
                    help="only runs whose title/model/sweep/settings match")
    ls.add_argument("--limit", type=int_arg(1, 1_000_000), default=50)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sh = rs.add_parser("show", help="one run: settings, timings and its summary")
    sh.add_argument("id", type=run_id)
    sh.add_argument("--json", action="store_true", help="print the whole stored run as JSON")
    ex = rs.add_parser("export", help="write one run as a JSON file (import it back with `runs import`)")
    ex.add_argument("id", type=run_id)
    ex.add_argument("--out", default=None, metavar="PATH", help="file to write (default: standard output)")
    im = rs.add_parser("import", help="store a run from an exported JSON file")
    im.add_argument("path")
    de = rs.add_parser("delete", help="delete one run")
    de.add_argument("id", type=run_id)
    for p in (ls, sh, ex, im, de):
        p.add_argument("--db", default=None, metavar="PATH",
                       help="history database file (default: $PATCHCORE_DATA_DIR/history.sqlite3 "
                            "or the platform data folder)")


def is_dataset(args) -> bool:
    return getattr(args, "ioi", None) is not None or bool(getattr(args, "pairs", None))


def read_pairs_file(path: str) -> bytes:
    """The bytes of a --pairs file, read and checked as a file (header, text, rows) before the model
    loads; never more than the upload limit is read (so /dev/zero or a huge file stops at once)."""
    from .datasets import DatasetError
    from .uploads import MAX_UPLOAD_BYTES, parse_upload
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_UPLOAD_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"Cannot read the pairs file '{path}': {exc.strerror}.") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise DatasetError(f"The pairs file '{path}' is over the limit of {MAX_UPLOAD_BYTES // 2**20} MiB. "
                           f"Split it or keep fewer pairs.")
    parse_upload(data, _display_name(path))  # without a tokenizer: only what the file itself holds
    return data


def _display_name(path: str) -> str:
    return path.encode("utf-8", "replace").decode("utf-8")  # a file name need not be UTF-8


def load_dataset(args, model, pairs_data: bytes | None = None):
    """The PairDataset that --ioi N or --pairs FILE ask for (rejected rows reported on stderr)."""
    from .datasets import DatasetError
    from .ioi import generate_ioi
    from .uploads import parse_upload

    if args.ioi is not None and args.pairs:
        raise PatchError("Use either --ioi N or --pairs FILE, not both.")
    if args.ioi is not None:
        ds = generate_ioi(model.tokenizer, args.ioi, seed=args.seed, corruption=args.corruption,
                          templates=args.templates)
    else:
        if pairs_data is None:
            pairs_data = read_pairs_file(args.pairs)
        ds = parse_upload(pairs_data, _display_name(args.pairs), model.tokenizer)
        for issue in ds.rejected:
            print(f"patchcore: skipped {args.pairs} {issue}", file=sys.stderr)
        if not ds.items:
            n = len(ds.rejected)
            why = ("its only row was rejected (the reason is above)" if n == 1 else
                   f"all {n} rows were rejected (the reasons are above)" if n else "it has no rows")
            raise DatasetError(f"No usable pair in '{args.pairs}': {why}.")
    return ds


def run_dataset_cli(args, model, progress=None, pairs_data: bytes | None = None, backend=None):
    """Build the dataset the flags ask for and run it. Returns a DatasetResult."""
    from .dataset_run import run_dataset

    ds = load_dataset(args, model, pairs_data)
    return run_dataset(model, ds, args.sweep, args.direction, args.metric, progress=progress,
                       n_boot=args.n_boot, seed=args.seed, batch_size=args.batch_size,
                       length=args.length, ablation=args.ablation, draws=args.draws, backend=backend)


def summary_lines(result) -> list[str]:
    from .results import DatasetResult, PatchSetResult
    if getattr(result, "kind", None) == "circuit":
        return result.summary_lines()
    if isinstance(result, PatchSetResult):
        from .summary import patch_summary
        return patch_summary(result)
    if isinstance(result, DatasetResult):
        from .dataset_summary import dataset_summary
        return dataset_summary(result)
    from .summary import summarize
    return summarize(result)


def sweep_settings(args) -> dict:
    keys = ["model", "revision", "dtype", "device", "sweep", "direction", "metric", "batch_size",
            "ablation", "draws", "sites", "complement", "senders", "receivers", "method", "steps",
            "edges", "check_top", "points"]
    if is_dataset(args):
        keys += ["ioi", "seed", "corruption", "templates", "pairs", "length", "n_boot"]
    else:
        keys += ["clean", "corrupted", "answer", "wrong"]
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def store_cli_run(args, result, load_seconds: float | None = None) -> int | None:
    """Store a `patchcore sweep` run unless --no-history; a history failure only warns."""
    if getattr(args, "no_history", False):
        return None
    from .history import save_run
    timings = {"sweep_seconds": result.seconds}
    if load_seconds is not None:
        timings["load_seconds"] = load_seconds
    try:
        run_id = save_run(result, source="cli", settings=sweep_settings(args), timings=timings)
    except PatchError as exc:
        print(f"patchcore: warning: the run was not stored in the history: {exc.message}", file=sys.stderr)
        return None
    if run_id is not None and not getattr(args, "quiet", False):
        print(f"patchcore: stored as run {run_id} (patchcore runs show {run_id})", file=sys.stderr)
    return run_id


# --------------------------------------------------------------------------- runs
def _fmt_row(info) -> str:
    when = info.created.replace("T", " ")[:16]
    return (f"{info.id:>5}  {when:<16}  {info.kind:<7}  {info.source:<9}  {info.n_pairs:>5}  "
            f"{info.seconds:>7.1f}  {info.title}")


def cmd_runs(args) -> int:
    from .history import History

    h = History(args.db)
    c = args.runs_command
    if c == "list":
        runs = h.list(search=args.search, limit=args.limit)
        if args.json:
            print(json.dumps([r.to_dict() for r in runs], indent=1))
            return 0
        if not runs:
            print("No stored runs" + (f" match {args.search!r}." if args.search else " yet.")
                  + f" (history: {h.path})")
            return 0
        print(f"{'id':>5}  {'created (UTC)':<16}  {'kind':<7}  {'source':<9}  {'pairs':>5}  "
              f"{'seconds':>7}  title")
        for r in runs:
            print(_fmt_row(r))
        return 0
    if c == "show":
        rec = h.get(args.id)
        if args.json:
            print(json.dumps(rec.to_export(), indent=1))
            return 0
        print(f"run {rec.id}: {rec.title}")
        print(f"created {rec.created} · saved {rec.saved} · source {rec.source} · model {rec.model}")
        print(f"sweep {rec.sweep} · direction {rec.direction} · metric {rec.metric} · pairs {rec.n_pairs} "
              f"· {rec.seconds:.2f} s")
        print("settings: " + json.dumps(rec.settings))
        print("timings: " + json.dumps(rec.timings))
        res = rec.open()
        from .results import BothResult
        print()
        if isinstance(res, BothResult):
            from .dataset_summary import quadrant_summary
            for r in (res.denoise, res.noise):
                print("\n".join(summary_lines(r)))
                print()
            print("\n".join(quadrant_summary(res)))
        else:
            print("\n".join(summary_lines(res)))
        return 0
    if c == "export":
        from .cli import check_output_path, write_files
        if args.out is not None:
            check_output_path("--out", args.out)
        doc = h.export_json(args.id)
        text = json.dumps(doc, indent=1)
        if args.out is not None:
            write_files([("--out", args.out, lambda f: f.write(text))])
            print(f"patchcore: wrote run {args.id} to {args.out}", file=sys.stderr)
        else:
            print(text)
        return 0
    if c == "import":
        from .history import MAX_IMPORT_BYTES
        try:
            with open(args.path, "rb") as f:
                data = f.read(MAX_IMPORT_BYTES + 1)  # the limit is checked on what was read
        except OSError as exc:
            raise PatchError(f"Cannot read '{args.path}': {exc.strerror}.") from None
        run_id = h.import_json(data)
        print(f"imported as run {run_id}")
        return 0
    if c == "delete":
        if not h.delete(args.id):
            raise PatchError(f"There is no run with id {args.id}. `patchcore runs list` shows the ids.")
        print(f"deleted run {args.id}")
        return 0
    raise PatchError(f"Unknown runs command '{c}'.")
