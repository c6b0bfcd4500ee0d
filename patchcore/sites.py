"""What can be patched (components), which way (directions): small objects with their behaviour.

A component says where its activation lives in the model (which module, its
input or its output), how its vector splits into heads, and which block is the
first to see a patch of it. A direction says which run the activations come
from and which run they are written into. Nothing outside this module compares
component or direction names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import SweepError


# How q, k, v sit in a family's projection output (FamilyPaths.qkv_layout): (groups, whether
# the groups come before the heads). GPT-2's c_attn is [all q | all k | all v]; GPT-NeoX's
# query_key_value is, per head, [q | k | v].
_QKV_GROUPS = {"separate": (1, False), "thirds": (3, True), "per_head": (3, False)}


def split_heads(x: torch.Tensor, heads: int, groups: int, index: int, groups_first: bool):
    """(..., W) -> (..., heads, W // (heads * groups)): the `index`-th group of every head, a view.

    Written with plain torch only: the nnsight backend ships the same arithmetic to NDIF."""
    e = x.shape[-1] // (heads * groups)
    if groups_first:
        return x.view(*x.shape[:-1], groups, heads, e)[..., index, :, :]
    return x.view(*x.shape[:-1], heads, groups, e)[..., index, :]


@dataclass(frozen=True)
class Component:
    name: str          # the name used in sweeps, sites and results
    title: str         # plain words for people
    modules: str       # ComponentMap attribute holding one module per layer
    hook: str          # "output": the module's output (first element); "input": its first
                       # argument; "pattern": the attention probabilities inside the module
    shift: int = 0     # a patch at layer l is first seen by block l + shift (resid: 1)
    view: str = "whole"      # how the activation splits into heads: whole | heads | q | k | v | pattern
    heads: str = ""          # "query" or "kv": which heads HEAD counts ("" = not per head)
    atp_note: str = ""       # where attribution patching is known to be weak for this component

    @property
    def per_head(self) -> bool:
        return bool(self.heads)

    @property
    def projection(self) -> bool:
        """A query, key or value projection's output (a head's input)."""
        return self.view in ("q", "k", "v")

    def module(self, components, layer: int) -> torch.nn.Module:
        return getattr(components, self.modules)[layer]

    def n_heads(self, components) -> int:
        """Slices of the vector: the model's (query or key/value) heads, else 1 (the whole)."""
        return {"": 1, "query": components.n_heads, "kv": components.n_kv_heads}[self.heads]

    def layout(self, components) -> tuple[int, int, int, bool]:
        """(heads, groups, index, groups first): where this component's heads sit in its tensor
        (see split_heads); patterns are (..., heads, T, T) instead."""
        if self.view in ("q", "k", "v"):
            groups, first = _QKV_GROUPS[components.paths.qkv_layout]
            return self.n_heads(components), groups, "qkv".index(self.view) if groups > 1 else 0, first
        return self.n_heads(components), 1, 0, False

    def heads_view(self, x: torch.Tensor, components) -> torch.Tensor:
        """(..., T, W) -> (..., T, n_heads, d), a view that writes go through (for patterns:
        (..., heads, T, T) -> (..., T, heads, T))."""
        if self.view == "pattern":
            return x.transpose(-3, -2)
        return split_heads(x, *self.layout(components))


COMPONENTS: dict[str, Component] = {c.name: c for c in [
    Component("resid", "Residual stream", "blocks", "output", shift=1,
              atp_note="Attribution patching is a weak approximation for the residual stream: a "
                       "residual patch replaces the whole state, and its effect on later layers is "
                       "far from linear. Use it as a rough map and check the top cells exactly."),
    Component("attn", "Attention output", "attn", "output"),
    Component("mlp", "MLP output", "mlp", "output",
              atp_note="The first layer's MLP (layer 0) often acts as part of the token embedding; "
                       "attribution patching is known to be unreliable there. Check it exactly."),
    Component("head", "Attention head output", "attn_out", "input", view="heads", heads="query"),
    Component("q", "Query", "q", "output", view="q", heads="query"),
    Component("k", "Key", "k", "output", view="k", heads="kv"),
    Component("v", "Value", "v", "output", view="v", heads="kv"),
    Component("pattern", "Attention pattern", "attn", "pattern", view="pattern", heads="query"),
]}


def lookup(table: dict, name, what: str, field: str):
    """table[name], or a SweepError that names the bad value and the choices."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise SweepError(f"Unknown {what} '{name}'. Choose one of: {', '.join(table)}.",
                         field=field) from None


def get_component(name: str) -> Component:
    return lookup(COMPONENTS, name, "component", "component")


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
    return lookup(_DIRECTIONS, name, "direction", "direction")


# -- sites: COMPONENT:LAYER[.HEAD][@POSITION] ----------------------------------------------

_SITE = re.compile(r"^(?P<c>[a-z]+):(?P<l>\d{1,4})(?:\.(?P<h>\d{1,4}))?(?:@(?P<p>\d{1,5}))?$")
SITE_HELP = ("Write sites as COMPONENT:LAYER[.HEAD][@POSITION], 0-based, e.g. head:9.6, resid:5@3, "
             "mlp:0, v:9.1 (components: " + ", ".join(COMPONENTS) + ").")


@dataclass(frozen=True)
class Site:
    """One patch site: a component at a layer, one head (-1: all) and one position (-1: all)."""
    component: Component
    layer: int
    head: int = -1
    pos: int = -1

    def __str__(self) -> str:
        return (f"{self.component.name}:{self.layer}" + (f".{self.head}" if self.head >= 0 else "")
                + (f"@{self.pos}" if self.pos >= 0 else ""))

    @property
    def cell(self) -> tuple[int, int, int]:
        return self.layer, self.pos, self.head


def parse_site(text: str) -> Site:
    """A site from its notation (syntax only; check_sites checks it against a model)."""
    m = _SITE.match(str(text).strip())
    if not m:
        raise SweepError(f"'{text}' is not a site. {SITE_HELP}", field="sites")
    comp = COMPONENTS.get(m["c"])
    if comp is None:
        raise SweepError(f"'{text}': unknown component '{m['c']}'. {SITE_HELP}", field="sites")
    head = -1 if m["h"] is None else int(m["h"])
    if head >= 0 and not comp.per_head:
        raise SweepError(f"'{text}': {comp.name} has no heads; write {comp.name}:{m['l']}"
                         + (f"@{m['p']}" if m["p"] else "") + ".", field="sites")
    return Site(comp, int(m["l"]), head, -1 if m["p"] is None else int(m["p"]))


def parse_sites(text) -> list[Site]:
    """Comma-separated sites (or a list of strings); a repeated site is an error."""
    parts = [p for p in (text.split(",") if isinstance(text, str) else list(text)) if str(p).strip()]
    if not parts:
        raise SweepError(f"No sites given. {SITE_HELP}", field="sites")
    sites = [parse_site(p) for p in parts]
    seen = set()
    for s in sites:
        if str(s) in seen:
            raise SweepError(f"'{s}' is listed twice; list each site once.", field="sites")
        seen.add(str(s))
    return sites


def check_positions(sites: list[Site], lengths: list[int]) -> None:
    """Positions line up only across pairs of one token length: refuse a site with @POSITION
    on pairs of several lengths, naming it."""
    named = [s for s in sites if s.pos >= 0]
    if len(set(lengths)) > 1 and named:
        raise SweepError(f"'{named[0]}' names a position, but the pairs have different lengths "
                         f"({min(lengths)}–{max(lengths)} tokens), so positions do not line up. "
                         f"Use pairs of one length, or sites without @POSITION.", field="sites")


def check_sites(sites: list[Site], components, n_tokens: int) -> list[Site]:
    """Raise SweepError naming the first site that does not fit this model or prompt."""
    for s in sites:
        if s.layer >= components.n_layers:
            raise SweepError(f"'{s}': layer {s.layer} does not exist; this model has layers "
                             f"0–{components.n_layers - 1}.", field="sites")
        n = s.component.n_heads(components)
        if s.head >= n:
            kind = "key/value heads" if s.component.heads == "kv" else "heads"
            raise SweepError(f"'{s}': head {s.head} does not exist; this model has {n} {kind} "
                             f"(0–{n - 1}) per layer.", field="sites")
        if s.pos >= n_tokens:
            raise SweepError(f"'{s}': position {s.pos} is past the prompt's last token "
                             f"(positions 0–{n_tokens - 1}).", field="sites")
    return sites
