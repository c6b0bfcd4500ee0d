"""Metrics read from the last position's logits."""
from __future__ import annotations

import numpy as np
import torch

from .errors import SweepError

METRICS = {
    "logit_diff": "Logit difference: logit(answer) − logit(wrong) at the last position. "
                  "Positive means the model prefers the answer.",
    "prob": "Probability the model gives the answer token as the next token (0 to 1).",
    "logprob": "Log-probability of the answer token as the next token (≤ 0; closer to 0 is more confident).",
}


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise SweepError(f"Unknown metric '{name}'. Choose one of: {', '.join(METRICS)}.",
                         field="metric")
    return name


def needs_lse(name: str) -> bool:
    """Whether a metric reads the logsumexp of all logits (probabilities do; a logit
    difference does not)."""
    return check_metric(name) != "logit_diff"


def from_readout(name: str, r):
    """A metric from readout rows (n, 3): answer logit, wrong logit, logsumexp of all logits
    (backends.base.readout). Works on tensors (differentiable) and numpy arrays alike."""
    answer, wrong, lse = r[:, 0], r[:, 1], r[:, 2]
    if name == "logit_diff":
        return answer - wrong
    if name == "prob":
        return (answer - lse).exp() if isinstance(r, torch.Tensor) else np.exp(answer - lse)
    if name == "logprob":
        return answer - lse
    raise SweepError(f"Unknown metric '{name}'.")


def readout(last_logits: torch.Tensor, answer, wrong) -> torch.Tensor:
    """(n, V) logits -> (n, 3) float32: answer logit, wrong logit, logsumexp, with one answer and
    wrong token for all rows or one per row. Everything a metric needs (from_readout)."""
    lf = last_logits.float()
    n = lf.shape[0]
    rows = torch.arange(n, device=lf.device)
    a = torch.as_tensor(np.broadcast_to(answer, (n,)).copy(), device=lf.device)
    w = torch.as_tensor(np.broadcast_to(wrong, (n,)).copy(), device=lf.device)
    return torch.stack([lf[rows, a], lf[rows, w], torch.logsumexp(lf, dim=-1)], dim=1)


def compute_metric(name: str, last_logits: torch.Tensor, answer_id, wrong_id) -> torch.Tensor:
    """last_logits: (rows, vocab). Returns (rows,) in float32 (differentiable)."""
    return from_readout(name, readout(last_logits, answer_id, wrong_id))


def top_tokens(tokenizer, last_logits: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
    """The k most likely next tokens, with probabilities, for one row of logits."""
    probs = torch.softmax(last_logits.float(), dim=-1)
    p, idx = probs.topk(k)
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(p, idx)]
