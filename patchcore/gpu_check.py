"""The GPU check: CUDA equality with the CPU, then the GPU benchmark, in one short run.

    python -m patchcore.gpu_check [--device cuda] [--tokenizer DIR] [--out DIR] [--quick]

Needs neither the model hub nor the embedded GGUF file: tiny and full-size model shapes
are built with random weights around the embedded tokenizer (`--save-tokenizer DIR` on
a machine that has patchcore writes that tokenizer to a small folder to carry along).

1. Equality: every supported family (tiny random weights), every sweep, both
   directions, run by the engine on the device, against the engine's plain path (every
   row through every layer, no shortcut) on the CPU, which the test suite holds equal to
   the independent reference. fp32, max |difference| must be <= 1e-4.
2. Benchmark: `patchcore bench` rows for the GPT-2-small and Llama-1B shapes, layer_pos
   and head, fp32 and bf16 (seed loop on a subset of patches, extrapolated).

Writes check.json and a Markdown table to --out; exit status 1 on any disagreement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

TOL = 1e-4
_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128)
FAMILIES = {   # config class name -> extra settings (Gemma 3: head_dim != hidden / heads)
    "GPT2Config": dict(n_embd=64, n_layer=3, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0),
    "GPTNeoXConfig": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.25),
    "LlamaConfig": _COMMON, "MistralConfig": _COMMON, "Qwen2Config": _COMMON,
    "Qwen3Config": dict(_COMMON, head_dim=16), "GemmaConfig": dict(_COMMON, head_dim=16),
    "Gemma2Config": dict(_COMMON, head_dim=16, sliding_window=8),
    "Gemma3TextConfig": dict(_COMMON, head_dim=24, sliding_window=8),
}


def tiny(config_name: str, tokenizer, device: str):
    import transformers as tf

    from .models import wrap_model
    torch.manual_seed(0)
    config = getattr(tf, config_name)(vocab_size=len(tokenizer), **FAMILIES[config_name])
    config._attn_implementation = "eager"
    hf = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return wrap_model(hf.eval(), tokenizer, label=f"tiny {config_name}", device=device)


def equality(device: str, tokenizer, families, sweeps, log=print) -> list[dict]:
    from .backends.hooks import HookBackend
    from .engine import run_sweep
    from .prompts import DEFAULT_PAIR
    rows = []
    for fam in families:
        on_device, on_cpu = tiny(fam, tokenizer, device), tiny(fam, tokenizer, "cpu")
        for sweep in sweeps:
            for direction in ("denoise", "noise"):
                got = run_sweep(on_device, DEFAULT_PAIR, sweep, direction).values
                ref = run_sweep(on_cpu, DEFAULT_PAIR, sweep, direction, skip_lower=False,
                                skip_unchanged=False,
                                backend=HookBackend(on_cpu, reuse_prefix=False, group=False)).values
                diff = float(np.abs(got - ref).max())
                rows.append({"family": fam, "sweep": sweep, "direction": direction, "max_diff": diff})
        log(f"  {fam}: max |diff| {max(r['max_diff'] for r in rows if r['family'] == fam):.2g}")
    return rows


def main(argv=None) -> int:
    from . import bench
    from .sweeps import SWEEPS

    p = argparse.ArgumentParser(prog="python -m patchcore.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="folder with the embedded tokenizer")
    p.add_argument("--save-tokenizer", default=None, metavar="DIR",
                   help="write the embedded tokenizer to DIR (to carry to a GPU machine) and stop")
    p.add_argument("--out", default="gpu-check", metavar="DIR")
    p.add_argument("--quick", action="store_true",
                   help="two families, two sweeps, no full-size benchmark (to test this script on a CPU)")
    args = p.parse_args(argv)
    tok = bench.bench_tokenizer(args.tokenizer)
    if args.save_tokenizer:
        tok.save_pretrained(args.save_tokenizer)
        print(f"tokenizer written to {args.save_tokenizer}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu to try the script", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = bench.machine_info()
    t0 = time.perf_counter()
    families = ["GPT2Config", "LlamaConfig"] if args.quick else list(FAMILIES)
    sweeps = ["layer_pos", "head"] if args.quick else list(SWEEPS)
    print(f"equality on {args.device} ({bench.machine_text(info)}):", flush=True)
    eq = equality(args.device, tok, families, sweeps)
    rows = []
    if not args.quick:
        for dtype in ("fp32", "bf16"):
            for name in ("gpt2-small", "llama-1b"):
                model = bench.load_bench_model(name, args.device, dtype, tok)
                for sweep in ("layer_pos", "head"):
                    bench.bench_fast(model, sweep)            # warm-up: kernels, calibration
                    row, kept = bench.bench_fast(model, sweep)
                    bench.bench_seed(model, row, kept, 24)
                    rows.append(row)
    worst = max(r["max_diff"] for r in eq)
    report = {"machine": info, "equality": eq, "equality_max_diff": worst, "benchmark": rows,
              "seconds": time.perf_counter() - t0}
    (out / "check.json").write_text(json.dumps(report, indent=1))
    if rows:
        (out / "bench.md").write_text(bench.table(rows, info) + "\n")
    print(f"equality: max |diff| {worst:.2g} over {len(eq)} sweeps (limit {TOL}); "
          f"{report['seconds']:.0f} s in all; wrote {out}/")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    raise SystemExit(main())
