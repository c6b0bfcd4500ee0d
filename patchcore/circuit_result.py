"""The result of circuit discovery: every edge's score, the exact checks, the faithfulness curve.

JSON (kind "circuit"): method, steps, direction, metric, ablation, n_pairs, edges [{sender,
receiver, score, exact?}] sorted by |score| (exact only where it was checked), curve [{edges,
faithfulness, metric}], top_k and faithfulness_top_k, the clean and corrupted metrics, the
model's shape, pairs, timings. `top(k)` is the subgraph of the k strongest edges.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_RECV = re.compile(r"^head:(\d+)\.(\d+):([qkv])$")
_SEND = re.compile(r"^(head|mlp):(\d+)(?:\.(\d+))?$")
MAX_EDGES = 2_000_000


def node_info(name: str, n_layers: int, n_heads: int, n_kv_heads: int) -> dict:
    """How to draw a node: kind (input | head | mlp | logits | q | k | v), layer (input -1, logits
    n_layers), head, and for q/k/v the query heads that read that input."""
    if name in ("input", "logits"):
        return {"name": name, "kind": name, "layer": -1 if name == "input" else n_layers, "head": None}
    m = _RECV.match(name)
    if m:
        layer, head, kind = int(m[1]), int(m[2]), m[3]
        group = n_heads // max(1, n_kv_heads)
        heads = [head] if kind == "q" else list(range(head * group, (head + 1) * group))
        return {"name": name, "kind": kind, "layer": layer, "head": head,
                "heads": [f"head:{layer}.{h}" for h in heads]}
    m = _SEND.match(name)
    if not m:
        raise ValueError(f"'{name}' is not a node of a circuit graph")
    return {"name": name, "kind": m[1], "layer": int(m[2]), "head": None if m[3] is None else int(m[3])}


@dataclass
class Subgraph:
    """The k strongest edges and the nodes they touch (mlp:L is one node, sender and receiver)."""
    nodes: list
    edges: list


@dataclass
class CircuitResult:
    model: str
    method: str                 # eap | eap-ig
    steps: int                  # integrated-gradient points (1 for eap)
    direction: str
    metric: str
    ablation: str               # corrupted | mean | zero
    n_pairs: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    clean_metric: float         # means over pairs
    corrupted_metric: float
    sender: list                # per edge, sorted by |score| (strongest first)
    receiver: list
    score: np.ndarray
    exact: np.ndarray           # NaN where not checked
    top_k: int                  # the circuit size reported (--edges)
    curve: list                 # [{"edges": k, "faithfulness": f, "metric": raw mean}], k ascending
    check_top: int = 0
    parallel_residual: bool = False
    reference: str = ""
    pairs: list = field(default_factory=list)
    device: str = "cpu"         # where and when (results.stamp)
    dtype: str = "float32"
    created: str = ""
    seconds: float = 0.0        # the work: wall time (model loading excluded), per stage, rows
    timings: dict = field(default_factory=dict)
    forward_rows: int = 0
    backend: str = "local"
    warnings: list = field(default_factory=list)
    kind = "circuit"

    @property
    def n_edges(self) -> int:
        return len(self.score)

    def faithfulness(self, k: int) -> float:
        """Faithfulness of the top k edges (k must be on the curve)."""
        for point in self.curve:
            if point["edges"] == k:
                return point["faithfulness"]
        raise KeyError(f"{k} edges is not on the curve ({', '.join(str(p['edges']) for p in self.curve)})")

    @property
    def faithfulness_top_k(self) -> float:
        return self.faithfulness(self.top_k)

    def default_warnings(self) -> list[str]:
        w = []
        if abs(self.clean_metric - self.corrupted_metric) < 1e-6 or not all(
                math.isfinite(p["faithfulness"]) for p in self.curve):
            w.append("The circuit with every edge and the one with none give the same metric, so "
                     "faithfulness is undefined; pick pairs where the answer changes.")
        return w

    def to_frame(self) -> pd.DataFrame:
        """One row per edge, strongest first: rank, sender, receiver, score, exact."""
        return pd.DataFrame({"rank": np.arange(1, self.n_edges + 1), "sender": self.sender,
                             "receiver": self.receiver, "score": self.score, "exact": self.exact})

    def top(self, k: int) -> Subgraph:
        """The subgraph of the k edges with the largest |score|."""
        k = max(0, min(int(k), self.n_edges))
        edges, names = [], {}
        for i in range(k):
            e = {"sender": self.sender[i], "receiver": self.receiver[i], "score": float(self.score[i])}
            if np.isfinite(self.exact[i]):
                e["exact"] = float(self.exact[i])
            edges.append(e)
            for name in (e["sender"], e["receiver"]):
                names.setdefault(name, node_info(name, self.n_layers, self.n_heads, self.n_kv_heads))
        nodes = sorted(names.values(), key=lambda n: (n["layer"], n["kind"] == "mlp", n["head"] or 0, n["name"]))
        return Subgraph(nodes, edges)

    def to_json(self) -> dict:
        num = lambda x: None if x is None or not math.isfinite(x) else float(x)  # noqa: E731
        edges = []
        for s, r, v, x in zip(self.sender, self.receiver, self.score.tolist(), self.exact.tolist()):
            e = {"sender": s, "receiver": r, "score": num(v)}
            if math.isfinite(x):
                e["exact"] = x
            edges.append(e)
        return {"kind": "circuit", "model": self.model, "method": self.method, "steps": self.steps,
                "direction": self.direction, "metric": self.metric, "ablation": self.ablation,
                "reference": self.reference, "n_pairs": self.n_pairs, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "parallel_residual": self.parallel_residual, "clean_metric": num(self.clean_metric),
                "corrupted_metric": num(self.corrupted_metric), "n_edges": self.n_edges,
                "top_k": self.top_k, "faithfulness_top_k": num(self.faithfulness_top_k),
                "check_top": self.check_top,
                "curve": [{"edges": p["edges"], "faithfulness": num(p["faithfulness"]),
                           "metric": num(p["metric"])} for p in self.curve],
                "edges": edges, "pairs": list(self.pairs), "seconds": self.seconds,
                "timings": dict(self.timings), "forward_rows": self.forward_rows,
                "backend": self.backend, "device": self.device, "dtype": self.dtype,
                "warnings": list(self.warnings), "created": self.created}

    @classmethod
    def from_json(cls, d: dict) -> "CircuitResult":
        nan = lambda x: np.nan if x is None else float(x)  # noqa: E731
        edges = d["edges"]
        return cls(model=d["model"], method=d["method"], steps=int(d.get("steps", 1)),
                   direction=d["direction"], metric=d["metric"], ablation=d.get("ablation", "corrupted"),
                   n_pairs=int(d["n_pairs"]), n_layers=int(d["n_layers"]), n_heads=int(d["n_heads"]),
                   n_kv_heads=int(d.get("n_kv_heads", d["n_heads"])),
                   clean_metric=nan(d.get("clean_metric")), corrupted_metric=nan(d.get("corrupted_metric")),
                   sender=[e["sender"] for e in edges], receiver=[e["receiver"] for e in edges],
                   score=np.array([nan(e["score"]) for e in edges], dtype=float),
                   exact=np.array([nan(e.get("exact")) for e in edges], dtype=float),
                   top_k=int(d["top_k"]), check_top=int(d.get("check_top", 0)),
                   curve=[{"edges": int(p["edges"]), "faithfulness": nan(p["faithfulness"]),
                           "metric": nan(p.get("metric"))} for p in d["curve"]],
                   parallel_residual=bool(d.get("parallel_residual", False)),
                   reference=d.get("reference", ""), pairs=list(d.get("pairs", [])),
                   seconds=float(d.get("seconds", 0.0)), timings=dict(d.get("timings", {})),
                   forward_rows=int(d.get("forward_rows", 0)), backend=d.get("backend", "local"),
                   device=d.get("device", "cpu"), dtype=d.get("dtype", "float32"),
                   warnings=list(d.get("warnings", [])), created=d.get("created", ""))

    def summary_lines(self, n: int = 5) -> list[str]:
        """Plain words: what ran, the strongest edges, the faithfulness of the top k and the curve."""
        method = "EAP-IG" + f" ({self.steps} steps)" if self.method == "eap-ig" else "EAP"
        lines = [f"Circuit discovery with {method}, {self.direction}, {self.metric}, ablation "
                 f"{self.ablation}, over {self.n_pairs} pair(s): {self.n_edges:,} edges scored "
                 f"(clean {self.clean_metric:+.3f}, corrupted {self.corrupted_metric:+.3f})."]
        lines.append("Strongest edges (score = estimated change of the metric when the edge carries "
                     "the source run's value):")
        for i in range(min(n, self.n_edges)):
            ex = f", exact {self.exact[i]:+.3f}" if np.isfinite(self.exact[i]) else ""
            lines.append(f"  {self.sender[i]} → {self.receiver[i]}: {self.score[i]:+.3f}{ex}")
        checked = np.isfinite(self.exact)
        if checked.any():
            gap = np.abs(self.exact[checked] - self.score[checked])
            same = int((np.sign(self.exact[checked]) == np.sign(self.score[checked])).sum())
            lines.append(f"Exact check of the top {int(checked.sum())} edges: {same} have the estimate's "
                         f"sign; largest gap {gap.max():.3f}.")
        f = self.faithfulness_top_k
        lines.append(f"The top {self.top_k:,} edges keep {f:.0%} of the behaviour (faithfulness {f:.3f}; "
                     f"no edges = 0, all {self.n_edges:,} edges = 1)." if math.isfinite(f) else
                     f"Faithfulness of the top {self.top_k:,} edges is undefined.")
        lines.append("Faithfulness by circuit size: " + ", ".join(
            f"{p['edges']:,}: {p['faithfulness']:.2f}" for p in self.curve))
        return lines + [f"Warning: {w}" for w in self.warnings]


def describe_circuit(r: dict) -> dict:
    """The history's index columns of a circuit's JSON (history.describe)."""
    n_pairs = int(r.get("n_pairs", 1) or 1)
    f = r.get("faithfulness_top_k")
    title = (f"circuit {r.get('method', '')} {r.get('direction', '')} – top {r.get('top_k')} of "
             f"{len(r.get('edges') or [])} edges" + (f", faithfulness {f:.2f}" if f is not None else "")
             + f" ×{n_pairs}")
    return {"kind": "circuit", "model": str(r.get("model", "")), "sweep": "circuit",
            "direction": r.get("direction", ""), "metric": str(r.get("metric", "")), "n_pairs": n_pairs,
            "seconds": float(r.get("seconds", 0) or 0), "title": title, "created": r.get("created") or ""}


def check_circuit_json(d: dict, where: str) -> None:
    """Raise HistoryError (one line naming the field) unless `d` is a CircuitResult's JSON."""
    from .metrics import METRICS
    from .run_files import MAX_DIM, MAX_NAME, _at, _bad, _free, _int, _list, _num, _text, _texts
    from .sweeps import DIRECTIONS

    at = lambda k: _at(where, k)  # noqa: E731
    for k in ("model", "method", "direction", "metric", "n_pairs", "n_layers", "n_heads", "edges",
              "curve", "top_k"):
        if k not in d:
            _bad(at(k), "is missing")
    _text(d["model"], at("model"), max_len=MAX_NAME)
    _text(d["method"], at("method"), choices=("eap", "eap-ig"))
    _text(d["direction"], at("direction"), choices=list(DIRECTIONS))
    _text(d["metric"], at("metric"), choices=list(METRICS))
    _text(d.get("ablation", "corrupted"), at("ablation"), choices=("corrupted", "mean", "zero"))
    for k in ("n_pairs", "n_layers", "n_heads"):
        _int(d[k], at(k), 1, MAX_DIM)
    _int(d.get("n_kv_heads", d["n_heads"]), at("n_kv_heads"), 1, MAX_DIM)
    _int(d.get("steps", 1), at("steps"), 1, 10_000)
    edges = _list(d["edges"], at("edges"), max_len=MAX_EDGES)
    _int(d["top_k"], at("top_k"), 0, max(len(edges), 0))
    for i, e in enumerate(edges):
        w = _at(at("edges"), i)
        if not isinstance(e, dict) or not {"sender", "receiver", "score"} <= set(e) or \
                not set(e) <= {"sender", "receiver", "score", "exact"}:
            _bad(w, "must be an object with sender, receiver, score and (optionally) exact")
        for k in ("sender", "receiver"):
            _text(e[k], _at(w, k), max_len=MAX_NAME)
        try:
            node_info(e["sender"], 1, 1, 1)
            node_info(e["receiver"], 1, 1, 1)
        except ValueError:
            _bad(w, f"names a node that is not input, head:L.H, head:L.H:q|k|v, mlp:L or logits "
                    f"({e['sender'][:30]!r} → {e['receiver'][:30]!r})")
        _num(e["score"], _at(w, "score"), null=True)
        if "exact" in e:
            _num(e["exact"], _at(w, "exact"))
    for i, p in enumerate(_list(d["curve"], at("curve"), max_len=10_000)):
        w = _at(at("curve"), i)
        if not isinstance(p, dict) or "edges" not in p or "faithfulness" not in p:
            _bad(w, "must be an object with edges and faithfulness")
        _int(p["edges"], _at(w, "edges"), 0, len(edges))
        _num(p["faithfulness"], _at(w, "faithfulness"), null=True)
        if "metric" in p:
            _num(p["metric"], _at(w, "metric"), null=True)
    if not any(p["edges"] == d["top_k"] for p in d["curve"]):
        _bad(at("top_k"), "must be one of the curve's edge counts")
    for k in ("clean_metric", "corrupted_metric", "faithfulness_top_k"):
        if k in d:
            _num(d[k], at(k), null=True)
    if "seconds" in d:
        _num(d["seconds"], at("seconds"), lo=0)
    _texts(d.get("warnings", []), at("warnings"))
    for k, v in d.items():
        if k not in ("edges", "curve"):
            _free(v, at(k), 1)
