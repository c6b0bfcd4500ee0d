"""`patchcore` command line. Bad input: exit status 2 and one line on stderr, no traceback."""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile

import numpy as np

EXIT_BAD_INPUT = 2
MAX_BATCH_SIZE = 65536   # rows per forward pass; the engine halves a batch that does not fit
MAX_SEED = 2**32 - 1     # the usual seed range (numpy, the dashboard)
MAX_CHECK_TOP = 10_000


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        print(f"patchcore: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def int_arg(lo: int, hi: int):
    """argparse type: a whole number from lo to hi (a bad one is a one-line usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text[:30]}' is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a whole number from {lo:,} to {hi:,}, not {text[:30]}")
        return value
    return parse


def utf8_text(text: str) -> str:
    """argparse type: text that is valid UTF-8 (undecodable bytes in argv become lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise argparse.ArgumentTypeError(f"is not valid UTF-8 text (a byte at character {exc.start + 1} "
                                         f"is not UTF-8); give the text in UTF-8") from None
    return text


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (e.g. in-process callers): env is read too late
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def build_parser() -> argparse.ArgumentParser:
    from .sweeps import SWEEPS

    p = _Parser(prog="patchcore", description="Activation patching from the command line.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("sweep", help="run one patching sweep and print or save the result")
    common_args(s)
    s.add_argument("--sweep", default="layer_pos", choices=list(SWEEPS))
    s.add_argument("--csv", default=None, metavar="PATH", help="write the tidy table as CSV")
    s.add_argument("--method", default="exact", choices=["exact", "atp"],
                   help="exact patching, or atp: attribution patching, an estimate of every cell "
                        "from two forwards and one backward")
    s.add_argument("--check-top", type=int_arg(0, MAX_CHECK_TOP), default=0, metavar="K",
                   help="with --method atp: also run the K highest-ranked cells exactly")
    s.add_argument("--compare-exact", action="store_true",
                   help="with --method atp: run the exact sweep too and report the agreement")
    s.add_argument("--remote", action="store_true",
                   help="run on NDIF with nnsight (key from NDIF_API_KEY); --model is a hub id; "
                        "see docs/ndif.md")
    b = sub.add_parser("bench", help="benchmark: seed loop vs plain batched hooks vs patchcore",
                       add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    from .cli_circuit import add_circuit_parser
    from .cli_patch import add_patch_parsers
    from .cli_runs import add_dataset_args, add_runs_parser  # datasets, run history (issue 5)
    add_dataset_args(s)
    add_patch_parsers(sub)
    add_circuit_parser(sub)
    add_runs_parser(sub)
    return p


def common_args(s) -> None:
    """Model, prompt pair, direction, metric, ablation, batch size, JSON and progress flags."""
    from .ablations import ABLATIONS, DEFAULT_DRAWS
    from .metrics import METRICS
    from .prompts import DEFAULT_PAIR
    from .sweeps import DIRECTIONS

    s.add_argument("--model", default="embedded", type=utf8_text,
                   help="'embedded' (offline default), a hub id, a model folder or a .gguf file")
    s.add_argument("--revision", default=None, type=utf8_text, help="hub revision (branch, tag or commit)")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--trust-remote-code", action="store_true",
                   help="run code from the model's repository (only for authors you trust)")
    s.add_argument("--clean", default=DEFAULT_PAIR.clean, type=utf8_text)
    s.add_argument("--corrupted", default=DEFAULT_PAIR.corrupted, type=utf8_text)
    s.add_argument("--answer", default=DEFAULT_PAIR.answer, type=utf8_text)
    s.add_argument("--wrong", default=DEFAULT_PAIR.wrong, type=utf8_text)
    s.add_argument("--direction", default="denoise", choices=list(DIRECTIONS))
    s.add_argument("--metric", default="logit_diff", choices=list(METRICS))
    s.add_argument("--ablation", default="corrupted", choices=list(ABLATIONS),
                   help="what a patch writes: the other prompt's activation (corrupted), zeros, the "
                        "mean over a reference set, or other prompts of the dataset (resample)")
    s.add_argument("--draws", type=int_arg(1, 64), default=DEFAULT_DRAWS, metavar="K",
                   help=f"with --ablation resample: draws per pair, averaged (default {DEFAULT_DRAWS})")
    s.add_argument("--batch-size", type=int_arg(1, MAX_BATCH_SIZE), default=None, metavar="N",
                   help="rows per forward (default: from memory budget)")
    s.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")


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

    from .cli_runs import is_dataset, read_pairs_file, run_dataset_cli
    outputs = check_outputs(args)  # before any work: a bad path must not cost a sweep
    if args.remote:
        return cmd_remote_sweep(args, outputs)
    pairs_data = read_pairs_file(args.pairs) if args.pairs else None
    model = load_model(ModelSpec(name=args.model, device=args.device, dtype=args.dtype,
                                 revision=args.revision, trust_remote_code=args.trust_remote_code))
    if is_dataset(args):  # --ioi N / --pairs FILE: means over pairs with intervals
        result = run_dataset_cli(args, model, progress=_progress(args.quiet), pairs_data=pairs_data)
    elif args.method == "atp":
        return cmd_atp(args, model, outputs)
    else:
        pair = PromptPair(args.clean, args.corrupted, args.answer, args.wrong)
        warn_about_pair(model, pair)
        result = run_sweep(model, pair, args.sweep, args.direction, args.metric,
                           batch_size=args.batch_size, progress=_progress(args.quiet),
                           ablation=args.ablation, draws=args.draws, seed=args.seed)
    return finish(args, result, outputs, load_seconds=model.load_seconds)


def warn_about_pair(model, pair) -> None:
    """Advice that does not stop the run (an answer without its leading space, a clean prompt
    the model gets wrong): one warning line each on stderr."""
    from .advice import pair_advice
    from .prompts import prepare_pair
    for advice in pair_advice(model, prepare_pair(model.tokenizer, pair)):
        print(f"patchcore: warning: {advice.message}", file=sys.stderr)


def cmd_atp(args, model, outputs) -> int:
    """Attribution patching: the estimate, then optional exact checks of it."""
    from .attribution import agreement, agreement_text, check_top_k, run_atp
    from .engine import run_sweep
    from .prompts import PromptPair

    pair = PromptPair(args.clean, args.corrupted, args.answer, args.wrong)
    result = run_atp(model, pair, args.sweep, args.direction, args.metric)
    table = exact = None
    if args.check_top > 0:
        table = check_top_k(model, pair, result, k=args.check_top)
    if args.compare_exact:
        exact = run_sweep(model, pair, args.sweep, args.direction, args.metric,
                          batch_size=args.batch_size, progress=_progress(args.quiet))
    code = finish(args, result, outputs, load_seconds=model.load_seconds)
    if table is not None:
        print(f"\nTop {args.check_top} cells by the estimate, run exactly:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if exact is not None:
        print("\n" + agreement_text(agreement(result, exact)))
    return code


def cmd_remote_sweep(args, outputs) -> int:
    """One sweep on NDIF: weights stay on the server, two requests per sweep (a dataset: two per
    token length, every pair of that length in the same requests)."""
    from .cli_runs import is_dataset, read_pairs_file, run_dataset_cli
    from .errors import SweepError
    from .backends.nnsight import make_remote_backend
    from .engine import run_sweep
    from .prompts import PromptPair

    if args.model == "embedded" or args.model.endswith(".gguf"):
        raise SweepError("--remote needs a hub id that NDIF serves, e.g. meta-llama/Llama-3.1-8B.")
    status = None if args.quiet else (lambda state, what: print(f"NDIF: {state} {what or ''}",
                                                                 file=sys.stderr))
    pairs_data = read_pairs_file(args.pairs) if args.pairs else None
    model, backend = make_remote_backend(args.model, revision=args.revision, on_status=status)
    if is_dataset(args):
        result = run_dataset_cli(args, model, _progress(args.quiet), pairs_data, backend=backend)
        return finish(args, result, outputs, load_seconds=model.load_seconds)
    pair = PromptPair(args.clean, args.corrupted, args.answer, args.wrong)
    result = run_sweep(model, pair, args.sweep, args.direction, args.metric,
                       progress=_progress(args.quiet), backend=backend)
    return finish(args, result, outputs, load_seconds=model.load_seconds)


def finish(args, result, outputs, load_seconds=None) -> int:
    """The end of a sweep: output files first (all or none), then the history, then the summary.
    A run is stored only when its files were written."""
    from .cli_runs import store_cli_run, summary_lines

    writers = {"--json": lambda f: json.dump(result.to_json(), f, indent=1),
               "--csv": lambda f: result.to_frame().to_csv(f, index=False)}
    write_files([(flag, path, writers[flag]) for flag, path in outputs])
    store_cli_run(args, result, load_seconds=load_seconds)
    if args.json:
        return 0
    print("\n".join(summary_lines(result)))
    if hasattr(result, "n_patches"):   # a sweep: its table too
        print()
        print(compact_table(result))
        print(f"\n{result.n_patches} patches, {result.forward_rows} forward rows, "
              f"{result.seconds:.2f} s on {'NDIF' if result.backend == 'remote' else result.device}")
    else:
        print(f"\n{result.n_pairs} pair(s), {result.forward_rows} forward rows, "
              f"{result.seconds:.2f} s on {result.device}")
    return 0


# --------------------------------------------------------------------------- output files
def check_outputs(args) -> list[tuple[str, str]]:
    """The output files a sweep will write, as (flag, path), each checked before the sweep runs."""
    outputs = [(flag, path) for flag, path in (("--json", args.json), ("--csv", getattr(args, "csv", None)))
               if path is not None]
    for flag, path in outputs:
        check_output_path(flag, path)
    if len(outputs) == 2 and os.path.realpath(outputs[0][1]) == os.path.realpath(outputs[1][1]):
        from .errors import PatchError
        raise PatchError(f"--json and --csv name the same file '{outputs[0][1]}'; give two paths.")
    return outputs


def _is_stream(path: str) -> bool:
    """An existing device or pipe (/dev/stdout, /dev/null): written in place, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output_path(flag: str, path: str) -> None:
    """Raise a one-line PatchError naming `flag` unless `path` can take a new file, without
    writing anything there. Run before any work, so a bad path costs nothing."""
    from .errors import PatchError

    if not path:
        raise PatchError(f"{flag} needs a file path.")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise PatchError(f"Cannot write {flag} '{path}': {exc.strerror}. Choose another path.") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise PatchError(f"{flag} '{path}' is a folder; give a file path in it, e.g. "
                         f"{os.path.join(path, 'result' + ('.csv' if flag == '--csv' else '.json'))}.")
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISCHR(st.st_mode):  # a zero-byte write shows a device that refuses data (/dev/full)
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"")
                finally:
                    os.close(fd)
            except OSError as exc:
                raise PatchError(f"Cannot write {flag} '{path}': {exc.strerror}. "
                                 f"Choose another path.") from None
        return
    if st is not None and not os.access(path, os.W_OK):
        raise PatchError(f"Cannot write {flag} '{path}': the file is read-only. Choose another path.")
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise PatchError(f"Cannot write {flag} '{path}': the folder {os.path.dirname(path) or folder} "
                         f"does not exist. Create it first, or choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".patchcore-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PatchError(f"Cannot write {flag} '{path}': no file can be created in {folder} "
                         f"({exc.strerror}). Choose another folder.") from None


def write_files(files) -> None:
    """Write every (flag, path, write(f)) file, or none of them.

    Regular files are written to a temporary file in the same folder and moved into place
    (os.replace) only after every file was written, so a failure leaves no new or half-written
    file behind and keeps an older file at that path. Devices and pipes are written in place.
    """
    from .errors import PatchError

    staged, placed = [], []   # (tmp, final, flag, path); finals already moved into place
    current = None
    try:
        for flag, path, write in files:
            current = (flag, path)
            if _is_stream(path):
                continue
            final = os.path.realpath(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp",
                                       dir=os.path.dirname(final))
            staged.append((tmp, final, flag, path))
            os.fchmod(fd, _new_file_mode(final))
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for flag, path, write in files:
            if _is_stream(path):
                current = (flag, path)
                with open(path, "w", encoding="utf-8", newline="") as f:
                    write(f)
        for tmp, final, flag, path in staged:
            current = (flag, path)
            os.replace(tmp, final)
            placed.append(final)
    except BaseException as exc:
        for tmp, *_ in staged:
            _remove(tmp)
        for final in placed:  # all or none: a failing --csv leaves no new --json either
            _remove(final)
        if not isinstance(exc, OSError):
            raise
        flag, path = current
        raise PatchError(f"Cannot write {flag} '{path}': {exc.strerror or exc}. Nothing was written; "
                         f"choose another path.") from None


def _new_file_mode(final: str) -> int:
    try:
        return stat.S_IMODE(os.stat(final).st_mode)  # replacing a file keeps its permissions
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
        if args.command in ("patch", "path"):
            from .cli_patch import cmd_patch
            return cmd_patch(args)
        if args.command == "circuit":
            from .cli_circuit import cmd_circuit
            return cmd_circuit(args)
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
