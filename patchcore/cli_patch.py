"""`patchcore patch` (sites together) and `patchcore path` (path patching).

    patchcore patch --sites head:9.6,head:10.0 [--complement] [--direction ...] [--metric ...]
                    [--ablation corrupted|zero|mean|resample] [--ioi N --seed S | --pairs FILE]
    patchcore path --senders 'head:*' --receivers logits|all|SITES [same flags]

One patched forward carries every site (or sender) at once; with a dataset every pair is a
row of the same forward. Output: a plain-language summary, or --json.
"""
from __future__ import annotations


def add_patch_parsers(sub) -> None:
    from .cli import common_args
    from .cli_runs import add_dataset_args

    p = sub.add_parser("patch", help="patch a set of sites together (are they enough? needed?)")
    common_args(p)
    p.add_argument("--sites", required=True, metavar="SITES",
                   help="comma-separated sites COMPONENT:LAYER[.HEAD][@POSITION], e.g. head:9.6,resid:5@3")
    p.add_argument("--complement", action="store_true",
                   help="patch every site of the same kinds except the listed ones")
    add_dataset_args(p)
    q = sub.add_parser("path", help="path patching: the effect of senders through receivers")
    common_args(q)
    q.add_argument("--senders", required=True, metavar="SITES",
                   help="heads and MLPs (head:9.6,mlp:3), or a sweep of them: head:*, mlp:*, head:L.*")
    q.add_argument("--receivers", default="logits", metavar="SITES",
                   help="logits (direct effect), all (nothing frozen), or inputs: head:L.H:q, "
                        "head:L.H:k, head:L.H:v, head:L.H (all three), mlp:L")
    add_dataset_args(q)


def cmd_patch(args) -> int:
    from .cli import _progress, check_outputs, finish
    from .cli_runs import is_dataset, load_dataset, read_pairs_file
    from .errors import SweepError
    from .models import ModelSpec, load_model
    from .prompts import PromptPair
    from .sites import parse_sites

    outputs = check_outputs(args)
    if args.command == "patch":
        parse_sites(args.sites)        # syntax before the model loads; ranges need the model
    if args.ablation == "resample" and not is_dataset(args):
        raise SweepError("--ablation resample needs a dataset: add --ioi N or --pairs FILE.")
    pairs_data = read_pairs_file(args.pairs) if args.pairs else None
    model = load_model(ModelSpec(name=args.model, device=args.device, dtype=args.dtype,
                                 revision=args.revision, trust_remote_code=args.trust_remote_code))
    pairs = (load_dataset(args, model, pairs_data) if is_dataset(args)
             else PromptPair(args.clean, args.corrupted, args.answer, args.wrong))
    if not is_dataset(args):
        from .cli import warn_about_pair
        warn_about_pair(model, pairs)
    kw = dict(direction=args.direction, metric=args.metric, ablation=args.ablation, draws=args.draws,
              seed=args.seed, n_boot=args.n_boot, batch_size=args.batch_size,
              progress=_progress(args.quiet))
    if args.command == "patch":
        from .interventions import run_patch
        result = run_patch(model, pairs, args.sites, complement=args.complement, **kw)
    else:
        from .paths import run_path
        result = run_path(model, pairs, args.senders, args.receivers, **kw)
    return finish(args, result, outputs, load_seconds=model.load_seconds)
