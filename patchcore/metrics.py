"""Metrics read from the last position's logits."""
from __future__ import annotations

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


def compute_metric(name: str, last_logits: torch.Tensor, answer_id: int, wrong_id: int) -> torch.Tensor:
    """last_logits: (rows, vocab). Returns (rows,) in float32."""
    logits = last_logits.float()
    if name == "logit_diff":
        return logits[:, answer_id] - logits[:, wrong_id]
    if name == "prob":
        return torch.softmax(logits, dim=-1)[:, answer_id]
    if name == "logprob":
        return torch.log_softmax(logits, dim=-1)[:, answer_id]
    raise SweepError(f"Unknown metric '{name}'.")


def top_tokens(tokenizer, last_logits: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
    """The k most likely next tokens, with probabilities, for one row of logits."""
    probs = torch.softmax(last_logits.float(), dim=-1)
    p, idx = probs.topk(k)
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(p, idx)]
