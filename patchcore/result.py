"""A sweep's result: raw and normalised values, a tidy table, JSON in and out."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .prompts import PromptPair

GAP_EPS = 1e-6  # |clean - corrupted| below this: normalisation is meaningless


def normalize(values: np.ndarray, clean: float, corrupted: float) -> np.ndarray:
    """(patched - corrupted) / (clean - corrupted); NaN where the gap is ~0."""
    gap = clean - corrupted
    if not math.isfinite(gap) or abs(gap) < GAP_EPS:
        return np.full_like(values, np.nan, dtype=np.float64)
    return (values.astype(np.float64) - corrupted) / gap


@dataclass
class PatchResult:
    model: str
    sweep: str
    direction: str
    metric: str
    axes: tuple
    values: np.ndarray
    tokens: list
    clean_metric: float
    corrupted_metric: float
    pair: PromptPair
    n_layers: int
    n_heads: int
    seconds: float = 0.0
    forward_rows: int = 0
    batch_size: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    method: str = "exact"      # exact patching, or 'atp' (attribution estimate)
    backend: str = "local"     # local hooks, nnsight, or remote (NDIF)
    clean_top: list = field(default_factory=list)
    corrupted_top: list = field(default_factory=list)
    diff_positions: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    created: str = ""

    @property
    def normalized(self) -> np.ndarray:
        return normalize(self.values, self.clean_metric, self.corrupted_metric)

    @property
    def n_patches(self) -> int:
        return int(self.values.size)

    @property
    def gap_ok(self) -> bool:
        return bool(np.isfinite(self.normalized).any()) or self.values.size == 0

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per cell, axis indices, token text, raw and normalised value."""
        idx = np.indices(self.values.shape).reshape(len(self.axes), -1).T
        df = pd.DataFrame(idx, columns=list(self.axes))
        if "position" in self.axes:
            df.insert(df.columns.get_loc("position") + 1, "token",
                      [self.tokens[p] for p in df["position"]])
        df["value"] = self.values.reshape(-1).astype(float)
        df["normalized"] = self.normalized.reshape(-1)
        return df

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "sweep": self.sweep,
            "direction": self.direction,
            "metric": self.metric,
            "method": self.method,
            "backend": self.backend,
            "tokens": list(self.tokens),
            "clean_metric": self.clean_metric,
            "corrupted_metric": self.corrupted_metric,
            "axes": list(self.axes),
            "values": _to_nested(self.values),
            "normalized": _to_nested(self.normalized),
            "seconds": self.seconds,
            "forward_rows": self.forward_rows,
            "n_patches": self.n_patches,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "pair": self.pair.to_dict(),
            "clean_top": [list(t) for t in self.clean_top],
            "corrupted_top": [list(t) for t in self.corrupted_top],
            "diff_positions": list(self.diff_positions),
            "warnings": list(self.warnings),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict) -> "PatchResult":
        values = np.array(_nan_nested(d["values"]), dtype=float)
        return cls(
            model=d["model"], sweep=d["sweep"], direction=d["direction"], metric=d["metric"],
            axes=tuple(d["axes"]), values=values, tokens=list(d["tokens"]),
            clean_metric=d["clean_metric"], corrupted_metric=d["corrupted_metric"],
            pair=PromptPair(**d["pair"]), n_layers=d["n_layers"], n_heads=d["n_heads"],
            seconds=d.get("seconds", 0.0), forward_rows=d.get("forward_rows", 0),
            batch_size=d.get("batch_size", 0), device=d.get("device", "cpu"),
            dtype=d.get("dtype", "float32"), method=d.get("method", "exact"), backend=d.get("backend", "local"),
            clean_top=[tuple(t) for t in d.get("clean_top", [])],
            corrupted_top=[tuple(t) for t in d.get("corrupted_top", [])],
            diff_positions=list(d.get("diff_positions", [])),
            warnings=list(d.get("warnings", [])), created=d.get("created", ""),
        )


def _to_nested(a: np.ndarray):
    """Nested lists for JSON; NaN/inf become null (JSON has no NaN)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, None).tolist()


def _nan_nested(x):
    if isinstance(x, list):
        return [_nan_nested(v) for v in x]
    return np.nan if x is None else x
