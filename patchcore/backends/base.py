"""The engine/backend seam: a batch of interventions in, a small readout per row out.

Shapes (n rows in a batch, P base prompts of T tokens, V vocabulary, W a component's width):

    Backend.baseline(ids (R, T), component) -> (last logits (R, V), [per layer (R, T, W)])
    Backend.run(Batch)                      -> readout (n, 3) float32

A Batch is n forward rows. Row i runs base prompt ids[prompt[i]] with its writes
applied and reads out, at the last position, (logit of answer[i], logit of
wrong[i], logsumexp of all logits): every metric is computed from these three
numbers (metrics.from_readout), so a remote backend sends back three numbers a
row instead of a vocabulary.

Writes hold the patches of one component as flat arrays, one entry per write:
row rows[j] gets table[layer[j]][src[j]] at position pos[j] and head slice
head[j] (-1: every position / the whole vector). A sweep has one write per row;
a joint patch has many writes in one row.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from ..sites import Component


@dataclass
class Writes:
    """Patches of one component (see the module docstring)."""
    component: Component
    rows: np.ndarray
    layer: np.ndarray
    pos: np.ndarray
    head: np.ndarray
    src: np.ndarray
    table: list              # per layer: (S, T, W) values to write, or None for unused layers

    def __len__(self) -> int:
        return len(self.rows)

    def groups(self):
        """(layer, every position?, whole vector?, indices into this Writes) for vectorised writes."""
        key = np.stack([self.layer, self.pos < 0, self.head < 0], axis=1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        for g, (layer, all_pos, all_head) in enumerate(uniq):
            yield int(layer), bool(all_pos), bool(all_head), np.nonzero(inv.reshape(-1) == g)[0]

    def select(self, keep: np.ndarray, new_rows: np.ndarray) -> "Writes":
        """The writes at positions `keep`, their rows renumbered to `new_rows`."""
        return Writes(self.component, new_rows, self.layer[keep], self.pos[keep], self.head[keep],
                      self.src[keep], self.table)


@dataclass
class Batch:
    ids: torch.Tensor          # (P, T) base prompts
    prompt: np.ndarray         # (n,) which base prompt each row runs
    writes: list               # [Writes]
    answer: np.ndarray         # (n,) token read out as the answer
    wrong: np.ndarray          # (n,)
    skip_lower: bool = True    # False: the plain path, every row through every layer (for tests)
    same_before: int | np.ndarray = 0   # per batch or per row: positions before this are known not
                               # to change, every write there writes the value already present
    need_lse: bool = True      # False: the metric reads no logsumexp (logit difference), so a
                               # backend may leave it NaN and skip the rest of the vocabulary
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.prompt)

    def first_sites(self, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the first block that sees a patch, and the first patched position."""
        block = np.full(self.n, n_layers, dtype=np.int64)
        pos = np.full(self.n, np.iinfo(np.int64).max, dtype=np.int64)
        for w in self.writes:
            np.minimum.at(block, w.rows, w.layer + w.component.shift)
            np.minimum.at(pos, w.rows, np.maximum(w.pos, 0))
        pos[pos == np.iinfo(np.int64).max] = 0
        return block, np.maximum(pos, self.same_before)

    def subset(self, rows: np.ndarray) -> "Batch":
        """These rows (indices into the batch) as a batch of their own, in this order."""
        rows = np.asarray(rows, dtype=np.int64)
        new = np.full(self.n, -1, dtype=np.int64)
        new[rows] = np.arange(len(rows))
        writes = []
        for w in self.writes:
            keep = np.nonzero(new[w.rows] >= 0)[0]
            if len(keep):
                writes.append(w.select(keep, new[w.rows[keep]]))
        same = self.same_before[rows] if isinstance(self.same_before, np.ndarray) else self.same_before
        return Batch(self.ids, self.prompt[rows], writes, self.answer[rows], self.wrong[rows],
                     self.skip_lower, same, self.need_lse, self.meta)


def sweep_batch(ids: torch.Tensor, component: Component, cells: np.ndarray, source: list,
                answer: int, wrong: int, skip_lower: bool = True, src=None,
                same_before: int = 0) -> Batch:
    """One row per cell (layer, position, head; -1 = all) of a sweep over one base prompt.

    Without `src`, each row writes the source run's activation (source: per layer (T, W);
    None: only to plan). With `src` (one index per cell), source holds per layer (S, T, W)
    tables and row i writes table row src[i]."""
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 3)
    n = len(cells)
    if src is None:
        table = [None if s is None else s.unsqueeze(0) for s in source]
        src = np.zeros(n, dtype=np.int64)
    else:
        table = source
    w = Writes(component, np.arange(n), cells[:, 0], cells[:, 1], cells[:, 2],
               np.asarray(src, dtype=np.int64), table)
    return Batch(ids.view(1, -1), np.zeros(n, dtype=np.int64), [w], np.full(n, answer),
                 np.full(n, wrong), skip_lower, same_before)


class Backend(ABC):
    """Runs forwards for the engine. Subclasses: hooks.HookBackend, nnsight.NNsightBackend."""

    name = "local"           # shown in results: local | nnsight | remote

    @abstractmethod
    def baseline(self, ids: torch.Tensor, component: Component):
        """Unpatched forward of R prompts: (last logits (R, V), [per layer (R, T, W)])."""

    @abstractmethod
    def run(self, batch: Batch) -> torch.Tensor:
        """Patched forwards of a batch: readout (n, 3) float32, in the batch's row order."""

    def record(self, batch: Batch, sites: list):
        """Patched forwards that also record activations: (readout (n, 3), {(component name,
        layer): (n, T, W)}) for each (Component, layer) in `sites` (path patching's first step)."""
        raise NotImplementedError(f"The {self.name} backend cannot record activations during a "
                                  f"patched run; path patching runs on local models.")

    def capture(self, ids: torch.Tensor, components: list):
        """Unpatched forward(s) recording several components: (last logits, {name: per layer})."""
        logits, acts = None, {}
        for comp in components:
            got, acts[comp.name] = self.baseline(ids, comp)
            logits = got if logits is None else logits
        return logits, acts

    def order(self, batch: Batch) -> np.ndarray | None:
        """A permutation of the rows to run them in (None: as given)."""
        return None

    def rows_per_call(self, requested: int, total: int) -> int:
        """Rows the engine should hand over per run() call: local backends take the engine's
        memory-bound batch size, a remote one wants everything in one request."""
        return requested
