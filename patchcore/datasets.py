"""Datasets of prompt pairs: what they hold, and how their lengths decide what can run.

One pair is an anecdote; a dataset is many pairs run through the same sweep. Pairs come
from the IOI generator (patchcore.ioi) or a CSV/JSONL upload (patchcore.uploads).
Uploaded pairs carry no roles, so per-position sweeps **require equal token lengths**:
pairs are grouped by token length (``length_groups``) and one group is run (by default
the largest). Sweeps without a position axis (``layer``, ``head``) run every pair
whatever its length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PatchError
from .prompts import PromptPair, encode


class DatasetError(PatchError):
    """A dataset that cannot be built or read as asked."""


@dataclass
class DatasetPair:
    pair: PromptPair
    line: int | None = None          # line in the uploaded file (1-based)
    roles: list[str] | None = None   # role label per token position (IOI pairs)
    meta: dict = field(default_factory=dict)
    n_tokens: int | None = None

    def to_dict(self) -> dict:
        d = self.pair.to_dict()
        if self.line is not None:
            d["line"] = self.line
        if self.meta:
            d["meta"] = dict(self.meta)
        return d


@dataclass(frozen=True)
class RowIssue:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class PairDataset:
    items: list[DatasetPair]
    source: str                                  # 'ioi' | 'upload' | 'list'
    settings: dict = field(default_factory=dict)
    rejected: list[RowIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[PromptPair]:
        return [it.pair for it in self.items]

    @property
    def role_aligned(self) -> bool:
        return bool(self.items) and all(it.roles is not None for it in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, items: list[DatasetPair], note: str | None = None) -> "PairDataset":
        notes = list(self.notes) + ([note] if note else [])
        return PairDataset(list(items), self.source, dict(self.settings), list(self.rejected), notes)



def pairs_from_list(pairs, tokenizer=None) -> PairDataset:
    """A dataset from PromptPairs (or dicts) given in code, checked like an upload."""
    items = []
    for p in pairs:
        items.append(p if isinstance(p, DatasetPair) else
                     DatasetPair(p if isinstance(p, PromptPair) else PromptPair(**p)))
    ds = PairDataset(items, "list", {"source": "list"})
    if tokenizer is not None:
        for i, it in enumerate(ds.items):
            if it.n_tokens is None:
                it.n_tokens = len(encode(tokenizer, it.pair.clean))
    return ds


# --------------------------------------------------------------------------- lengths
def length_groups(ds: PairDataset, tokenizer=None) -> dict[int, list[DatasetPair]]:
    """Pairs grouped by token length, largest group first."""
    groups: dict[int, list[DatasetPair]] = {}
    for it in ds.items:
        if it.n_tokens is None:
            if tokenizer is None:
                raise DatasetError("Token lengths are unknown: pass the tokenizer.")
            it.n_tokens = len(encode(tokenizer, it.pair.clean))
        groups.setdefault(it.n_tokens, []).append(it)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def for_sweep(ds: PairDataset, per_position: bool, tokenizer=None,
              length: int | None = None) -> PairDataset:
    """The pairs one sweep can average.

    IOI pairs (with roles) and sweeps without a position axis: all pairs.
    Uploaded pairs with a per-position sweep: equal token lengths are required,
    so one length group runs – `length`, or by default the largest – and a note
    says how many pairs were set aside.
    """
    if not per_position or ds.role_aligned or not ds.items:
        return ds
    groups = length_groups(ds, tokenizer)
    if len(groups) == 1 and (length is None or length in groups):
        return ds
    if length is None:
        length = next(iter(groups))
    if length not in groups:
        raise DatasetError(f"No pair has {length} tokens. Lengths present: "
                           + ", ".join(f"{k} ({len(v)} pairs)" for k, v in groups.items()) + ".")
    others = ", ".join(f"{len(v)} with {k}" for k, v in groups.items() if k != length)
    kept = groups[length]
    note = (f"Per-position sweeps need pairs of equal token length, so the {len(kept)} pairs with "
            f"{length} tokens ran; set aside: {others}. Run another length group, or a sweep "
            f"without positions (layer, head), to use them.")
    return ds.subset(kept, note)
