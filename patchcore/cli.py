"""`patchcore` command line. Bad input: exit status 2 and one line on stderr, no traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        print(f"patchcore: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (e.g. in-process callers): env is read too late
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def build_parser() -> argparse.ArgumentParser:
    from .metrics import METRICS
    from .prompts import DEFAULT_PAIR
    from .sweeps import DIRECTIONS, SWEEPS

    p = _Parser(prog="patchcore", description="Activation patching from the command line.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("sweep", help="run one patching sweep and print or save the result")
    s.add_argument("--model", default="embedded",
                   help="'embedded' (offline default), a hub id, a model folder or a .gguf file")
    s.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--trust-remote-code", action="store_true",
                   help="run code from the model's repository (only for authors you trust)")
    s.add_argument("--clean", default=DEFAULT_PAIR.clean)
    s.add_argument("--corrupted", default=DEFAULT_PAIR.corrupted)
    s.add_argument("--answer", default=DEFAULT_PAIR.answer)
    s.add_argument("--wrong", default=DEFAULT_PAIR.wrong)
    s.add_argument("--sweep", default="layer_pos", choices=list(SWEEPS))
    s.add_argument("--direction", default="denoise", choices=list(DIRECTIONS))
    s.add_argument("--metric", default="logit_diff", choices=list(METRICS))
    s.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: from memory budget)")
    s.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    s.add_argument("--csv", default=None, metavar="PATH", help="write the tidy table as CSV")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s.add_argument("--method", default="exact", choices=["exact", "atp"],
                   help="exact patching, or atp: attribution patching, an estimate of every cell "
                        "from two forwards and one backward")
    s.add_argument("--check-top", type=int, default=0, metavar="K",
                   help="with --method atp: also run the K highest-ranked cells exactly")
    s.add_argument("--compare-exact", action="store_true",
                   help="with --method atp: run the exact sweep too and report the agreement")
    s.add_argument("--remote", action="store_true",
                   help="run on NDIF with nnsight (key from NDIF_API_KEY); --model is a hub id; "
                        "see docs/ndif.md")
    b = sub.add_parser("bench", help="benchmark: seed loop vs plain batched hooks vs patchcore",
                       add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    from .cli_runs import add_dataset_args, add_runs_parser  # datasets, run history (issue 5)
    add_dataset_args(s)
    add_runs_parser(sub)
    return p


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None

    def show(done, total):
        print(f"\rpatching {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
    return show


def compact_table(result) -> str:
    """Normalised values as text: layers down, positions/heads across (max over heads for head_pos)."""
    s = result.normalized
    if len(result.axes) == 3:
        s = np.nanmax(s, axis=2)
    if s.ndim == 1:
        s = s[:, None]
        cols = ["all"]
    elif "position" in result.axes:
        cols = [t.strip()[:6] or "·" for t in result.tokens]
    else:
        cols = [f"h{h}" for h in range(s.shape[1])]
    lines = ["layer " + " ".join(f"{c:>6}" for c in cols)]
    for layer, row in enumerate(s):
        lines.append(f"{layer:>5} " + " ".join("     ." if not np.isfinite(v) else f"{v:6.2f}" for v in row))
    return "\n".join(lines)


def cmd_sweep(args) -> int:
    from .engine import run_sweep
    from .models import ModelSpec, load_model
    from .prompts import PromptPair

    from .cli_runs import is_dataset, run_dataset_cli, store_cli_run, summary_lines
    if args.remote:
        return cmd_remote_sweep(args)
    model = load_model(ModelSpec(name=args.model, device=args.device, dtype=args.dtype,
                                 revision=args.revision, trust_remote_code=args.trust_remote_code))
    if is_dataset(args):  # --ioi N / --pairs FILE: means over pairs with intervals
        result = run_dataset_cli(args, model, progress=_progress(args.quiet))
    elif args.method == "atp":
        return cmd_atp(args, model)
    else:
        pair = PromptPair(args.clean, args.corrupted, args.answer, args.wrong)
        result = run_sweep(model, pair, args.sweep, args.direction, args.metric,
                           batch_size=args.batch_size, progress=_progress(args.quiet))
    store_cli_run(args, result, load_seconds=model.load_seconds)
    return write_outputs(args, result, summary_lines)


def cmd_atp(args, model) -> int:
    """Attribution patching: the estimate, then optional exact checks of it."""
    from .attribution import agreement, agreement_text, check_top_k, run_atp
    from .cli_runs import store_cli_run, summary_lines
    from .engine import run_sweep
    from .prompts import PromptPair

    pair = PromptPair(args.clean, args.corrupted, args.answer, args.wrong)
    result = run_atp(model, pair, args.sweep, args.direction, args.metric)
    store_cli_run(args, result, load_seconds=model.load_seconds)
    code = write_outputs(args, result, summary_lines)
    if args.check_top > 0:
        table = check_top_k(model, pair, result, k=args.check_top)
        print(f"\nTop {args.check_top} cells by the estimate, run exactly:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.compare_exact:
        exact = run_sweep(model, pair, args.sweep, args.direction, args.metric,
                          batch_size=args.batch_size, progress=_progress(args.quiet))
        print("\n" + agreement_text(agreement(result, exact)))
    return code


def cmd_remote_sweep(args) -> int:
    """One sweep on NDIF: weights stay on the server, two requests per sweep."""
    from .cli_runs import is_dataset, store_cli_run, summary_lines
    from .errors import SweepError
    from .backends.nnsight import make_remote_backend
    from .engine import run_sweep
    from .prompts import PromptPair

    if is_dataset(args):
        raise SweepError("Datasets (--ioi/--pairs) run locally only for now; drop --remote.")
    if args.model == "embedded" or args.model.endswith(".gguf"):
        raise SweepError("--remote needs a hub id that NDIF serves, e.g. meta-llama/Llama-3.1-8B.")
    status = None if args.quiet else (lambda state, what: print(f"NDIF: {state} {what or ''}",
                                                                 file=sys.stderr))
    model, backend = make_remote_backend(args.model, revision=args.revision, on_status=status)
    pair = PromptPair(args.clean, args.corrupted, args.answer, args.wrong)
    result = run_sweep(model, pair, args.sweep, args.direction, args.metric,
                       progress=_progress(args.quiet), backend=backend)
    store_cli_run(args, result, load_seconds=model.load_seconds)
    return write_outputs(args, result, summary_lines)


def write_outputs(args, result, summary_lines) -> int:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=1)
    if args.csv:
        result.to_frame().to_csv(args.csv, index=False)
    if not args.json:
        print("\n".join(summary_lines(result)))
        print()
        print(compact_table(result))
        print(f"\n{result.n_patches} patches, {result.forward_rows} forward rows, "
              f"{result.seconds:.2f} s on {'NDIF' if result.backend == 'remote' else result.device}")
    return 0


def main(argv=None) -> int:
    _quiet_libraries()
    from .errors import PatchError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser: every argument after 'bench' is the benchmark's
        from .bench import main as bench_main
        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "runs":
            from .cli_runs import cmd_runs
            return cmd_runs(args)
    except PatchError as exc:
        print(f"patchcore: error: {exc.message.splitlines()[0]}", file=sys.stderr)
        for line in exc.message.splitlines()[1:]:  # aligned token tables etc. go to stdout
            print(line)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("patchcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `patchcore runs show 1 | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
