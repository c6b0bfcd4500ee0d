"""Named sweeps: each one a declarative preset over the one patching engine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SweepError
from .sites import DIRECTIONS, COMPONENTS, Component, Site, get_direction, lookup  # noqa: F401 (DIRECTIONS: part of this API)


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
    def head_axis(self) -> str:
        """'kv_head' where HEAD counts key/value heads (k, v), else 'head'."""
        return "kv_head" if self.component.heads == "kv" else "head"

    @property
    def axes(self) -> tuple[str, ...]:
        return ("layer",) + (("position",) if self.per_position else ()) + \
            ((self.head_axis,) if self.per_head else ())

    def shape(self, n_layers: int, n_positions: int, n_heads: int) -> tuple[int, ...]:
        sizes = {"layer": n_layers, "position": n_positions, "head": n_heads, "kv_head": n_heads}
        return tuple(sizes[a] for a in self.axes)

    def cells(self, n_layers: int, n_positions: int, n_heads: int) -> np.ndarray:
        """All patches as rows (layer, position, head) in C order over `axes`; -1 means 'all'."""
        shape = self.shape(n_layers, n_positions, n_heads)
        grid = np.indices(shape).reshape(len(shape), -1).T
        out = np.full((grid.shape[0], 3), -1, dtype=np.int64)
        for j, axis in enumerate(self.axes):
            out[:, ("layer", "position", self.head_axis).index(axis)] = grid[:, j]
        return out

    def dims(self, components, n_tokens: int) -> tuple[int, ...]:
        """The result's shape on this model (heads counted as the component counts them)."""
        return self.shape(components.n_layers, n_tokens, self.component.n_heads(components))

    def grid(self, components, n_tokens: int) -> np.ndarray:
        """Every cell of the sweep on this model, as `cells`."""
        return self.cells(components.n_layers, n_tokens, self.component.n_heads(components))


def _sweep(name, component, per_position, per_head, title, help, **kw) -> SweepSpec:
    return SweepSpec(name, COMPONENTS[component], per_position, per_head, title, help, **kw)


_KV = ("Models with grouped-query attention have fewer key/value heads than query heads; each "
       "key/value head is shared by a group of query heads (the result lists them).")

SWEEPS: dict[str, SweepSpec] = {s.name: s for s in [
    _sweep("layer", "resid", False, False, "Residual stream, whole layer",
           "Patches the residual stream (the block's output) at every position of one layer. "
           "This always restores everything after that layer, so it is close to 1.0 everywhere "
           "in denoising; use layer × position to see where the information sits.",
           caveat="Patching the whole residual stream at one layer restores everything after "
                  "it, so values near 1 at every layer are expected here and say little. "
                  "Use “Residual stream, layer × position” to see where the information sits."),
    _sweep("layer_pos", "resid", True, False, "Residual stream, layer × position",
           "Patches the residual stream at one layer and one token position.",
           hint="Residual-stream patches carry everything computed so far at that position; a "
                "band that moves from one position to a later one shows information being "
                "moved by attention."),
    _sweep("attn", "attn", False, False, "Attention output, whole layer",
           "Patches the output of one layer's attention at every position, before it is added to "
           "the residual stream."),
    _sweep("mlp", "mlp", False, False, "MLP output, whole layer",
           "Patches the output of one layer's MLP at every position, before it is added to the "
           "residual stream."),
    _sweep("attn_pos", "attn", True, False, "Attention output, layer × position",
           "Patches the output of one layer's attention at one position, before it is added "
           "to the residual stream."),
    _sweep("mlp_pos", "mlp", True, False, "MLP output, layer × position",
           "Patches the output of one layer's MLP at one position, before it is added to the "
           "residual stream."),
    _sweep("head", "head", False, True, "Attention heads, layer × head",
           "Patches one attention head's output (its slice of the input of the attention "
           "output projection) at every position."),
    _sweep("head_pos", "head", True, True, "Attention heads, layer × position × head",
           "Patches one attention head's output at one position."),
    _sweep("head_q", "q", False, True, "Head queries, layer × head",
           "Patches one head's queries (its slice of the query projection's output) at every "
           "position: what the head looks for."),
    _sweep("head_k", "k", False, True, "Head keys, layer × key/value head",
           "Patches one key/value head's keys (its slice of the key projection's output) at "
           "every position: what each position offers to be found by. " + _KV),
    _sweep("head_v", "v", False, True, "Head values, layer × key/value head",
           "Patches one key/value head's values (its slice of the value projection's output) "
           "at every position: what the head moves once it attends. " + _KV),
    _sweep("head_pattern", "pattern", False, True, "Attention patterns, layer × head",
           "Patches one head's attention pattern (its attention probabilities, every query "
           "position) with the other run's: does it matter where the head looks?",
           hint="A pattern patch changes only where a head looks, not what it reads there; "
                "compare with the head's value sweep to tell the two apart."),
]}


def get_sweep(name: str) -> SweepSpec:
    return lookup(SWEEPS, name, "sweep", "sweep")


def check_direction(direction: str) -> str:
    return get_direction(direction).name


def site_of(spec: SweepSpec | str, cell) -> Site:
    """The site one heatmap cell patches, from its indices in `spec.axes` order.

    layer_pos (l, p) -> resid:l@p; attn_pos / mlp_pos -> attn:l@p / mlp:l@p; head (l, h) ->
    head:l.h; head_pos (l, p, h) -> head:l.h@p; head_q / head_k / head_v -> q / k / v:l.h (k and v
    count key/value heads); head_pattern -> pattern:l.h; layer / attn / mlp (l,) -> resid:l /
    attn:l / mlp:l. A path sweep's cells (sweep 'head' or 'mlp') are its senders."""
    spec = get_sweep(spec) if isinstance(spec, str) else spec
    try:
        idx = tuple(int(i) for i in cell)
    except (TypeError, ValueError):
        idx = ()
    if len(idx) != len(spec.axes) or any(i < 0 for i in idx):
        raise SweepError(f"A cell of the {spec.name} sweep has {len(spec.axes)} numbers "
                         f"({', '.join(spec.axes)}), each 0 or more; got {cell!r}.", field="sites")
    at = dict(zip(spec.axes, idx))
    return Site(spec.component, at["layer"], at.get(spec.head_axis, -1), at.get("position", -1))


def cell_of(spec: SweepSpec | str, site: Site) -> tuple[int, ...] | None:
    """The heatmap cell of `site` in this sweep (site_of's inverse), or None if it has none."""
    spec = get_sweep(spec) if isinstance(spec, str) else spec
    if site.component is not spec.component or (site.head >= 0) != spec.per_head \
            or (site.pos >= 0) != spec.per_position:
        return None
    at = {"layer": site.layer, "position": site.pos, spec.head_axis: site.head}
    return tuple(at[a] for a in spec.axes)
