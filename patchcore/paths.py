"""Path patching: does a component act on the answer directly, or through whom?

Senders S, receivers R, a source run and a base run (denoise: source = clean, base =
corrupted; noise: the reverse), as in Wang et al. 2022 (IOI) and Goldowsky-Dill et al. 2023:

1. Record every head's and MLP's output in both runs.
2. Run the base input with the senders' outputs taken from the source run (or the
   ablation's value) and every other head and MLP frozen to its base output; record the
   receivers' inputs.
3. Run the base input with only the receivers' inputs replaced by those of step 2; read
   the metric.

Receivers: `logits` (the direct path: step 2's own output, since everything else is
frozen), inputs of heads (`head:L.H:q`, `:k`, `:v`, or `head:L.H` for all three; k and v
are the head's key/value head, shared by its group under grouped-query attention) or of
MLPs (`mlp:L`), plain q/k/v sites, or `all` (nothing frozen: the senders patched
together). A sender sweep (`head:*`, `mlp:*`, `head:L.*`) runs one path per sender, many
per forward.

Freezing below a sender's layer is a no-op (nothing there differs from the base run), so
rows start at their sender's layer and reuse the base run below it.
"""
from __future__ import annotations

import re
import time

import numpy as np
import torch

from .ablations import DEFAULT_DRAWS, RefSet, get_ablation, join_notes, replacement
from .backends.base import Backend, Batch, Writes
from .engine import batch_rows, make_backend, run_batch
from .errors import SweepError
from .interventions import pick_reference, prepare_pairs
from .metrics import check_metric, from_readout, readout
from .models import LoadedModel
from .results import DatasetResult, PatchSetResult, new_result, result_warnings, stamp
from .sites import COMPONENTS, Component, Site, check_positions, check_sites, get_direction, parse_sites
from .stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, mean_ci, normalized_ci
from .sweeps import get_sweep

HEAD, MLP = COMPONENTS["head"], COMPONENTS["mlp"]
MLP_IN = Component("mlp_in", "MLP input", "mlp", "input")   # a receiver's input, not a site
_SENDER_SWEEP = re.compile(r"^(head|mlp):(\*|(\d{1,4})\.\*)$")
RECEIVER_HELP = ("Receivers: 'logits', 'all', or sites such as head:9.6:q, head:9.6:k, head:9.6:v, "
                 "head:9.6 (all three inputs), mlp:4, q:9.6.")


def parse_senders(text: str, components) -> tuple[list[list[Site]], str | None, tuple]:
    """(sender sets, the sweep name for a sender sweep else None, the sweep's grid shape)."""
    text = str(text).strip()
    m = _SENDER_SWEEP.match(text)
    if m:
        comp = COMPONENTS[m[1]]
        if m[3] is not None:                       # head:L.*
            if comp is not HEAD:
                raise SweepError(f"'{text}': only heads have an index to sweep; use mlp:*.",
                                 field="senders")
            layer = int(m[3])
            check_sites([Site(HEAD, layer)], components, 1)
            rows = [[Site(HEAD, layer, h)] for h in range(components.n_heads)]
            return rows, "head", (1, components.n_heads)
        if comp is HEAD:
            return ([[Site(HEAD, layer, h)] for layer in range(components.n_layers)
                     for h in range(components.n_heads)], "head",
                    (components.n_layers, components.n_heads))
        return [[Site(MLP, layer)] for layer in range(components.n_layers)], "mlp", (components.n_layers,)
    sites = parse_sites(text) if text else []
    bad = [s for s in sites if s.component not in (HEAD, MLP)]
    if bad:
        raise SweepError(f"'{bad[0]}': senders are heads or MLPs (head:L.H, mlp:L), or a sweep "
                         f"of them (head:*, mlp:*, head:L.*).", field="senders")
    return [sites], None, ()


def parse_receivers(text: str, components) -> str | list[Site]:
    """'logits', 'all', or the receiving inputs as sites (q/k/v of a head, an MLP's input)."""
    text = str(text).strip()
    if text in ("logits", "all"):
        return text
    out: list[Site] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, selector = part.partition(":")
        rest, sel = (selector.rsplit(":", 1) + [""])[:2] if selector.count(":") else (selector, "")
        base = parse_sites(f"{name}:{rest}")[0]
        if base.component is HEAD and base.head >= 0:
            group = components.n_heads // components.n_kv_heads
            kinds = [sel] if sel else ["q", "k", "v"]
            for kind in kinds:
                if kind not in ("q", "k", "v"):
                    raise SweepError(f"'{part}': a head's inputs are q, k and v. {RECEIVER_HELP}",
                                     field="receivers")
                head = base.head if kind == "q" else base.head // group
                out.append(Site(COMPONENTS[kind], base.layer, head, base.pos))
        elif base.component is MLP and not sel:
            out.append(Site(MLP_IN, base.layer, -1, base.pos))
        elif base.component.projection and not sel:
            out.append(base)
        else:
            raise SweepError(f"'{part}' is not a receiver. {RECEIVER_HELP}", field="receivers")
    if not out:
        raise SweepError(f"No receivers given. {RECEIVER_HELP}", field="receivers")
    return out


def _writes(comp, rows, sites_per_row, table, src_per_row) -> Writes | None:
    """Writes of `comp` for rows, each with its own list of (layer, head, pos) sites."""
    r, c, s = [], [], []
    for row, sites, src in zip(rows, sites_per_row, src_per_row):
        for cell in sites:
            r.append(row)
            c.append(cell)
            s.append(src)
    if not r:
        return None
    c = np.array(c, dtype=np.int64).reshape(-1, 3)
    return Writes(comp, np.array(r), c[:, 0], c[:, 1], c[:, 2], np.array(s, dtype=np.int64), table)


def _group(model, backend, group, sender_rows, receivers, direction, ablation, reference, draws, seed,
           batch_size, cancel, on_wait, progress=None):
    """Values (P, rows) for one length group of pairs, plus the baseline readout and a note."""
    d = get_direction(direction)
    P, R, L = len(group), len(sender_rows), model.components.n_layers
    ids = torch.tensor([p.clean_ids for p in group] + [p.corrupted_ids for p in group])
    own = [d.pick(p.clean_ids, p.corrupted_ids)[0] for p in group]
    targets = torch.tensor([d.pick(p.clean_ids, p.corrupted_ids)[1] for p in group])
    with model.locked(cancel, on_wait), torch.inference_mode():
        logits, acts = backend.capture(ids, [HEAD, MLP])
    tsl = slice(d.target_row * P, (d.target_row + 1) * P)
    ssl = slice(d.source_row * P, (d.source_row + 1) * P)
    frozen = {c.name: [a[tsl] for a in acts[c.name]] for c in (HEAD, MLP)}
    tables, rows_ab, note = {}, None, None
    for comp in (HEAD, MLP):
        tables[comp.name], rows_ab, note = replacement(
            ablation, comp, model, backend, [a[ssl] for a in acts[comp.name]], own, reference, draws, seed)
    K = rows_ab.shape[1]
    n = P * R * K                                  # row = ((pair * R) + sender set) * K + draw
    pair_of = np.repeat(np.arange(P), R * K)
    set_of = np.tile(np.repeat(np.arange(R), K), P)
    draw_src = rows_ab[pair_of, np.tile(np.arange(K), P * R)]
    writes = []
    if receivers != "all":                         # freeze every head and MLP from the first sender up
        for comp in (HEAD, MLP):
            cells = [[(layer, -1, -1) for layer in range(min((s.layer for s in sender_rows[k]), default=L), L)]
                     for k in set_of]
            w = _writes(comp, range(n), cells, frozen[comp.name], pair_of)
            if w is not None:
                writes.append(w)
    for comp in (HEAD, MLP):                       # then the senders on top
        cells = [[s.cell for s in sender_rows[k] if s.component is comp] for k in set_of]
        w = _writes(comp, range(n), cells, tables[comp.name], draw_src)
        if w is not None:
            writes.append(w)
    answer = np.array([group[p].answer_id for p in pair_of])
    wrong = np.array([group[p].wrong_id for p in pair_of])
    batch = Batch(targets, pair_of, writes, answer, wrong)
    bs = batch_size or batch_rows(model, targets.shape[1])
    def stage(k: int, stages: int):   # progress(fraction of this group done) between batches
        return (lambda done, total: progress((k + done / max(total, 1)) / stages)) if progress else None

    if isinstance(receivers, str):                 # logits or all: step 2's own output
        got, _ = run_batch(model, batch, backend, bs, cancel=cancel, on_wait=on_wait,
                           progress=stage(0, 1))
    else:
        layers = sorted({(s.component, s.layer) for s in receivers}, key=lambda x: (x[1], x[0].name))
        recorded: dict = {}
        for start in range(0, n, bs):
            rows = np.arange(start, min(start + bs, n))
            with model.locked(cancel, on_wait), torch.inference_mode():
                _, rec = backend.record(batch.subset(rows), layers)
            for key, v in rec.items():
                recorded.setdefault(key, []).append(v.cpu())
            if progress:
                progress(0.5 * rows[-1] / n)
        recorded = {k: torch.cat(v) for k, v in recorded.items()}
        step3 = []
        for comp in {s.component for s in receivers}:
            table = [recorded.get((comp.name, layer)) for layer in range(L)]
            cells = [[s.cell for s in receivers if s.component is comp]] * n
            step3.append(_writes(comp, range(n), cells, table, range(n)))
        got, _ = run_batch(model, Batch(targets, pair_of, step3, answer, wrong), backend, bs,
                           cancel=cancel, on_wait=on_wait, progress=stage(1, 2))
    base = readout(logits, np.tile([p.answer_id for p in group], 2), np.tile([p.wrong_id for p in group], 2))
    return got, base, K, note


def run_path(model: LoadedModel, pairs, senders: str, receivers: str = "logits",
             direction: str = "denoise", metric: str = "logit_diff", *, ablation: str = "corrupted",
             reference: RefSet | None = None, draws: int = DEFAULT_DRAWS, seed: int = 0,
             n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
             batch_size: int | None = None, progress=None, cancel=None, on_wait=None,
             backend: Backend | None = None):
    """Path patching from `senders` to `receivers` on one pair or a dataset.

    One sender set: a PatchSetResult (senders in `sites`, `receivers` filled in). A sender
    sweep: a PatchResult (one pair) or DatasetResult over layer × head (heads) or layer (MLPs),
    with `path` = {senders, receivers}."""
    d = get_direction(direction)
    check_metric(metric)
    ab = get_ablation(ablation)
    c = model.components
    prepared = prepare_pairs(model, pairs)
    lengths = sorted({p.n_tokens for p in prepared})
    sender_rows, sweep, shape = parse_senders(senders, c)
    recv = parse_receivers(receivers, c)
    every = [s for row in sender_rows for s in row] + ([] if isinstance(recv, str) else recv)
    check_sites(every, c, lengths[0])
    check_positions(every, lengths)
    reference = pick_reference(model, ab.name, d.name, prepared, reference)
    backend = make_backend(model, backend)
    t0 = time.perf_counter()
    R = len(sender_rows)
    values = np.empty((len(prepared), R))
    clean, corrupted = np.empty(len(prepared)), np.empty(len(prepared))
    notes, rows_run, total = [], 0, len(prepared) * R
    for i, T in enumerate(lengths):
        idx = [k for k, p in enumerate(prepared) if p.n_tokens == T]
        group = [prepared[k] for k in idx]
        before = sum(1 for p in prepared if p.n_tokens < T) * R
        step = (lambda f, before=before, size=len(idx) * R: progress(before + int(f * size), total)) \
            if progress else None
        got, base, K, note = _group(model, backend, group, sender_rows, recv, d.name, ab.name,
                                    reference, draws, seed, batch_size, cancel, on_wait, step)
        P = len(group)
        m = from_readout(metric, base.double()).numpy()
        clean[idx], corrupted[idx] = m[:P], m[P:]
        values[idx] = from_readout(metric, got).reshape(P, R, K).mean(2)
        rows_run += 2 * P + len(got) * (1 if isinstance(recv, str) else 2)
        if note and note not in notes:
            notes.append(note)
    seconds = time.perf_counter() - t0
    recv_names = [recv] if isinstance(recv, str) else [str(s).replace("mlp_in", "mlp") for s in recv]
    path = {"senders": senders, "receivers": recv_names}
    if sweep is None:
        value, lo, hi = (float(x) for x in mean_ci(values[:, 0], n_boot=n_boot, level=level, seed=seed))
        _, nlo, nhi = (float(x) for x in normalized_ci(values[:, 0], clean, corrupted, n_boot=n_boot,
                                                        level=level, seed=seed))
        res = PatchSetResult(
            model=model.label, sites=[str(s) for s in sender_rows[0]], complement=False,
            n_sites=len(sender_rows[0]), direction=d.name, ablation=ab.name, metric=metric,
            value=value, clean_metric=float(clean.mean()), corrupted_metric=float(corrupted.mean()),
            n_pairs=len(prepared), per_pair=values[:, 0], pair_clean=clean, pair_corrupted=corrupted,
            ci_low=lo, ci_high=hi, normalized_low=nlo, normalized_high=nhi, level=level,
            reference=join_notes(notes), pairs=[p.pair.to_dict() for p in prepared], seconds=seconds,
            forward_rows=rows_run, backend=backend.name, receivers=recv_names, **stamp(model))
        res.warnings.extend(result_warnings(res))
        return res
    spec = get_sweep(sweep)
    full = spec.dims(c, lengths[0])
    grid = np.full((len(prepared),) + full, np.nan)
    if len(shape) == 2 and shape[0] == 1:          # head:L.*: one layer of the grid
        grid[:, sender_rows[0][0].layer, :] = values
    else:
        grid[:] = values.reshape((len(prepared),) + full)
    fields = dict(seconds=seconds, forward_rows=rows_run, backend=backend.name, ablation=ab.name,
                  reference=join_notes(notes), method="path", path=path)
    if len(prepared) == 1:
        return new_result(model, spec, d.name, metric, grid[0], float(clean[0]), float(corrupted[0]),
                          prepared=prepared[0], **fields)
    mean, lo, hi = mean_ci(grid, n_boot=n_boot, level=level, seed=seed)
    _, nlo, nhi = normalized_ci(grid, clean, corrupted, n_boot=n_boot, level=level, seed=seed)
    return new_result(model, spec, d.name, metric, mean, float(clean.mean()), float(corrupted.mean()),
                      cls=DatasetResult, tokens=list(prepared[0].clean_tokens), pair=prepared[0].pair,
                      n_pairs=len(prepared), per_pair=grid, pair_clean=clean, pair_corrupted=corrupted,
                      ci_low=lo, ci_high=hi, normalized_low=nlo, normalized_high=nhi, level=level,
                      n_boot=n_boot, boot_seed=seed, aligned_by="none",
                      pairs=[p.pair.to_dict() for p in prepared], **fields)
