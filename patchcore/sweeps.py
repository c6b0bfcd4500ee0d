"""Named sweeps: each one a declarative preset over the one patching engine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SweepError


@dataclass(frozen=True)
class SweepSpec:
    name: str
    component: str        # resid | attn | mlp | head
    per_position: bool    # one patch per position (else all positions at once)
    per_head: bool        # one patch per head (component 'head' only)
    title: str
    help: str

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


SWEEPS: dict[str, SweepSpec] = {s.name: s for s in [
    SweepSpec("layer", "resid", False, False, "Residual stream, whole layer",
              "Patches the residual stream (the block's output) at every position of one layer. "
              "This always restores everything after that layer, so it is close to 1.0 everywhere "
              "in denoising; use layer × position to see where the information sits."),
    SweepSpec("layer_pos", "resid", True, False, "Residual stream, layer × position",
              "Patches the residual stream at one layer and one token position."),
    SweepSpec("attn_pos", "attn", True, False, "Attention output, layer × position",
              "Patches the output of one layer's attention at one position, before it is added "
              "to the residual stream."),
    SweepSpec("mlp_pos", "mlp", True, False, "MLP output, layer × position",
              "Patches the output of one layer's MLP at one position, before it is added to the "
              "residual stream."),
    SweepSpec("head", "head", False, True, "Attention heads, layer × head",
              "Patches one attention head's output (its slice of the input of the attention "
              "output projection) at every position."),
    SweepSpec("head_pos", "head", True, True, "Attention heads, layer × position × head",
              "Patches one attention head's output at one position."),
]}

DIRECTIONS = {
    "denoise": "Denoising: clean activations are copied into the corrupted run. A high score "
               "means this component is enough to bring the clean answer back.",
    "noise": "Noising: corrupted activations are copied into the clean run. A low score means "
             "this component is needed for the clean answer.",
}


def get_sweep(name: str) -> SweepSpec:
    try:
        return SWEEPS[name]
    except KeyError:
        raise SweepError(f"Unknown sweep '{name}'. Choose one of: {', '.join(SWEEPS)}.",
                         field="sweep") from None


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise SweepError(f"Unknown direction '{direction}'. Choose denoise or noise.",
                         field="direction")
    return direction
