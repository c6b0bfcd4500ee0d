"""Compare two stored runs cell by cell (the History page's difference heatmap)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .results import BothResult
from .errors import PatchError
from .results import PatchResult


class CompareError(PatchError):
    """Two runs that cannot be compared cell by cell."""


@dataclass
class Comparison:
    a: PatchResult
    b: PatchResult
    value: str                     # normalized | value
    frame: pd.DataFrame            # axes, label, a, b, diff (= a - b)
    labels: list                   # position labels used on the x axis
    notes: list = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        d = self.frame["diff"].to_numpy(dtype=float)
        d = d[np.isfinite(d)]
        return float(np.abs(d).max()) if d.size else float("nan")


def pick(result, direction: str | None = None) -> PatchResult:
    """The single result to compare: a BothResult gives its denoise or noise half."""
    if isinstance(result, BothResult):
        return result.of(direction or "denoise")
    return result


def _role_aligned(r) -> bool:
    return getattr(r, "aligned_by", "position") == "role"


def by_role(r: PatchResult, roles: list[str]) -> PatchResult:
    """A single IOI pair's result with its positions averaged role by role, as IOI datasets are,
    in the order `roles` (a role the pair lacks is NaN). CompareError if its names are not found."""
    from .dataset_run import average_by_role, role_matrix
    from .ioi import roles_from_tokens
    mine = roles_from_tokens(list(r.tokens), r.pair.answer, r.pair.wrong)
    if mine is None:
        raise CompareError(
            f"The single pair ({r.pair.clean!r}) cannot be lined up with an IOI dataset by role: its "
            f"answer {r.pair.answer!r} should appear once and its wrong answer {r.pair.wrong!r} twice "
            f"in the clean prompt, as in IOI prompts. Compare it with a run of the same prompt length.")
    values = average_by_role(r.values, tuple(r.axes), role_matrix(mine, list(roles)))
    missing = [i for i, role in enumerate(roles) if role not in mine]
    if missing:
        values = np.moveaxis(values, list(r.axes).index("position"), -1).copy()
        values[..., missing] = np.nan
        values = np.moveaxis(values, -1, list(r.axes).index("position"))
    diff = sorted({roles.index(mine[p]) for p in r.diff_positions if mine[p] in roles})
    return replace(r, values=values, tokens=list(roles), diff_positions=diff, corrupted_tokens=[])


def _line_up(ra, rb, notes: list) -> tuple:
    """A single IOI pair beside an IOI dataset (positions by role): the pair averaged by role."""
    if "position" not in ra.axes or _role_aligned(ra) == _role_aligned(rb):
        return ra, rb
    a_is_dataset = _role_aligned(ra)
    single, dataset = (rb, ra) if a_is_dataset else (ra, rb)
    if getattr(single, "n_pairs", 1) > 1:   # two datasets: the shape check says what is wrong
        return ra, rb
    lined = by_role(single, list(dataset.tokens))
    notes.append("Positions are matched by role (S1, IO, S2, END, ...): the single pair's positions were "
                 "averaged role by role, as the dataset's are.")
    return (ra, lined) if a_is_dataset else (lined, rb)


def compare(a, b, value: str = "normalized", direction: str | None = None) -> Comparison:
    """a - b per cell. Both runs need the same sweep and the same table shape; a single IOI pair
    and an IOI dataset (positions by role) are lined up by role."""
    ra, rb = pick(a, direction), pick(b, direction)
    if value not in ("normalized", "value"):
        raise CompareError("Compare 'normalized' scores or raw 'value's.")
    if ra.sweep != rb.sweep or tuple(ra.axes) != tuple(rb.axes):
        raise CompareError(f"These runs used different sweeps ({ra.sweep} vs {rb.sweep}), so their cells "
                           f"do not correspond. Pick two runs of the same sweep.")
    notes = []
    ra, rb = _line_up(ra, rb, notes)
    if ra.values.shape != rb.values.shape:
        raise CompareError(f"These runs have tables of different shapes ({_shape(ra)} vs {_shape(rb)}): "
                           f"different models or prompt lengths. Pick runs with the same model and "
                           f"token length (or IOI datasets, which are matched by role).")
    if ra.model != rb.model:
        notes.append(f"Different models: {ra.model} vs {rb.model}.")
    if ra.metric != rb.metric:
        notes.append(f"Different metrics ({ra.metric} vs {rb.metric}): compare normalised scores only.")
        if value == "value":
            raise CompareError("Raw values of different metrics cannot be subtracted; compare normalised scores.")
    if ra.direction != rb.direction:
        notes.append(f"Different directions ({ra.direction} vs {rb.direction}): a denoising score and a "
                     f"noising score mean different things.")
    labels = list(ra.tokens)
    if "position" in ra.axes and list(ra.tokens) != list(rb.tokens):
        notes.append("The runs' token labels differ at some positions; the axis shows run A's labels.")
        labels = [x if x == y else f"{x}/{y}" for x, y in zip(ra.tokens, rb.tokens)]
    va = ra.normalized if value == "normalized" else ra.values
    vb = rb.normalized if value == "normalized" else rb.values
    idx = np.indices(va.shape).reshape(len(ra.axes), -1).T
    df = pd.DataFrame(idx, columns=list(ra.axes))
    if "position" in ra.axes:
        df.insert(df.columns.get_loc("position") + 1, "token", [labels[p] for p in df["position"]])
    df["a"] = va.reshape(-1).astype(float)
    df["b"] = vb.reshape(-1).astype(float)
    df["diff"] = df["a"] - df["b"]
    return Comparison(ra, rb, value, df, labels, notes)


def _shape(r: PatchResult) -> str:
    return " × ".join(f"{n} {a}s" for a, n in zip(r.axes, r.values.shape))
