"""Result types (one pair, a dataset, both directions), built one way (new_result), JSON in and out."""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .prompts import PromptPair
from .sites import get_direction
from .stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, per_pair_normalized

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
    n_kv_heads: int = 0        # key/value heads (the kv_head axis of k and v sweeps); 0: n_heads
    seconds: float = 0.0
    forward_rows: int = 0
    batch_size: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    method: str = "exact"      # exact patching, or 'atp' (attribution estimate)
    ablation: str = "corrupted"  # what the patches wrote (ablations.ABLATIONS)
    reference: str = ""        # the reference set of a mean or resample ablation, in words
    path: dict | None = None   # path patching: {"senders": ..., "receivers": [...]}
    noise_floor: float = 0.0   # low precision: metric differences this small are rounding (measured)
    backend: str = "local"     # local hooks, nnsight, or remote (NDIF)
    clean_top: list = field(default_factory=list)
    corrupted_top: list = field(default_factory=list)
    diff_positions: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    created: str = ""
    corrupted_tokens: list = field(default_factory=list)   # the corrupted prompt's tokens

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
            "ablation": self.ablation,
            "reference": self.reference,
            **({"path": dict(self.path)} if self.path else {}),
            "noise_floor": self.noise_floor,
            "backend": self.backend,
            "tokens": list(self.tokens),
            "clean_metric": self.clean_metric,
            "corrupted_metric": self.corrupted_metric,
            "axes": list(self.axes),
            "values": to_nested(self.values),
            "normalized": to_nested(self.normalized),
            "seconds": self.seconds,
            "forward_rows": self.forward_rows,
            "n_patches": self.n_patches,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads or self.n_heads,
            "pair": self.pair.to_dict(),
            "clean_top": [list(t) for t in self.clean_top],
            "corrupted_top": [list(t) for t in self.corrupted_top],
            "diff_positions": list(self.diff_positions),
            "corrupted_tokens": list(self.corrupted_tokens),
            "warnings": list(self.warnings),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict) -> "PatchResult":
        values = np.array(nan_nested(d["values"]), dtype=float)
        return cls(
            model=d["model"], sweep=d["sweep"], direction=d["direction"], metric=d["metric"],
            axes=tuple(d["axes"]), values=values, tokens=list(d["tokens"]),
            clean_metric=d["clean_metric"], corrupted_metric=d["corrupted_metric"],
            pair=PromptPair(**d["pair"]), n_layers=d["n_layers"], n_heads=d["n_heads"],
            n_kv_heads=d.get("n_kv_heads", d["n_heads"]),
            seconds=d.get("seconds", 0.0), forward_rows=d.get("forward_rows", 0),
            batch_size=d.get("batch_size", 0), device=d.get("device", "cpu"),
            dtype=d.get("dtype", "float32"), method=d.get("method", "exact"), backend=d.get("backend", "local"),
            ablation=d.get("ablation", "corrupted"), reference=d.get("reference", ""),
            path=d.get("path"), noise_floor=float(d.get("noise_floor") or 0.0), clean_top=[tuple(t) for t in d.get("clean_top", [])],
            corrupted_top=[tuple(t) for t in d.get("corrupted_top", [])],
            diff_positions=list(d.get("diff_positions", [])),
            corrupted_tokens=list(d.get("corrupted_tokens", [])),
            warnings=list(d.get("warnings", [])), created=d.get("created", ""),
        )


def to_nested(a: np.ndarray):
    """Nested lists for JSON; NaN/inf become null (JSON has no NaN)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, None).tolist()


def nan_nested(x):
    if isinstance(x, list):
        return [nan_nested(v) for v in x]
    return np.nan if x is None else x


@dataclass
class DatasetResult(PatchResult):
    """A PatchResult whose `values` are means over pairs, with intervals and every pair's values.

    `tokens` holds one label per position column: a role (IOI pairs), or the
    token text where every pair has the same token there, else '(varies)'.
    """
    n_pairs: int = 0
    per_pair: np.ndarray | None = None        # (n_pairs, *values.shape) raw metric per pair
    pair_clean: np.ndarray | None = None      # (n_pairs,)
    pair_corrupted: np.ndarray | None = None  # (n_pairs,)
    ci_low: np.ndarray | None = None          # bootstrap interval of `values` (raw)
    ci_high: np.ndarray | None = None
    normalized_low: np.ndarray | None = None  # bootstrap interval of `normalized`
    normalized_high: np.ndarray | None = None
    level: float = DEFAULT_LEVEL
    n_boot: int = DEFAULT_N_BOOT
    boot_seed: int = 0
    aligned_by: str = "position"              # role | position | none
    pairs: list = field(default_factory=list)  # one dict per pair (clean, corrupted, answer, wrong, ...)
    dataset: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    rejected: list = field(default_factory=list)  # [{"line": int, "reason": str}]

    @property
    def pair_normalized(self) -> np.ndarray:
        """Each pair's own normalised score (its own clean and corrupted), (n_pairs, *shape)."""
        return per_pair_normalized(self.per_pair, self.pair_clean, self.pair_corrupted)

    @property
    def effect(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(effect, low, high) on a 0..1 'moved the behaviour' scale.

        Denoising: the normalised score (1 = clean answer restored).
        Noising: 1 - score (1 = clean answer destroyed). 0 = no effect either way.
        """
        d = get_direction(self.direction)
        lo, hi = d.effect(self.normalized_low), d.effect(self.normalized_high)
        return d.effect(self.normalized), np.minimum(lo, hi), np.maximum(lo, hi)

    def cell_values(self, idx: tuple, value: str = "normalized") -> np.ndarray:
        """Every pair's value at one cell (for a strip plot): per-pair normalised or raw."""
        arr = self.pair_normalized if value == "normalized" else self.per_pair
        return arr[(slice(None),) + tuple(int(i) for i in idx)]

    def to_frame(self):
        df = super().to_frame()
        df["ci_low"] = np.asarray(self.ci_low, dtype=float).reshape(-1)
        df["ci_high"] = np.asarray(self.ci_high, dtype=float).reshape(-1)
        df["normalized_low"] = np.asarray(self.normalized_low, dtype=float).reshape(-1)
        df["normalized_high"] = np.asarray(self.normalized_high, dtype=float).reshape(-1)
        df["n_pairs"] = self.n_pairs
        return df

    def to_json(self) -> dict:
        d = super().to_json()
        d.update({
            "kind": "dataset",
            "n_pairs": self.n_pairs,
            "ci_low": to_nested(self.ci_low),
            "ci_high": to_nested(self.ci_high),
            "normalized_low": to_nested(self.normalized_low),
            "normalized_high": to_nested(self.normalized_high),
            "ci_level": self.level,
            "n_boot": self.n_boot,
            "boot_seed": self.boot_seed,
            "aligned_by": self.aligned_by,
            "per_pair": to_nested(self.per_pair),
            "pair_clean": to_nested(self.pair_clean),
            "pair_corrupted": to_nested(self.pair_corrupted),
            "pairs": list(self.pairs),
            "dataset": dict(self.dataset),
            "notes": list(self.notes),
            "rejected": list(self.rejected),
        })
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DatasetResult":
        base = PatchResult.from_json(d)
        arr = lambda k: np.array(nan_nested(d[k]), dtype=float)  # noqa: E731
        kw = {f: getattr(base, f) for f in PatchResult.__dataclass_fields__}
        return cls(**kw, n_pairs=int(d["n_pairs"]), per_pair=arr("per_pair"),
                   pair_clean=arr("pair_clean"), pair_corrupted=arr("pair_corrupted"),
                   ci_low=arr("ci_low"), ci_high=arr("ci_high"),
                   normalized_low=arr("normalized_low"), normalized_high=arr("normalized_high"),
                   level=float(d.get("ci_level", DEFAULT_LEVEL)), n_boot=int(d.get("n_boot", DEFAULT_N_BOOT)),
                   boot_seed=int(d.get("boot_seed", 0)), aligned_by=d.get("aligned_by", "position"),
                   pairs=list(d.get("pairs", [])), dataset=dict(d.get("dataset", {})),
                   notes=list(d.get("notes", [])), rejected=list(d.get("rejected", [])))


@dataclass
class BothResult:
    """Denoising and noising over the same pairs, for the quadrant view."""
    denoise: DatasetResult
    noise: DatasetResult

    def to_json(self) -> dict:
        return {"kind": "both", "denoise": self.denoise.to_json(), "noise": self.noise.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "BothResult":
        return cls(DatasetResult.from_json(d["denoise"]), DatasetResult.from_json(d["noise"]))

    @property
    def seconds(self) -> float:
        return self.denoise.seconds + self.noise.seconds

    def of(self, direction: str) -> DatasetResult:
        """The half of this run in one direction."""
        return getattr(self, get_direction(direction).name)


def result_from_json(d: dict):
    """PatchResult, DatasetResult, BothResult, PatchSetResult or CircuitResult from its JSON."""
    if d.get("kind") == "circuit":
        from .circuit_result import CircuitResult
        return CircuitResult.from_json(d)
    if d.get("kind") == "both":
        return BothResult.from_json(d)
    if d.get("kind") == "patch":
        return PatchSetResult.from_json(d)
    if "n_pairs" in d and "per_pair" in d:
        return DatasetResult.from_json(d)
    return PatchResult.from_json(d)


def stamp(model) -> dict:
    """Where and when a result was made: device, dtype, creation time."""
    return dict(device=str(model.device), dtype=str(model.dtype).replace("torch.", ""),
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


@dataclass
class PatchSetResult:
    """Sites patched together (interventions.run_patch): one number per pair, and their mean."""
    model: str
    sites: list                 # as given, in site notation
    complement: bool            # True: every site of those kinds except the listed ones
    n_sites: int                # sites actually patched (the complement's size when complement)
    direction: str
    ablation: str
    metric: str
    value: float                # raw metric, mean over pairs
    clean_metric: float
    corrupted_metric: float
    n_pairs: int
    per_pair: np.ndarray
    pair_clean: np.ndarray
    pair_corrupted: np.ndarray
    ci_low: float
    ci_high: float
    normalized_low: float
    normalized_high: float
    level: float = DEFAULT_LEVEL
    reference: str = ""
    receivers: list | None = None               # path patching: sites are the senders
    draws: list = field(default_factory=list)   # resample: per pair, the pairs drawn from
    pairs: list = field(default_factory=list)
    seconds: float = 0.0
    forward_rows: int = 0
    backend: str = "local"
    device: str = "cpu"
    dtype: str = "float32"
    warnings: list = field(default_factory=list)
    created: str = ""
    kind = "patch"

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self.per_pair, dtype=float)

    @property
    def normalized(self) -> float:
        return float(normalize(np.array([self.value]), self.clean_metric, self.corrupted_metric)[0])

    @property
    def pair_normalized(self) -> np.ndarray:
        return per_pair_normalized(self.per_pair, self.pair_clean, self.pair_corrupted)

    def to_json(self) -> dict:
        num = lambda x: None if x is None or not math.isfinite(x) else float(x)  # noqa: E731
        d = {"kind": "patch", "model": self.model, "sites": list(self.sites),
             **({"senders": list(self.sites), "receivers": list(self.receivers)}
                if self.receivers is not None else {}),
             "complement": self.complement, "n_sites": self.n_sites, "direction": self.direction,
             "ablation": self.ablation, "metric": self.metric, "value": num(self.value),
             "normalized": num(self.normalized), "clean_metric": num(self.clean_metric),
             "corrupted_metric": num(self.corrupted_metric), "n_pairs": self.n_pairs,
             "reference": self.reference, "seconds": self.seconds, "forward_rows": self.forward_rows,
             "backend": self.backend, "device": self.device, "dtype": self.dtype,
             "warnings": list(self.warnings), "created": self.created}
        if self.n_pairs > 1:
            d.update({"per_pair": to_nested(self.per_pair),
                      "per_pair_normalized": to_nested(self.pair_normalized),
                      "pair_clean": to_nested(self.pair_clean),
                      "pair_corrupted": to_nested(self.pair_corrupted),
                      "ci_low": num(self.ci_low), "ci_high": num(self.ci_high),
                      "normalized_low": num(self.normalized_low),
                      "normalized_high": num(self.normalized_high), "ci_level": self.level,
                      "pairs": list(self.pairs)})
            if any(self.draws):
                d["draws"] = [list(x) for x in self.draws]
        else:
            d["pair"] = self.pairs[0] if self.pairs else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "PatchSetResult":
        arr = lambda k, v: np.array(nan_nested(d.get(k, [v])), dtype=float)  # noqa: E731
        nan = lambda k: np.nan if d.get(k) is None else float(d[k])  # noqa: E731
        value = nan("value")
        return cls(model=d["model"], sites=list(d["sites"]), complement=bool(d.get("complement")),
                   n_sites=int(d.get("n_sites", len(d["sites"]))), direction=d["direction"],
                   ablation=d.get("ablation", "corrupted"), metric=d["metric"], value=value,
                   clean_metric=nan("clean_metric"), corrupted_metric=nan("corrupted_metric"),
                   n_pairs=int(d.get("n_pairs", 1)), per_pair=arr("per_pair", value),
                   pair_clean=arr("pair_clean", d.get("clean_metric")),
                   pair_corrupted=arr("pair_corrupted", d.get("corrupted_metric")),
                   ci_low=nan("ci_low") if "ci_low" in d else value,
                   ci_high=nan("ci_high") if "ci_high" in d else value,
                   normalized_low=nan("normalized_low"), normalized_high=nan("normalized_high"),
                   level=float(d.get("ci_level", DEFAULT_LEVEL)), reference=d.get("reference", ""),
                   draws=[list(x) for x in d.get("draws", [])], receivers=d.get("receivers"),
                   pairs=list(d.get("pairs") or ([d["pair"]] if d.get("pair") else [])),
                   seconds=float(d.get("seconds", 0.0)), forward_rows=int(d.get("forward_rows", 0)),
                   backend=d.get("backend", "local"), device=d.get("device", "cpu"),
                   dtype=d.get("dtype", "float32"), warnings=list(d.get("warnings", [])),
                   created=d.get("created", ""))


def new_result(model, spec, direction: str, metric: str, values, clean: float, corrupted: float, *,
               prepared=None, cls=PatchResult, **fields):
    """The one way results are made: the model's and sweep's facts, the pair's tokens (when
    `prepared` is given), `fields` on top; then the warnings every result carries."""
    c = model.components
    base = dict(model=model.label, sweep=spec.name, direction=direction, metric=metric,
                axes=spec.axes, values=values, clean_metric=clean, corrupted_metric=corrupted,
                n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, **stamp(model))
    if prepared is not None:
        base.update(tokens=prepared.clean_tokens, pair=prepared.pair,
                    diff_positions=prepared.diff_positions, corrupted_tokens=prepared.corrupted_tokens)
    base.update(fields)
    result = cls(**base)
    result.warnings.extend(result_warnings(result))
    return result


def result_warnings(r: PatchResult) -> list[str]:
    w = []
    if not np.isfinite(r.values).all() and not getattr(r, "path", None):
        w.append("Some patched values are NaN or infinite (numerical overflow); those cells are left blank.")
    if not np.isfinite(normalize(np.zeros(1), r.clean_metric, r.corrupted_metric)).all():
        w.append(f"The clean and corrupted runs give almost the same {r.metric} "
                 f"({r.clean_metric:.4g} vs {r.corrupted_metric:.4g}), so the normalised score is "
                 f"undefined. Showing raw values; pick a pair where the answer changes.")
    elif abs(r.clean_metric - r.corrupted_metric) < 0.05 * max(1.0, abs(r.clean_metric)):
        w.append("The clean and corrupted runs are very close, so normalised scores are unstable. "
                 "Read the raw values, or pick a pair where the answer changes more.")
    return w
