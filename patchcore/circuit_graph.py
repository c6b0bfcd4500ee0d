"""The graph circuit discovery scores: nodes, edges, and the family facts they rest on.

Nodes, in site notation (0-based):

    input        sender: the input embeddings, i.e. what block 0 reads (token + position
                 embeddings, scaled where the family scales them)
    head:L.H     sender: head H's contribution to the residual stream, the attention output
                 projection applied to that head's slice alone (no bias)
    head:L.H:q   receiver: the residual input of head H's query. Receivers head:L.G:k and
    head:L.G:k   head:L.G:v count KEY/VALUE heads: on a grouped-query model (the embedded
    head:L.G:v   model: 9 query heads, 3 key/value heads) head:L.G:k is key/value head G, read by
                 query heads G*n/kv .. (G+1)*n/kv-1 (the paths module counts them the same way)
    mlp:L        sender: the MLP's output; receiver: its residual input (before its norm)
    logits       receiver: the final residual stream (the input of the final norm)

Edges: a sender to every receiver that reads the residual stream after the sender wrote to
it. Heads of layer L feed the q/k/v of layers > L, the MLP of layer L (not with GPT-NeoX's
parallel residual, `use_parallel_residual`: there attention and MLP both read the block's
input) and everything later; `input` feeds everything; everything feeds `logits`.

The residual stream is the sum of the senders' outputs plus constant biases, so a receiver's
input splits into one term per edge. That fails where outputs pass through a norm before the
residual add (Gemma 2, Gemma 3): those families are refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SweepError

# Per family: the norm in front of attention and the one in front of the MLP (block-relative)
_NORMS = {"gpt2": ("ln_1", "ln_2")}
_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")
# Families that normalise a sublayer's output before adding it to the residual stream
_POST_NORMED = {"gemma2": "Gemma 2", "gemma3_text": "Gemma 3"}

_NODE = re.compile(r"^(?:input|logits|mlp:(\d{1,4})|head:(\d{1,4})\.(\d{1,4})(?::([qkv]))?)$")


def check_family(model) -> None:
    """Raise SweepError (field model) for a family whose residual stream is not a sum of edges."""
    c = model.components
    name = _POST_NORMED.get(c.model_type)
    if name is None and any(hasattr(b, "post_feedforward_layernorm") for b in c.blocks[:1]):
        name = c.paths.family
    if name is not None:
        raise SweepError(f"{name} normalises every attention and MLP output before adding it to the "
                         f"residual stream (post-attention and post-feedforward norms), so its residual "
                         f"stream does not split into additive edges and circuit discovery cannot run "
                         f"on it.", field="model")


def norms(model, layer: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the norm in front of attention, the norm in front of the MLP) of one block."""
    c = model.components
    a, m = _NORMS.get(c.model_type, _LLAMA_NORMS)
    block = c.blocks[layer]
    return block.get_submodule(a), block.get_submodule(m)


def affine_map(module: torch.nn.Module, d_in: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M (d_in, d_out), b (d_out,)) with module(x) = x @ M + b, for a linear projection.

    nn.Linear and GPT-2's Conv1D are read from their weights; anything else is probed."""
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    if isinstance(module, torch.nn.Linear):
        m = w.T
    elif type(module).__name__ == "Conv1D" and w is not None and w.shape[0] == d_in:
        m = w
    else:
        eye = torch.eye(d_in, device=like.device, dtype=like.dtype)
        zero = module.forward(torch.zeros_like(eye[:1]))
        return (module.forward(eye) - zero).detach(), zero[0].detach()
    m = m.detach().to(like.dtype)
    return m, (torch.zeros(m.shape[1], device=m.device, dtype=m.dtype) if b is None else b.detach().to(m.dtype))


@dataclass
class Graph:
    """The nodes and edges of one model. Senders and receivers are indexed in computation order."""
    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool

    @property
    def per_layer_senders(self) -> int:
        return self.n_heads + 1

    @property
    def per_layer_receivers(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * self.per_layer_senders

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.per_layer_receivers + 1

    # -- indices -----------------------------------------------------------------------
    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * self.per_layer_senders + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * self.per_layer_senders + self.n_heads

    def senders_before(self, layer: int, mlp: bool = False) -> int:
        """How many senders (a prefix of the order) the attention (or MLP) of `layer` reads."""
        n = 1 + layer * self.per_layer_senders
        return n + self.n_heads if mlp and not self.parallel else n

    def attn_receivers(self, layer: int) -> slice:
        """q of every head, then k and v of every key/value head."""
        start = layer * self.per_layer_receivers
        return slice(start, start + self.n_heads + 2 * self.n_kv_heads)

    def mlp_receiver(self, layer: int) -> int:
        return (layer + 1) * self.per_layer_receivers - 1

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    # -- names ---------------------------------------------------------------------------
    def senders(self) -> list[str]:
        out = ["input"]
        for layer in range(self.n_layers):
            out += [f"head:{layer}.{h}" for h in range(self.n_heads)] + [f"mlp:{layer}"]
        return out

    def receivers(self) -> list[str]:
        out = []
        for layer in range(self.n_layers):
            out += [f"head:{layer}.{h}:q" for h in range(self.n_heads)]
            out += [f"head:{layer}.{g}:{kind}" for kind in "kv" for g in range(self.n_kv_heads)]
            out.append(f"mlp:{layer}")
        return out + ["logits"]

    def receiver_kinds(self) -> list[tuple[str, int, int]]:
        """Per receiver: (kind q|k|v|mlp|logits, layer, head or -1)."""
        out = []
        for layer in range(self.n_layers):
            out += [("q", layer, h) for h in range(self.n_heads)]
            out += [(kind, layer, g) for kind in "kv" for g in range(self.n_kv_heads)]
            out.append(("mlp", layer, -1))
        return out + [("logits", self.n_layers, -1)]

    def mask(self) -> np.ndarray:
        """(senders, receivers) bool: which pairs are edges."""
        m = np.zeros((self.n_senders, self.n_receivers), dtype=bool)
        for layer in range(self.n_layers):
            m[:self.senders_before(layer), self.attn_receivers(layer)] = True
            m[:self.senders_before(layer, mlp=True), self.mlp_receiver(layer)] = True
        m[:, self.logits_receiver] = True
        return m

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(sender index, receiver index) of every edge, senders in order, then receivers."""
        s, r = np.nonzero(self.mask())
        return s, r

    def parse_node(self, text: str, receiver: bool) -> int:
        """The index of a sender or receiver named in node notation (SweepError if none)."""
        m = _NODE.match(str(text).strip())
        names = self.receivers() if receiver else self.senders()
        what = "receiver" if receiver else "sender"
        if not m or str(text).strip() not in names:
            raise SweepError(f"'{text}' is not a {what} of this model's graph. Senders: input, "
                             f"head:L.H, mlp:L; receivers: head:L.H:q, head:L.G:k, head:L.G:v (G counts "
                             f"key/value heads), mlp:L, logits.", field="edges")
        return names.index(str(text).strip())


def build_graph(model) -> Graph:
    """The graph of a loaded model (SweepError for families that do not decompose)."""
    check_family(model)
    c = model.components
    parallel = bool(getattr(model.hf.config, "use_parallel_residual", False)) and c.model_type == "gpt_neox"
    return Graph(c.n_layers, c.n_heads, c.n_kv_heads, parallel)
