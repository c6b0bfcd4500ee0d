"""Path patching for people: what senders and receivers may be written (checked without a
model, for links), what a run costs before it starts, and the sentence that names the
components acting on the answer directly (or through the chosen receivers)."""
from __future__ import annotations

import re

import numpy as np

from .errors import PatchError
from .paths import parse_receivers, parse_senders
from .sites import check_sites, get_direction, parse_sites
from .summary import num

MAX_TEXT = 2000
SENDER_SWEEPS = {"head:*": "every head", "mlp:*": "every MLP"}
_LAYER_HEADS = re.compile(r"^head:(\d{1,4})\.\*$")
_RECEIVER = re.compile(r"^(?:head:\d{1,4}\.\d{1,4}(?:@\d{1,5})?(?::[qkv])?|mlp:\d{1,4}(?:@\d{1,5})?"
                       r"|[qkv]:\d{1,4}\.\d{1,4}(?:@\d{1,5})?)$")
STORY_MIN = 0.1   # effects below this share of the clean behaviour are not named
STORY_TOP = 5


def senders_problem(text: str) -> str | None:
    """Why `text` is not a sender choice (checked without a model), or None."""
    text = str(text).strip()
    if len(text) > MAX_TEXT:
        return f"longer than {MAX_TEXT} characters"
    if text in SENDER_SWEEPS or _LAYER_HEADS.match(text) or text == "":
        return None
    try:
        sites = parse_sites(text)
    except PatchError as exc:
        return exc.message
    bad = [s for s in sites if s.component.name not in ("head", "mlp")]
    if bad:
        return f"'{bad[0]}': senders are heads or MLPs (head:L.H, mlp:L), or head:*, mlp:*, head:L.*"
    return None


def receivers_problem(text: str) -> str | None:
    """Why `text` is not a receiver choice (checked without a model), or None."""
    text = str(text).strip()
    if len(text) > MAX_TEXT:
        return f"longer than {MAX_TEXT} characters"
    if text in ("logits", "all", ""):
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if not _RECEIVER.match(p)]
    if bad:
        return (f"'{bad[0]}' is not a receiver: write logits, all, or inputs such as head:9.6:q, "
                f"head:9.6 (its q, k and v), mlp:4")
    if len(set(parts)) != len(parts):
        return "a receiver is listed twice"
    return None


def sender_kind(senders: str) -> str:
    """'sweep' for head:*, mlp:*, head:L.*; 'set' for a list of sites."""
    s = str(senders).strip()
    return "sweep" if s in SENDER_SWEEPS or _LAYER_HEADS.match(s) else "set"


def path_cost(model, senders: str, receivers: str, lengths: list[int], draws: int = 1) -> dict:
    """What a path run costs: paths (sender rows), pairs and forward rows (as run_path counts
    them: two baselines per pair, one row per path, pair and draw, twice for inputs of heads
    or MLPs: record them, then patch them). Raises the PatchError run_path would."""
    rows, sweep, _ = parse_senders(senders, model.components)
    recv = parse_receivers(receivers, model.components)
    check_sites([s for row in rows for s in row] + ([] if isinstance(recv, str) else recv), model.components,
                min(lengths) if lengths else 10**6)
    n_pairs = len(lengths)
    step = 1 if isinstance(recv, str) else 2
    return {"paths": len(rows), "pairs": n_pairs, "sweep": sweep,
            "forward_rows": 2 * n_pairs + n_pairs * len(rows) * max(1, draws) * step,
            "receivers": recv if isinstance(recv, str) else [str(s).replace("mlp_in", "mlp") for s in recv]}


def path_seconds(model, cost: dict, lengths: list[int]) -> float | None:
    """A rough time: the machine's estimate for the matching activation sweep (the same rows,
    started at the same layers), per forward row, times this run's rows. None if unknown."""
    from .estimate import estimate_seconds
    from .sweeps import get_sweep

    sweep = cost["sweep"] or "mlp"
    per_row = []
    for T in sorted(set(lengths)):
        patches = len(get_sweep(sweep).grid(model.components, T))
        try:
            per_row.append(float(estimate_seconds(model, T, sweep, wait=False)) / max(1, patches))
        except Exception:  # noqa: BLE001 - an estimate is optional
            return None
    if not per_row:
        return None
    rows = cost["forward_rows"] - 2 * cost["pairs"]
    return float(np.mean(per_row) * rows)


def _unit(r) -> tuple[str, str]:
    return ("head", "heads") if "head" in r.axes else ("MLP", "MLPs")


def _name(r, idx: tuple) -> str:
    if "head" in r.axes:
        return f"head {idx[0]}.{idx[1]}"
    return f"MLP {idx[0]}"


def path_story(r) -> str | None:
    """For a sender sweep (r.path set): the components that act on the answer directly
    (receivers: logits) or through the receivers, strongest first, and those working against
    it; None for other results."""
    path = getattr(r, "path", None)
    if not path:
        return None
    d = get_direction(r.direction)
    e = np.asarray(d.effect(r.normalized), dtype=float)
    one, many = _unit(r)
    to = ", ".join(path["receivers"])
    how = {"logits": "act on the answer directly",
           "all": "act on the answer (through every path)"}.get(to, f"act through {to}")
    verb = "restores" if d.restores else "destroys"
    if not np.isfinite(e).any():
        return None
    flat = np.where(np.isfinite(e), e, 0.0)
    order = np.argsort(-np.abs(flat).reshape(-1), kind="stable")
    cells = [np.unravel_index(i, e.shape) for i in order if abs(flat.reshape(-1)[i]) >= STORY_MIN]
    pos = [c for c in cells if flat[c] > 0][:STORY_TOP]
    neg = [c for c in cells if flat[c] < 0][:STORY_TOP]
    if not pos and not neg:
        return (f"No single {one} {how.replace('act', 'acts', 1)} with {STORY_MIN:.0%} or more of the "
                f"clean behaviour on its own.")

    def listed(cs):
        return ", ".join(f"{_name(r, tuple(int(x) for x in c))} ({num(flat[c] * 100, '.0f')}%)" for c in cs)
    out = (f"{many[0].upper() + many[1:]} that {how}: {listed(pos)} (the share of the clean behaviour each "
           f"{verb} on this path)." if pos else f"No {one} alone {how.replace('act', 'acts', 1)} for "
           f"the clean answer with {STORY_MIN:.0%} or more.")
    if neg:
        out += f" Working against it: {listed(neg)}."
    return out
