"""What can be patched (components), which way (directions): small objects with their behaviour.

A component says where its activation lives in the model (which module, its
input or its output), how its vector splits into heads, and which block is the
first to see a patch of it. A direction says which run the activations come
from and which run they are written into. Nothing outside this module compares
component or direction names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SweepError


@dataclass(frozen=True)
class Component:
    name: str          # the name used in sweeps, sites and results
    title: str         # plain words for people
    modules: str       # ComponentMap attribute holding one module per layer
    hook: str          # "output": the module's output (first element); "input": its first argument
    shift: int = 0     # a patch at layer l is first seen by block l + shift (resid: 1)
    per_head: bool = False   # the vector is n_heads slices of d_head
    atp_note: str = ""       # where attribution patching is known to be weak for this component

    def module(self, components, layer: int) -> torch.nn.Module:
        return getattr(components, self.modules)[layer]

    def n_heads(self, components) -> int:
        """Slices of the vector: heads for per-head components, else 1 (the whole vector)."""
        return components.n_heads if self.per_head else 1

    def heads_view(self, x: torch.Tensor, components) -> torch.Tensor:
        """(..., T, W) -> (..., T, n_heads, W // n_heads), a view writes go through."""
        h = self.n_heads(components)
        return x.view(*x.shape[:-1], h, x.shape[-1] // h)


COMPONENTS: dict[str, Component] = {c.name: c for c in [
    Component("resid", "Residual stream", "blocks", "output", shift=1,
              atp_note="Attribution patching is a weak approximation for the residual stream: a "
                       "residual patch replaces the whole state, and its effect on later layers is "
                       "far from linear. Use it as a rough map and check the top cells exactly."),
    Component("attn", "Attention output", "attn", "output"),
    Component("mlp", "MLP output", "mlp", "output",
              atp_note="The first layer's MLP (layer 0) often acts as part of the token embedding; "
                       "attribution patching is known to be unreliable there. Check it exactly."),
    Component("head", "Attention head output", "attn_out", "input", per_head=True),
]}


def get_component(name: str) -> Component:
    try:
        return COMPONENTS[name]
    except KeyError:
        raise SweepError(f"Unknown component '{name}'. Choose one of: {', '.join(COMPONENTS)}.",
                         field="component") from None


@dataclass(frozen=True)
class Direction:
    name: str
    source_row: int    # which unpatched run the activations come from: 0 clean, 1 corrupted
    title: str
    help: str

    @property
    def target_row(self) -> int:
        """The run patched into (its unpatched metric is what a no-op patch gives)."""
        return 1 - self.source_row

    def pick(self, clean, corrupted) -> tuple:
        """(source, target) from a (clean, corrupted) pair of anything."""
        both = (clean, corrupted)
        return both[self.source_row], both[self.target_row]

    def target_metric(self, clean: float, corrupted: float) -> float:
        return self.pick(clean, corrupted)[1]

    @property
    def restores(self) -> bool:
        """True when clean activations go into the corrupted run (a patch can restore)."""
        return self.source_row == 0

    def effect(self, score):
        """How far a normalised score moved the behaviour, 0 = no effect, 1 = all of it:
        the score itself when denoising (restored), 1 - score when noising (destroyed)."""
        return score if self.source_row == 0 else 1.0 - score


_DIRECTIONS = {d.name: d for d in [
    Direction("denoise", 0, "Denoise (clean → corrupted)",
              "Denoising: clean activations are copied into the corrupted run. A high score "
              "means this component is enough to bring the clean answer back."),
    Direction("noise", 1, "Noise (corrupted → clean)",
              "Noising: corrupted activations are copied into the clean run. A low score means "
              "this component is needed for the clean answer."),
]}

DIRECTIONS: dict[str, str] = {name: d.help for name, d in _DIRECTIONS.items()}  # name -> help text


def get_direction(name: str) -> Direction:
    try:
        return _DIRECTIONS[name]
    except (KeyError, TypeError):
        raise SweepError(f"Unknown direction '{name}'. Choose denoise or noise.",
                         field="direction") from None
