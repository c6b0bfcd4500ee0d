"""Benchmark: path patching, a head:* -> logits sender sweep, against one frozen forward per path.

    python -m patchcore.bench_paths [--model embedded] [--paths 24] [--threads 1]

(a) one forward per path, written here with plain hooks: every head's output-projection
    input and every MLP output frozen to the base run, the sender head's slice from the
    source run; timed on an evenly spread subset of paths and extrapolated.
(b) patchcore.paths.run_path (batched; rows start at their sender's layer).
Both must agree (max |difference| reported).
"""
from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import numpy as np
import torch


def one_path_per_forward(model, prepared, senders: list[tuple[int, int]]) -> np.ndarray:
    """Direct effect (receivers: logits) of each sender head, one forward each (denoising)."""
    c = model.components
    heads, mlps = [None] * c.n_layers, [None] * c.n_layers

    def record(ids):
        got_h, got_m = [None] * c.n_layers, [None] * c.n_layers
        with ExitStack() as stack:
            for i in range(c.n_layers):
                stack.callback(c.attn_out[i].register_forward_pre_hook(
                    lambda m, a, i=i: got_h.__setitem__(i, a[0].clone())).remove)
                stack.callback(c.mlp[i].register_forward_hook(
                    lambda m, a, o, i=i: got_m.__setitem__(i, o.clone())).remove)
            model.hf(input_ids=torch.tensor([ids]), use_cache=False)
        return got_h, got_m

    heads, mlps = record(prepared.corrupted_ids)
    src_heads, _ = record(prepared.clean_ids)
    d = c.d_head
    out = []
    for layer, head in senders:
        with ExitStack() as stack:
            for i in range(c.n_layers):
                x = heads[i].clone()
                if i == layer:
                    x[..., head * d:(head + 1) * d] = src_heads[i][..., head * d:(head + 1) * d]
                stack.callback(c.attn_out[i].register_forward_pre_hook(
                    lambda m, a, x=x: (x,) + tuple(a[1:])).remove)
                stack.callback(c.mlp[i].register_forward_hook(lambda m, a, o, i=i: mlps[i]).remove)
            logits = model.hf(input_ids=torch.tensor([prepared.corrupted_ids]), use_cache=False).logits[0, -1]
        out.append(float(logits[prepared.answer_id] - logits[prepared.wrong_id]))
    return np.array(out)


def main(argv=None) -> int:
    from .models import load_model
    from .paths import run_path
    from .prompts import DEFAULT_PAIR, prepare_pair

    p = argparse.ArgumentParser(prog="python -m patchcore.bench_paths", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--paths", type=int, default=24, help="paths to time for (a); the rest is extrapolated")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    prep = prepare_pair(model.tokenizer, DEFAULT_PAIR)
    c = model.components
    with torch.inference_mode():
        run_path(model, prep, "head:*", "logits")            # warm-up
        t0, cpu0 = time.perf_counter(), time.process_time()
        got = run_path(model, prep, "head:*", "logits")
        b, b_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        every = [(layer, h) for layer in range(c.n_layers) for h in range(c.n_heads)]
        pick = np.unique(np.linspace(0, len(every) - 1, min(args.paths, len(every))).round().astype(int))
        t0, cpu0 = time.perf_counter(), time.process_time()
        naive = one_path_per_forward(model, prep, [every[i] for i in pick])
        scale = len(every) / len(pick)
        a, a_cpu = (time.perf_counter() - t0) * scale, (time.process_time() - cpu0) * scale
    diff = float(np.abs(naive - got.values.reshape(-1)[pick]).max())
    print(f"{model.label}, head:* -> logits, {len(every)} paths, torch threads {args.threads}:")
    print(f"  (a) one frozen forward per path: {a:.1f} s ({a_cpu:.1f} s CPU; {len(pick)} timed, extrapolated)")
    print(f"  (b) patchcore run_path: {b:.2f} s ({b_cpu:.2f} s CPU)")
    print(f"  (b) vs (a): {a / b:.1f}x ({a_cpu / b_cpu:.1f}x in CPU time); max |difference| {diff:.2g}")
    return 0 if diff <= 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
