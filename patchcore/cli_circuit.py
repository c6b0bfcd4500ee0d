"""`patchcore circuit`: score every edge (EAP, EAP-IG), check the top ones exactly, faithfulness.

    patchcore circuit [--method eap|eap-ig] [--steps 5] (--ioi N [--seed S] | --pairs FILE)
                      [--edges K] [--check-top T] [--points N] [--ablation corrupted|mean|zero]
                      [--direction denoise|noise] [--metric ...] [--json PATH]

Output: the strongest edges, the exact check, the faithfulness of the top K edges and the curve
in plain words, or --json (circuit_result.py describes it).
"""
from __future__ import annotations


def add_circuit_parser(sub) -> None:
    from .circuits import DEFAULT_EDGES, DEFAULT_POINTS, DEFAULT_STEPS, MAX_STEPS, METHODS
    from .cli import MAX_CHECK_TOP, common_args, int_arg
    from .cli_runs import add_dataset_args

    p = sub.add_parser("circuit", help="circuit discovery: score every edge (EAP, EAP-IG), check the top "
                                       "edges exactly, faithfulness of the top K")
    common_args(p)
    p.add_argument("--method", default="eap-ig", choices=list(METHODS),
                   help="eap: gradient × activation difference at the base run; eap-ig: the gradient "
                        "averaged along the input embeddings from base to source (default)")
    p.add_argument("--steps", type=int_arg(1, MAX_STEPS), default=None, metavar="N",
                   help=f"with --method eap-ig: points on the path (default {DEFAULT_STEPS})")
    p.add_argument("--edges", type=int_arg(1, 10**8), default=DEFAULT_EDGES, metavar="K",
                   help=f"the circuit: the top K edges, whose faithfulness is reported (default {DEFAULT_EDGES})")
    p.add_argument("--check-top", type=int_arg(0, MAX_CHECK_TOP), default=0, metavar="T",
                   help="patch the T top edges exactly (one at a time) and store the exact value beside the score")
    p.add_argument("--points", type=int_arg(0, 200), default=DEFAULT_POINTS, metavar="N",
                   help=f"points of the faithfulness curve on a log grid of edge counts (default "
                        f"{DEFAULT_POINTS}; 0: only no edges, the top K and all edges)")
    add_dataset_args(p)


def cmd_circuit(args) -> int:
    from .circuits import CIRCUIT_ABLATIONS, DEFAULT_STEPS, run_circuit
    from .cli import _progress, check_outputs, finish
    from .cli_runs import is_dataset, load_dataset, read_pairs_file
    from .errors import PatchError
    from .models import ModelSpec, load_model

    outputs = check_outputs(args)
    if not is_dataset(args):
        raise PatchError("patchcore circuit needs a dataset: add --ioi N (generated IOI pairs) or "
                         "--pairs FILE.")
    if args.method == "eap" and args.steps is not None:
        raise PatchError("--steps is for --method eap-ig; EAP takes one gradient at the base run.")
    if args.ablation not in CIRCUIT_ABLATIONS:
        raise PatchError(f"--ablation {args.ablation} is not available for circuits; use "
                         f"{', '.join(CIRCUIT_ABLATIONS)}.")
    pairs_data = read_pairs_file(args.pairs) if args.pairs else None
    model = load_model(ModelSpec(name=args.model, device=args.device, dtype=args.dtype,
                                 revision=args.revision, trust_remote_code=args.trust_remote_code))
    ds = load_dataset(args, model, pairs_data)
    result = run_circuit(model, ds, args.method, steps=args.steps or DEFAULT_STEPS,
                         direction=args.direction, metric=args.metric, ablation=args.ablation,
                         edges=args.edges, check_top=args.check_top, curve_points=args.points,
                         batch_size=args.batch_size, progress=_progress(args.quiet))
    code = finish(args, result, outputs, load_seconds=model.load_seconds)
    if args.check_top and not args.json:
        table = result.to_frame().head(result.check_top)
        print(f"\nTop {result.check_top} edges by the estimate, patched exactly (one edge at a time):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    return code
