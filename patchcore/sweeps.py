"""Named sweeps: each one a declarative preset over the one patching engine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SweepError
from .sites import COMPONENTS, DIRECTIONS, Component, get_direction  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    component: Component
    per_position: bool    # one patch per position (else all positions at once)
    per_head: bool        # one patch per head (per-head components only)
    title: str
    help: str
    caveat: str = ""      # what a reader must know before reading the result (shown with it)
    hint: str = ""        # how to read it (the summary's last sentence)

    @property
    def axes(self) -> tuple[str, ...]:
        return ("layer",) + (("position",) if self.per_position else ()) + \
            (("head",) if self.per_head else ())

    def shape(self, n_layers: int, n_positions: int, n_heads: int) -> tuple[int, ...]:
        sizes = {"layer": n_layers, "position": n_positions, "head": n_heads}
        return tuple(sizes[a] for a in self.axes)

    def cells(self, n_layers: int, n_positions: int, n_heads: int) -> np.ndarray:
        """All patches as rows (layer, position, head) in C order over `axes`; -1 means 'all'."""
        shape = self.shape(n_layers, n_positions, n_heads)
        grid = np.indices(shape).reshape(len(shape), -1).T
        out = np.full((grid.shape[0], 3), -1, dtype=np.int64)
        for j, axis in enumerate(self.axes):
            out[:, ("layer", "position", "head").index(axis)] = grid[:, j]
        return out


_R, _A, _M, _H = (COMPONENTS[n] for n in ("resid", "attn", "mlp", "head"))

SWEEPS: dict[str, SweepSpec] = {s.name: s for s in [
    SweepSpec("layer", _R, False, False, "Residual stream, whole layer",
              "Patches the residual stream (the block's output) at every position of one layer. "
              "This always restores everything after that layer, so it is close to 1.0 everywhere "
              "in denoising; use layer × position to see where the information sits.",
              caveat="Patching the whole residual stream at one layer restores everything after "
                     "it, so values near 1 at every layer are expected here and say little. "
                     "Use “Residual stream, layer × position” to see where the information sits."),
    SweepSpec("layer_pos", _R, True, False, "Residual stream, layer × position",
              "Patches the residual stream at one layer and one token position.",
              hint="Residual-stream patches carry everything computed so far at that position; a "
                   "band that moves from one position to a later one shows information being "
                   "moved by attention."),
    SweepSpec("attn_pos", _A, True, False, "Attention output, layer × position",
              "Patches the output of one layer's attention at one position, before it is added "
              "to the residual stream."),
    SweepSpec("mlp_pos", _M, True, False, "MLP output, layer × position",
              "Patches the output of one layer's MLP at one position, before it is added to the "
              "residual stream."),
    SweepSpec("head", _H, False, True, "Attention heads, layer × head",
              "Patches one attention head's output (its slice of the input of the attention "
              "output projection) at every position."),
    SweepSpec("head_pos", _H, True, True, "Attention heads, layer × position × head",
              "Patches one attention head's output at one position."),
]}

def get_sweep(name: str) -> SweepSpec:
    try:
        return SWEEPS[name]
    except KeyError:
        raise SweepError(f"Unknown sweep '{name}'. Choose one of: {', '.join(SWEEPS)}.",
                         field="sweep") from None


def check_direction(direction: str) -> str:
    return get_direction(direction).name
