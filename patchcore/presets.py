"""Prompt-pair presets and the IOI builder (pure Python; the dashboard's Prompts page uses them).

The IOI material (names, templates, places, objects) is patchcore/data/ioi.json,
read and filled by patchcore.ioi (which builds whole IOI datasets); the
builder here makes one pair from the user's own choices.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .ioi import CORRUPTIONS, _fill, load_ioi_material, single_token_words
from .prompts import DEFAULT_PAIR, PromptPair


@dataclass(frozen=True)
class Preset:
    key: str
    title: str
    description: str
    pair: PromptPair


PRESETS: dict[str, Preset] = {p.key: p for p in [
    Preset("ioi", "Who gets the milk? (IOI, the seed's pair)",
           "Indirect object identification: the model must name the person who did not give the "
           "milk. The corrupted prompt swaps the giver, so the right name flips.",
           DEFAULT_PAIR),
    Preset("factual", "Where is the landmark? (factual recall)",
           "The model recalls a fact about a landmark. The corrupted prompt names another "
           "landmark, so the city changes.",
           PromptPair("The Eiffel Tower is located in the city of",
                      "The Colosseum is located in the city of", " Paris", " Rome")),
    Preset("capital", "Country → capital",
           "The model names a country's capital. The corrupted prompt names another country.",
           PromptPair("The capital of France is the city of", "The capital of Italy is the city of",
                      " Paris", " Rome")),
    Preset("pronoun", "Gendered pronoun",
           "The model picks ' he' or ' she' from a name earlier in the sentence (Mathwin & Corlouer "
           "2023). The corrupted prompt uses a name of the other gender.",
           PromptPair("So John is a really great friend, isn't",
                      "So Mary is a really great friend, isn't", " he", " she")),
]}



def ioi_templates() -> list[str]:
    """Every IOI template (BABA then ABBA order); each ends with ' [A]', the answer."""
    m = load_ioi_material()
    return list(m["templates_baba"]) + list(m["templates_abba"])


def single_token_names(tokenizer, names=None) -> list[str]:
    """Names that are one token with a leading space (as they appear mid-sentence)."""
    return single_token_words(tokenizer, load_ioi_material()["names"] if names is None else names)[0]


def abc_names(io: str, subject: str, pool: list[str], seed: str = "") -> list[str]:
    """Three distinct names from `pool`, none equal to io or subject; the same for the same inputs."""
    choices = [n for n in dict.fromkeys(pool) if n not in (io, subject)]
    if len(choices) < 3:
        raise ValueError("The ABC corruption needs at least three other single-token names.")
    return random.Random(f"{io}|{subject}|{seed}").sample(choices, 3)


def ioi_pair(template: str, io: str, subject: str, place: str = "store", obj: str = "drink",
             corruption: str = "swap", pool: list[str] | None = None) -> PromptPair:
    """One clean/corrupted IOI pair, as patchcore.ioi.generate_ioi builds them.

    io = [A], the answer (indirect object); subject = [B], the giver (the wrong answer).
    'swap' puts the io name at the second mention of the subject (the answer flips);
    'abc' puts three other names from `pool` in the three name slots.
    """
    if io == subject:
        raise ValueError("The two names must be different.")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {corruption!r}; choose one of {', '.join(CORRUPTIONS)}.")
    clean, spans = _fill(template, {"A": io, "B": subject, "PLACE": place, "OBJECT": obj})
    if corruption == "swap":
        news = [io if role == "S2" else clean[a:b] for role, a, b in spans]
    else:
        pool = load_ioi_material()["names"] if pool is None else pool
        news = abc_names(io, subject, pool, seed=template)[: len(spans)]
    corrupted = clean
    for (_, a, b), new in sorted(zip(spans, news), key=lambda t: -t[0][1]):  # right to left
        corrupted = corrupted[:a] + new + corrupted[b:]
    return PromptPair(clean, corrupted, " " + io, " " + subject)
