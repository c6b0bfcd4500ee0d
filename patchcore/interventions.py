"""Patch a set of sites together: one patched forward carries every site at once.

"Do these components together carry the behaviour (denoise: are they enough?), and are
they needed (noise)?" `run_patch` answers for one pair or a dataset: every pair is one
batch row (pairs of equal length share forwards), each row writes all its sites, and
the result holds the raw metric, the normalised score, every pair's values and
bootstrap intervals. `complement=True` patches every site of the same kinds except the
listed ones (is the rest of the model enough without them?).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .ablations import DEFAULT_DRAWS, RefSet, get_ablation, ioi_reference, join_notes, replacement
from .backends.base import Backend, Batch, Writes
from .engine import batch_rows, make_backend, run_batch
from .errors import PairError, SweepError
from .metrics import check_metric, from_readout, readout
from .models import LoadedModel
from .prompts import PreparedPair, PromptPair, prepare_pair
from .results import PatchSetResult, result_warnings, stamp
from .sites import Site, check_positions, check_sites, get_direction, parse_sites
from .stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, mean_ci, normalized_ci


def complement_sites(sites: list[Site], components, n_tokens: int) -> list[Site]:
    """Every site of the listed kinds (component, with or without head, with or without position)
    except the listed ones, in layer order."""
    listed = {str(s) for s in sites}
    kinds = []
    for s in sites:
        kind = (s.component, s.head >= 0, s.pos >= 0)
        if kind not in kinds:
            kinds.append(kind)
    out = []
    for comp, per_head, per_pos in kinds:
        heads = range(comp.n_heads(components)) if per_head else [-1]
        positions = range(n_tokens) if per_pos else [-1]
        for layer in range(components.n_layers):
            for pos in positions:
                for head in heads:
                    site = Site(comp, layer, head, pos)
                    if str(site) not in listed:
                        out.append(site)
    if not out:
        raise SweepError("The complement is empty: the sites already cover every site of their kind.",
                         field="sites")
    return out


def prepare_pairs(model: LoadedModel, pairs) -> list[PreparedPair]:
    if isinstance(pairs, (PromptPair, PreparedPair)):
        pairs = [pairs]
    items = getattr(pairs, "items", pairs)
    out = []
    for k, it in enumerate(items):
        pair = getattr(it, "pair", it)
        if isinstance(pair, PreparedPair):
            out.append(pair)
            continue
        try:
            out.append(prepare_pair(model.tokenizer, pair))
        except PairError as exc:
            line = getattr(it, "line", None)
            where = f"line {line}" if line is not None else f"pair {k + 1}"
            raise PairError([type(i)(i.field, f"{where}: {i.message}") for i in exc.issues]) from None
    if not out:
        raise SweepError("The dataset has no usable pairs.")
    return out


def pick_reference(model, ablation: str, direction: str, prepared: list[PreparedPair],
                   reference: RefSet | None = None) -> RefSet | None:
    """The reference set a run uses: the one given, else the dataset's own (several pairs), else
    for the mean ablation the generated IOI set."""
    if reference is None and len(prepared) > 1:
        reference = dataset_reference(ablation, direction, prepared)
    if reference is None and get_ablation(ablation).name == "mean":
        reference = ioi_reference(model.tokenizer)
    return reference


def dataset_reference(ablation: str, direction: str, prepared: list[PreparedPair]) -> RefSet | None:
    """The reference set a dataset gives itself: its prompts (mean), or the prompts the
    corrupted ablation would take, of every pair (resample)."""
    ab, d = get_ablation(ablation), get_direction(direction)
    if ab.name == "mean":
        return RefSet([ids for p in prepared for ids in (p.clean_ids, p.corrupted_ids)],
                      f"the dataset ({len(prepared)} pairs)")
    if ab.name == "resample":
        kind = "clean" if d.source_row == 0 else "corrupted"
        return RefSet([d.pick(p.clean_ids, p.corrupted_ids)[0] for p in prepared],
                      f"the dataset's {kind} prompts ({len(prepared)} pairs)")
    return None


def _group_rows(model, backend, group: list[PreparedPair], sites: list[Site], direction: str,
                ablation: str, reference, draws: int, seed: int):
    """Baselines and the batch of one length group: (batch, baseline readout of the clean then
    the corrupted prompts, the draws (P, K) as prompts of the reference set, note)."""
    d = get_direction(direction)
    P = len(group)
    ids = torch.tensor([p.clean_ids for p in group] + [p.corrupted_ids for p in group])
    own = [d.pick(p.clean_ids, p.corrupted_ids)[0] for p in group]
    targets = torch.tensor([d.pick(p.clean_ids, p.corrupted_ids)[1] for p in group])
    writes, note, rows = [], None, np.zeros((P, 1), dtype=np.int64)
    comps = []
    for s in sites:
        if s.component not in comps:
            comps.append(s.component)
    with model.locked(), torch.inference_mode():
        base_logits, captured = backend.capture(ids, comps)
    for comp in comps:
        source = [a[d.source_row * P:(d.source_row + 1) * P] for a in captured[comp.name]]
        tables, rows, note = replacement(ablation, comp, model, backend, source, own, reference,
                                         draws, seed)
        K = rows.shape[1]
        mine = [s for s in sites if s.component is comp]
        n = P * K
        row = np.repeat(np.arange(n), len(mine))
        cells = np.tile(np.array([s.cell for s in mine], dtype=np.int64), (n, 1))
        src = np.repeat(rows.reshape(-1), len(mine))
        writes.append(Writes(comp, row, cells[:, 0], cells[:, 1], cells[:, 2], src, tables))
    answer = np.repeat([p.answer_id for p in group], K)
    wrong = np.repeat([p.wrong_id for p in group], K)
    batch = Batch(targets, np.repeat(np.arange(P), K), writes, answer, wrong)
    base = readout(base_logits, np.tile([p.answer_id for p in group], 2),
                   np.tile([p.wrong_id for p in group], 2))
    drawn = rows if reference is None else [[reference.of_length(len(own[0]))[j] for j in r] for r in rows]
    return batch, base, drawn, note


def run_patch(model: LoadedModel, pairs, sites, direction: str = "denoise",
              metric: str = "logit_diff", *, ablation: str = "corrupted", complement: bool = False,
              reference: RefSet | None = None, draws: int = DEFAULT_DRAWS, seed: int = 0,
              n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
              batch_size: int | None = None, progress=None, cancel=None, on_wait=None,
              backend: Backend | None = None) -> PatchSetResult:
    """Patch `sites` (strings in site notation, or Site objects) together, on one pair or many."""
    d = get_direction(direction)
    check_metric(metric)
    ab = get_ablation(ablation)
    prepared = prepare_pairs(model, pairs)
    dropped = []
    if ab.needs_dataset and len(prepared) > 1:   # resample draws from other pairs of one length
        count = {}
        for p in prepared:
            count[p.n_tokens] = count.get(p.n_tokens, 0) + 1
        dropped = [p for p in prepared if count[p.n_tokens] < 2]
        prepared = [p for p in prepared if count[p.n_tokens] >= 2] or prepared
    sites = parse_sites(sites) if isinstance(sites, str) or (sites and isinstance(sites[0], str)) \
        else list(sites)
    lengths = sorted({p.n_tokens for p in prepared})
    check_sites(sites, model.components, lengths[0])
    check_positions(sites, lengths)
    listed = [str(s) for s in sites]
    if complement:
        sites = complement_sites(sites, model.components, lengths[0])
    reference = pick_reference(model, ab.name, d.name, prepared, reference)
    backend = make_backend(model, backend)
    t0 = time.perf_counter()
    values = np.empty(len(prepared))
    clean, corrupted = np.empty(len(prepared)), np.empty(len(prepared))
    rows_run, notes, done = 0, [], 0
    draws_of: list = [[] for _ in prepared]
    for T in lengths:
        idx = [i for i, p in enumerate(prepared) if p.n_tokens == T]
        group = [prepared[i] for i in idx]
        batch, base, drawn, note = _group_rows(model, backend, group, sites, d.name, ab.name,
                                               reference, draws, seed)
        K = len(drawn[0])
        if ab.needs_dataset:   # which pairs' prompts each pair was given, for the record
            which = {tuple(d.pick(p.clean_ids, p.corrupted_ids)[0]): i for i, p in enumerate(prepared)}
            for i, got in zip(idx, drawn):
                draws_of[i] = [which.get(tuple(ids), -1) for ids in got]
        if note and note not in notes:
            notes.append(note)
        P = len(group)
        base_m = from_readout(metric, base.double()).numpy()
        clean[idx], corrupted[idx] = base_m[:P], base_m[P:]
        got, _ = run_batch(model, batch, backend, batch_size or batch_rows(model, T), cancel=cancel,
                           on_wait=on_wait)
        values[idx] = from_readout(metric, got).reshape(P, K).mean(1)
        rows_run += batch.n + 2 * P
        done += P
        if progress:
            progress(done, len(prepared))
    value, lo, hi = (float(x) for x in mean_ci(values, n_boot=n_boot, level=level, seed=seed))
    _, nlo, nhi = (float(x) for x in normalized_ci(values, clean, corrupted, n_boot=n_boot,
                                                    level=level, seed=seed))
    result = PatchSetResult(
        model=model.label, sites=listed, complement=complement, n_sites=len(sites),
        direction=d.name, ablation=ab.name, metric=metric, value=value,
        clean_metric=float(clean.mean()), corrupted_metric=float(corrupted.mean()),
        n_pairs=len(prepared), per_pair=values, pair_clean=clean, pair_corrupted=corrupted,
        ci_low=lo, ci_high=hi, normalized_low=nlo, normalized_high=nhi, level=level,
        reference=join_notes(notes), draws=draws_of, pairs=[p.pair.to_dict() for p in prepared],
        seconds=time.perf_counter() - t0, forward_rows=rows_run, backend=backend.name,
        **stamp(model))
    result.warnings.extend(result_warnings(result))
    if dropped:
        result.warnings.append(f"{len(dropped)} pair(s) had no other pair of their token length to "
                               f"draw from and were left out of the resample ablation.")
    if ab.caveat:
        result.warnings.append(ab.caveat)
    return result
