"""Advice on a prompt pair from the model's own predictions: runs that would measure nothing.

A pair can pass every check of prompts.check_pair and still make a meaningless experiment:
an answer typed without its leading space ('Paris' where the model says ' Paris'), or a
clean prompt whose answer the model does not prefer. These are warnings (the run may still
be what the user wants), each with the fix where there is one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompts import PreparedPair, PromptPair

FAR_MORE_LIKELY = 5.0   # a leading-space variant this many times likelier is what the model means


@dataclass(frozen=True)
class Advice:
    field: str                       # answer | wrong | clean
    message: str
    fix: PromptPair | None = None    # the pair with the fix applied, when there is one


def _single(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _pct(p: float) -> str:
    return f"{p:.0%}" if p >= 0.01 else f"{p:.2g}"


def spacing_advice(tokenizer, pair: PromptPair, probs: torch.Tensor | None = None) -> list[Advice]:
    """Answers typed without the leading space their single-token variant has. With the clean
    prompt's next-token probabilities, only where the spaced variant is far more likely."""
    out = []
    for name in ("answer", "wrong"):
        text = getattr(pair, name)
        if not text or text.startswith(" "):
            continue
        plain, spaced = _single(tokenizer, text), _single(tokenizer, " " + text)
        if plain is None or spaced is None:
            continue
        fix = PromptPair(**{**pair.to_dict(), name: " " + text})
        label = "answer" if name == "answer" else "wrong answer"
        if probs is None:
            out.append(Advice(name, f"The {label} {text!r} has no leading space; after a word the "
                                    f"next token usually starts with one ({' ' + text!r}).", fix))
            continue
        p_plain, p_spaced = float(probs[plain]), float(probs[spaced])
        if p_spaced > FAR_MORE_LIKELY * p_plain:
            out.append(Advice(name, f"After the clean prompt the model gives {' ' + text!r} "
                                    f"{_pct(p_spaced)} but {text!r} only {_pct(p_plain)}: the {label} "
                                    f"probably needs its leading space. Use {' ' + text!r}.", fix))
    return out


def pair_advice(model, prepared: PreparedPair) -> list[Advice]:
    """Warnings from one forward of the clean prompt (the caller need not hold the model)."""
    with model.locked(), torch.inference_mode():
        logits = model.hf(input_ids=torch.tensor([prepared.clean_ids], device=model.device),
                          use_cache=False).logits[0, -1].float().cpu()
    probs = torch.softmax(logits, -1)
    out = spacing_advice(model.tokenizer, prepared.pair, probs)
    diff = float(logits[prepared.answer_id] - logits[prepared.wrong_id])
    if diff <= 0:
        p = prepared.pair
        out.append(Advice("clean", f"With the clean prompt the model prefers {p.wrong!r} to "
                                   f"{p.answer!r} (logit difference {diff:+.2f}), so there is no "
                                   f"clean behaviour to restore. Check the answer, or change the "
                                   f"prompt until the model gets it right."))
    return out
