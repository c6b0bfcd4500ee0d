"""Benchmark: three ways to run the same sweep, timed in one run on one machine.

(a) the seed's loop: one nnsight trace per patch (batch of one, full logits), as in
    seed/activation-patching.txt. Timed on an evenly spread subset of the patches
    and extrapolated to all of them (the output says so).
(b) plain PyTorch forward hooks on one batched input: one row per patch, a hook per
    layer writes every row's patch, full logits. Written here, independently of
    patchcore's backend.
(c) patchcore.run_sweep with its defaults (exact; see patchcore/backends/hooks.py).

The three must agree (fp32: max |metric difference| reported, checked against
1e-3). Also reported: patchcore's own time estimate made before the run, and
attribution patching (an estimate, not exact) with its agreement to (c).

    python -m patchcore.bench [--json out.json] [--readme README.md]
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .models import ModelSpec
from .sites import get_direction

AGREE_TOL = 1e-3

# Random-weight model shapes. On a GPU: the real shapes. On a CPU the Llama-1B shape is
# kept in depth and head layout but narrowed (width / 4) so the benchmark finishes in minutes.
SHAPES = {
    "gpt2-small": {
        "gpu": dict(n_layer=12, n_embd=768, n_head=12),
        "cpu": dict(n_layer=12, n_embd=768, n_head=12),
    },
    "llama-1b": {
        "gpu": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192,
                    num_attention_heads=32, num_key_value_heads=8),
        "cpu": dict(num_hidden_layers=16, hidden_size=512, intermediate_size=2048,
                    num_attention_heads=8, num_key_value_heads=2),
    },
}
MODELS = ["embedded", "gpt2-small", "llama-1b"]
SWEEPS = ["layer_pos", "head"]


# -- machine -------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}
    try:
        import nnsight
        import transformers
        info["transformers"] = transformers.__version__
        info["nnsight"] = getattr(nnsight, "__version__", "?")
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average"] = [round(x, 1) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def machine_text(info: dict) -> str:
    s = f"{info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']})"
    if info.get("gpu"):
        s = f"{info['gpu']}; host {s}"
    return s


# -- models ----------------------------------------------------------------------------------

def bench_tokenizer(folder: str | None = None):
    """The embedded model's tokenizer: from a folder (e.g. one carried to a GPU machine that
    does not have the embedded model), else patchcore's converted copy of it."""
    if folder:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(folder)
    from .models import load_embedded_tokenizer
    return load_embedded_tokenizer()


def load_bench_model(name: str, device: str, dtype: str = "fp32", tokenizer=None):
    """The embedded model, or a random-weight model of a named shape (embedded tokenizer)."""
    import transformers as tf

    from .models import DTYPES, load_model, wrap_model

    if name == "embedded":
        return load_model(ModelSpec(name="embedded", device=device, dtype=dtype))
    kind = "gpu" if torch.device(device if device != "auto" else "cpu").type == "cuda" else "cpu"
    shape = SHAPES[name][kind]
    tokenizer = tokenizer or bench_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if name == "gpt2-small":
        config = tf.GPT2Config(vocab_size=vocab, n_positions=1024, bos_token_id=0, eos_token_id=0, **shape)
    else:
        config = tf.LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, **shape)
    hf = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # the default init is tiny; widen it so patches move the metric
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(2.0)
    hf = hf.to(DTYPES[dtype])
    label = (f"{name} shape, random weights" + (" (width/4)" if name == "llama-1b" and kind == "cpu" else "")
             + ("" if dtype == "fp32" else f", {dtype}"))
    return wrap_model(hf, tokenizer, label=label, device=device if device != "auto" else "cpu")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- (a) the seed's loop: one nnsight trace per patch ------------------------------------------
# Traces live in this file (nnsight compiles a trace's source from its file).

def _seed_trace_resid(nn, ids, block, pos, value):
    with nn.trace(ids):
        block.output[:, pos, :] = value
        logits = nnsight_save(nn.output.logits[:, -1, :])
    return logits


def _seed_trace_head(nn, ids, o_proj, lo, hi, value):
    with nn.trace(ids):
        o_proj.input[:, :, lo:hi] = value
        logits = nnsight_save(nn.output.logits[:, -1, :])
    return logits


def nnsight_save(x):
    import nnsight
    return nnsight.save(x)


def seed_loop(model, prepared, sweep: str, direction: str, cells: np.ndarray, source: list):
    """Run the given cells one nnsight trace each; returns (metric values, seconds, CPU seconds)."""
    from nnsight import TransformersModel

    from .metrics import compute_metric
    from .sweeps import get_sweep

    spec = get_sweep(sweep)
    c = model.components
    nn = TransformersModel(model.hf, tokenizer=copy.deepcopy(model.tokenizer))
    base = get_direction(direction).pick(prepared.clean_ids, prepared.corrupted_ids)[1]
    ids = torch.tensor([base], device=model.device)
    vals = []
    _sync(model.device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for layer, pos, head in cells.tolist():
            env = nn.get(c.module_path(spec.component, layer))
            if sweep == "layer_pos":
                logits = _seed_trace_resid(nn, ids, env, pos, source[layer][pos])
            elif sweep == "head":
                d = source[layer].shape[-1] // c.n_heads
                logits = _seed_trace_head(nn, ids, env, head * d, (head + 1) * d,
                                          source[layer][:, head * d:(head + 1) * d])
            else:
                raise ValueError(f"the seed loop is written for layer_pos and head, not {sweep}")
            vals.append(float(compute_metric("logit_diff", logits, prepared.answer_id, prepared.wrong_id)[0]))
    _sync(model.device)
    return np.array(vals), time.perf_counter() - t0, time.process_time() - cpu0


# -- (b) plain PyTorch hooks on one batched input ------------------------------------------------

def plain_hooks(model, prepared, sweep: str, direction: str, max_logit_bytes: float = 2**31):
    """One row per patch, forward hooks writing all rows' patches, full logits.

    Returns (metric values in the sweep's cell order, seconds, CPU seconds, rows per forward). All patches
    go into one batch unless its full logits (rows x tokens x vocab floats) pass max_logit_bytes.
    """
    from .sweeps import get_sweep

    spec = get_sweep(sweep)
    if sweep not in ("layer_pos", "head"):
        raise ValueError(f"the plain hooks are written for layer_pos and head, not {sweep}")
    c = model.components
    hf = model.hf
    T = prepared.n_tokens
    cells = spec.grid(c, T)
    mods = [spec.component.module(c, i) for i in range(c.n_layers)]
    output = spec.component.hook == "output"     # layer_pos: block outputs; head: o_proj inputs
    dev = model.device
    src_ids, base_ids = get_direction(direction).pick(prepared.clean_ids, prepared.corrupted_ids)
    rows_per = max(1, min(len(cells), int(max_logit_bytes // (T * c.vocab_size * 4))))
    _sync(dev)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        # the source run: record every layer's activation
        source = [None] * c.n_layers
        handles = []
        for i, m in enumerate(mods):
            if output:
                handles.append(m.register_forward_hook(
                    lambda mod, a, out, i=i: source.__setitem__(i, (out if torch.is_tensor(out) else out[0])[0].clone())))
            else:
                handles.append(m.register_forward_pre_hook(
                    lambda mod, a, i=i: source.__setitem__(i, a[0][0].clone())))
        hf(input_ids=torch.tensor([src_ids], device=dev), use_cache=False)
        for h in handles:
            h.remove()
        out = []
        for start in range(0, len(cells), rows_per):
            chunk = cells[start:start + rows_per]
            n = len(chunk)
            handles = []
            for layer in range(c.n_layers):
                rows = np.nonzero(chunk[:, 0] == layer)[0]
                if len(rows) == 0:
                    continue
                r = torch.as_tensor(rows, device=dev)
                src = source[layer]
                if output:
                    p = torch.as_tensor(chunk[rows, 1], device=dev)

                    def hook(mod, a, output, r=r, p=p, src=src):
                        x = output if torch.is_tensor(output) else output[0]
                        x[r, p] = src[p]
                    handles.append(mods[layer].register_forward_hook(hook))
                else:
                    hd = torch.as_tensor(chunk[rows, 2], device=dev)

                    def pre(mod, a, r=r, hd=hd, src=src):
                        x = a[0].clone()
                        d = x.shape[-1] // c.n_heads
                        x.view(n, T, c.n_heads, d)[r, :, hd] = src.view(T, c.n_heads, d).permute(1, 0, 2)[hd]
                        return (x,) + tuple(a[1:])
                    handles.append(mods[layer].register_forward_pre_hook(pre))
            ids = torch.tensor([base_ids], device=dev).expand(n, -1)
            try:
                logits = hf(input_ids=ids, use_cache=False).logits[:, -1, :]
            finally:
                for h in handles:
                    h.remove()
            out.append((logits[:, prepared.answer_id] - logits[:, prepared.wrong_id]).double().cpu())
        vals = torch.cat(out).numpy()
    _sync(dev)
    return (vals.reshape(spec.dims(c, T)), time.perf_counter() - t0,
            time.process_time() - cpu0, rows_per)


# -- one comparison ------------------------------------------------------------------------------

def bench_fast(model, sweep: str, direction: str = "denoise", log=print) -> tuple[dict, dict]:
    """(b), (c) and AtP for one sweep; returns (row, values kept for the seed loop's check)."""
    from .attribution import agreement, run_atp
    from .engine import run_sweep
    from .estimate import estimate_seconds
    from .prompts import DEFAULT_PAIR, prepare_pair

    prepared = prepare_pair(model.tokenizer, DEFAULT_PAIR)
    c = model.components
    T = prepared.n_tokens
    row = {"model": model.label, "sweep": sweep, "direction": direction, "tokens": T,
           "dtype": str(model.dtype).replace("torch.", ""),
           "layers": c.n_layers, "heads": c.n_heads, "device": str(model.device)}
    t0 = time.perf_counter()
    row["estimate_s"] = estimate_seconds(model, T, sweep, first_diff=prepared.first_diff)
    row["estimate_overhead_s"] = time.perf_counter() - t0

    b_vals, row["b_s"], row["b_cpu_s"], row["b_rows_per_forward"] = plain_hooks(model, prepared, sweep, direction)
    log(f"  (b) plain batched hooks: {row['b_s']:.2f} s")

    _sync(model.device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = run_sweep(model, prepared, sweep, direction)
    _sync(model.device)
    row["c_s"], row["c_cpu_s"] = time.perf_counter() - t0, time.process_time() - cpu0
    row["patches"] = res.n_patches
    row["c_batch_size"] = res.batch_size
    row["c_vs_b"] = row["b_s"] / row["c_s"]
    row["c_vs_b_cpu"] = row["b_cpu_s"] / row["c_cpu_s"]
    row["max_diff_b_c"] = float(np.abs(b_vals.reshape(-1) - res.values.reshape(-1)).max())
    row["value_range"] = float(np.ptp(res.values))
    log(f"  (c) patchcore: {row['c_s']:.2f} s (estimated beforehand: {row['estimate_s']:.2f} s); "
        f"|b-c| {row['max_diff_b_c']:.2g} (values span {row['value_range']:.3g})")

    t0 = time.perf_counter()
    atp = run_atp(model, prepared, sweep, direction)
    row["atp_s"] = time.perf_counter() - t0
    rep = agreement(atp, res, k=10)
    row["atp_spearman"] = rep["spearman"]
    row["atp_top10_overlap"] = rep["top_k_overlap"]
    log(f"  AtP: {row['atp_s']:.2f} s, Spearman {rep['spearman']:.2f} vs exact, "
        f"top-10 overlap {rep['top_k_overlap']:.0%}")
    return row, {"prepared": prepared, "values": res.values}


def bench_seed(model, row: dict, kept: dict, seed_patches: int, log=print) -> None:
    """(a) on an evenly spread subset of the cells, checked against (c); fills in `row`."""
    from .engine import run_baseline
    from .sweeps import get_sweep

    prepared, direction = kept["prepared"], row["direction"]
    spec = get_sweep(row["sweep"])
    c = model.components
    base = run_baseline(model, prepared, "logit_diff", spec.component)
    source = [a[get_direction(direction).source_row] for a in base.cache]
    cells = spec.grid(c, prepared.n_tokens)
    k = min(seed_patches, len(cells)) if seed_patches > 0 else len(cells)
    pick = np.unique(np.linspace(0, len(cells) - 1, k).round().astype(int))
    a_vals, a_s, a_cpu = seed_loop(model, prepared, row["sweep"], direction, cells[pick], source)
    row["a_measured_patches"] = int(len(pick))
    row["a_measured_s"] = a_s
    row["a_s"] = a_s * len(cells) / len(pick)
    row["a_cpu_s"] = a_cpu * len(cells) / len(pick)
    row["a_extrapolated"] = bool(len(pick) < len(cells))
    row["max_diff_a_c"] = float(np.abs(a_vals - kept["values"].reshape(-1)[pick]).max())
    row["c_vs_a"] = row["a_s"] / row["c_s"]
    row["c_vs_a_cpu"] = row["a_cpu_s"] / row["c_cpu_s"]
    row["agree"] = bool(max(row["max_diff_b_c"], row["max_diff_a_c"]) <= AGREE_TOL)
    log(f"  (a) seed loop: {a_s:.2f} s for {len(pick)} patches -> {row['a_s']:.1f} s for "
        f"{len(cells)}; |a-c| {row['max_diff_a_c']:.2g}")


# -- report ----------------------------------------------------------------------------------------

def table(rows: list[dict], info: dict) -> str:
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"Benchmark (`patchcore bench`, {when}) on **{machine_text(info)}**, torch {info['torch']}, "
        f"{', '.join(sorted({r.get('dtype', 'float32') for r in rows}))}, denoising, IOI pair "
        f"({rows[0]['tokens'] if rows else '?'} tokens). "
        f"(a) the seed's loop, one nnsight trace per patch; (b) plain PyTorch hooks on one batched "
        f"input (full logits); (c) patchcore (exact). Wall-clock seconds; speed-ups are (a)/(c) "
        f"and (b)/(c) in wall-clock time, and in this process's CPU time in brackets.",
        "",
        "| model | sweep | patches | (a) seed loop | (b) batched hooks | (c) patchcore | (c) vs (b) | "
        "(c) vs (a) | max diff | AtP (ρ vs exact) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        a = f"{r['a_s']:.1f}" + ("*" if r["a_extrapolated"] else "")
        lines.append(
            f"| {r['model']} | {r['sweep']} | {r['patches']} | {a} | {r['b_s']:.2f} | {r['c_s']:.2f} | "
            f"{r['c_vs_b']:.1f}× ({r['c_vs_b_cpu']:.1f}×) | {r['c_vs_a']:.1f}× ({r['c_vs_a_cpu']:.1f}×) | "
            f"{max(r['max_diff_b_c'], r['max_diff_a_c']):.1g} | "
            f"{r['atp_s']:.2f} s (ρ={r['atp_spearman']:.2f}) |")
    if any(r["a_extrapolated"] for r in rows):
        lines += ["", "\\* (a) timed on an evenly spread subset of "
                  + "/".join(sorted({str(r['a_measured_patches']) for r in rows})) + " patches and "
                  "extrapolated linearly to all of them."]
    lines += ["", "max diff: largest |logit difference| disagreement between (a), (b) and (c) "
              "(must be ≤ 1e-3). AtP: attribution patching, an estimate from 2 forwards + 1 backward; "
              "ρ is its Spearman rank correlation with (c)."]
    if info.get("load_average"):
        lines += ["", f"Load average (1, 5, 15 min) at start {info['load_average']}, at end "
                  f"{info.get('load_average_end')}: a shared machine, so wall-clock times are noisy; "
                  f"CPU-time ratios are steadier. All three ran in one process, one after another."]
    return "\n".join(lines)


def write_readme(path: Path, text: str) -> None:
    """Replace only what sits between the bench markers."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    src = path.read_text()
    if start not in src or end not in src:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    path.write_text(pat.sub(lambda m: f"{start}\n{text}\n{end}", src, count=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="patchcore bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--sweeps", default=",".join(SWEEPS), help="comma list: layer_pos, head")
    p.add_argument("--seed-patches", type=int, default=24,
                   help="patches to time for (a), the seed loop (0 = all); the rest is extrapolated")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a folder with the embedded tokenizer (default: patchcore's own copy)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", dest="json_path", help="write the results as JSON here")
    p.add_argument("--readme", help="write the table into this README between the bench markers")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine_info()
    print(f"machine: {machine_text(info)}; load average {info.get('load_average')}", flush=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        model = load_bench_model(name, device, args.dtype,
                                 None if name == "embedded" else bench_tokenizer(args.tokenizer))
        log = lambda s: print(s, flush=True)  # noqa: E731
        done = []
        for sweep in [s.strip() for s in args.sweeps.split(",") if s.strip()]:
            print(f"{model.label} / {sweep}:", flush=True)
            done.append(bench_fast(model, sweep, log=log))
        # the seed loop last: wrapping a model in nnsight installs its (inert) controllers
        # on every module, which must not touch (b) and (c)
        for row, kept in done:
            print(f"{model.label} / {row['sweep']}, seed loop:", flush=True)
            bench_seed(model, row, kept, args.seed_patches, log=log)
            rows.append(row)
        del model, done
    info["load_average_end"] = machine_info().get("load_average")
    text = table(rows, info)
    print()
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    if args.readme:
        write_readme(Path(args.readme), text)
    bad = [r for r in rows if not r["agree"]]
    if bad:
        print(f"\nDISAGREEMENT in {len(bad)} comparison(s): see max diff", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
