"""The IOI generator: N prompt pairs from the BABA/ABBA templates of patchcore/data/ioi.json
(Wang et al. 2022).

Names, places and objects are kept only when they are one token *with the leading space
they have in the prompt* for the given tokenizer. Every token position gets a role label
(``start``, ``S1``, ``and``, ``IO``, ``middle``, ``S2``, ``after S2``, ``END``), so pairs
made from different templates (different token lengths) are averaged role by role, not
index by index.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from .datasets import DatasetError, DatasetPair, PairDataset
from .prompts import MAX_PROMPT_TOKENS, PromptPair, check_pair, encode

DATA_FILE = Path(__file__).with_name("data") / "ioi.json"
CORRUPTIONS = {
    "swap": "Name swap: the second mention of the subject (S2) becomes the indirect object's name, "
            "so the right answer flips to the other name.",
    "abc": "ABC: the three name slots get three other names, unrelated to the answer, so the "
           "prompt no longer says who receives anything (the IOI paper's baseline).",
}
TEMPLATE_SETS = ("mixed", "baba", "abba")
ROLE_ORDER = ["start", "S1", "and", "IO", "middle", "S2", "after S2", "END"]
ROLE_HELP = {
    "start": "text before the first name",
    "S1": "first mention of the subject (the name that gives)",
    "and": "the text between the two names at the start",
    "IO": "the indirect object (the name that receives: the right answer)",
    "middle": "text between the second name and S2",
    "S2": "second mention of the subject",
    "after S2": "text between S2 and the last token",
    "END": "the last token, where the model predicts the name",
}
MAX_IOI_PAIRS = 2000
MIN_WORDS = {"names": 5, "places": 1, "objects": 1}


# --------------------------------------------------------------------------- material
@lru_cache(maxsize=1)
def load_ioi_material() -> dict:
    with open(DATA_FILE, encoding="utf-8") as f:
        return json.load(f)


def is_single_token(tokenizer, text: str) -> bool:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def single_token_words(tokenizer, words, leading_space: bool = True) -> tuple[list[str], list[str]]:
    """Split words into (kept, dropped): kept are one token as they appear in a prompt."""
    kept, dropped, seen = [], [], set()
    for w in words:
        if w in seen:
            continue
        seen.add(w)
        (kept if is_single_token(tokenizer, (" " + w) if leading_space else w) else dropped).append(w)
    return kept, dropped


def ioi_vocabulary(tokenizer, material: dict | None = None) -> dict:
    """Names, places and objects usable with this tokenizer, and what was dropped."""
    m = material or load_ioi_material()
    out = {}
    for key in ("names", "places", "objects"):
        kept, dropped = single_token_words(tokenizer, m[key])
        out[key], out[f"dropped_{key}"] = kept, dropped
    return out


# --------------------------------------------------------------------------- IOI
_SLOT = re.compile(r"\[(A|B|C|PLACE|OBJECT)\]")


def _fill(template: str, fills: dict) -> tuple[str, list[tuple[str, int, int]]]:
    """Fill a template up to (not including) its final ' [A]'.

    Returns the prompt and the name slots as (role, start, end) character spans,
    roles S1, IO, S2 in order of appearance.
    """
    body = template[: template.rindex(" [A]")] if template.endswith(" [A]") else template
    out, spans, pos, b_seen = [], [], 0, 0
    for m in _SLOT.finditer(body):
        out.append(body[pos:m.start()])
        key = m.group(1)
        text = fills[key]
        start = sum(len(s) for s in out)
        out.append(text)
        if key == "A":
            spans.append(("IO", start, start + len(text)))
        elif key == "B":
            b_seen += 1
            spans.append(("S1" if b_seen == 1 else "S2", start, start + len(text)))
        pos = m.end()
    out.append(body[pos:])
    return "".join(out), spans


def _token_spans(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """Character span of each token, from the tokenizer's offsets when it has them."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [tuple(map(int, o)) for o in enc["offset_mapping"]]
    except Exception:  # noqa: BLE001 - slow tokenizers have no offsets
        pass
    return None


def _name_position(tokenizer, text: str, ids: list[int], spans, start: int, end: int) -> int | None:
    """Index of the single token that holds the name text[start:end] (and its leading space)."""
    name = text[start:end]
    if spans is not None:
        hits = [i for i, (a, b) in enumerate(spans) if b > a and a < end and b > start]
        if len(hits) != 1 or spans[hits[0]][0] > start or spans[hits[0]][1] < end:
            return None
        i = hits[0]
    else:  # no offsets: the number of tokens before the name is its index
        i = len(encode(tokenizer, text[:start].rstrip(" ")))
        if i >= len(ids):
            return None
    return i if tokenizer.decode([ids[i]]).strip() == name.strip() else None


def ioi_roles(tokenizer, text: str, ids: list[int], name_spans) -> list[str] | None:
    """Role label of every token of an IOI prompt, or None if the names do not line up."""
    spans = _token_spans(tokenizer, text, ids)
    where = {}
    for role, a, b in name_spans:
        i = _name_position(tokenizer, text, ids, spans, a, b)
        if i is None:
            return None
        where[role] = i
    if not all(r in where for r in ("S1", "IO", "S2")):
        return None
    return _roles_at(len(ids), where)


def roles_from_tokens(tokens: list[str], io: str, s: str) -> list[str] | None:
    """Role labels of one IOI-like pair's positions from its clean tokens alone (a stored single
    result): IO is the answer's name, found once; S the wrong answer's name, found twice (S1, S2).
    None when the names are not found like that."""
    io, s = io.strip(), s.strip()
    io_at = [i for i, t in enumerate(tokens) if t.strip() == io]
    s_at = [i for i, t in enumerate(tokens) if t.strip() == s]
    if not io or not s or io == s or len(io_at) != 1 or len(s_at) != 2:
        return None
    return _roles_at(len(tokens), {"S1": s_at[0], "IO": io_at[0], "S2": s_at[1]})


def _roles_at(n: int, where: dict) -> list[str] | None:
    """Role label of each of n positions given the S1, IO and S2 positions (None: not in IOI order)."""
    first, second = sorted((where["S1"], where["IO"]))
    s2, end = where["S2"], n - 1
    if not (first < second < s2 < end):
        return None
    roles = []
    for i in range(n):
        if i == end:
            roles.append("END")
        elif i in (where["S1"], where["IO"], s2):
            roles.append(next(r for r in ("S1", "IO", "S2") if where[r] == i))
        elif i < first:
            roles.append("start")
        elif i < second:
            roles.append("and")
        elif i < s2:
            roles.append("middle")
        else:
            roles.append("after S2")
    return roles


def _templates(material: dict, which: str) -> list[tuple[str, str]]:
    if which not in TEMPLATE_SETS:
        raise DatasetError(f"Unknown template set '{which}'. Choose one of: {', '.join(TEMPLATE_SETS)}.")
    out = []
    if which in ("mixed", "baba"):
        out += [("BABA", t) for t in material["templates_baba"]]
    if which in ("mixed", "abba"):
        out += [("ABBA", t) for t in material["templates_abba"]]
    return out


def generate_ioi(tokenizer, n: int, seed: int = 0, corruption: str = "swap",
                 templates: str = "mixed", max_tokens: int = MAX_PROMPT_TOKENS,
                 material: dict | None = None) -> PairDataset:
    """N IOI pairs, the same for the same seed and tokenizer.

    Clean: '... [S1] and [IO] ... [S2] gave a [OBJECT] to' (answer ' IO', wrong ' S').
    Corrupted: 'swap' puts the IO name at S2 (the answer flips); 'abc' puts three
    other names in the three name slots. With 'mixed' templates, pairs alternate
    between BABA and ABBA orders.
    """
    if corruption not in CORRUPTIONS:
        raise DatasetError(f"Unknown corruption '{corruption}'. Choose one of: {', '.join(CORRUPTIONS)}.",
                           field="corruption")
    if not isinstance(n, int) or n < 1:
        raise DatasetError("The number of pairs must be at least 1.", field="n")
    if n > MAX_IOI_PAIRS:
        raise DatasetError(f"At most {MAX_IOI_PAIRS} pairs per dataset; asked for {n}.", field="n")
    m = material or load_ioi_material()
    vocab = ioi_vocabulary(tokenizer, m)
    for key, least in MIN_WORDS.items():
        need = least if not (key == "names" and corruption == "abc") else least + 3
        if len(vocab[key]) < need:
            raise DatasetError(
                f"Only {len(vocab[key])} of the IOI {key} are a single token for this model's tokenizer "
                f"(need at least {need}); IOI pairs cannot be built for it. Upload your own pairs instead.")
    names, places, objects = vocab["names"], vocab["places"], vocab["objects"]
    tmpl = _templates(m, templates)
    by_kind = {k: [t for kk, t in tmpl if kk == k] for k in ("BABA", "ABBA")}
    kinds = [k for k in ("BABA", "ABBA") if by_kind[k]]
    rng = random.Random(seed)
    items: list[DatasetPair] = []
    failures = Counter()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise DatasetError(
                f"Could only build {len(items)} of {n} IOI pairs for this tokenizer "
                f"(problems: {dict(failures)}). Upload your own pairs instead.")
        kind = kinds[len(items) % len(kinds)]
        template = rng.choice(by_kind[kind])
        io_name, s_name = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        fills = {"A": io_name, "B": s_name, "PLACE": place, "OBJECT": obj}
        clean, spans = _fill(template, fills)
        if corruption == "swap":
            s2 = next(s for s in spans if s[0] == "S2")
            corrupted = clean[:s2[1]] + io_name + clean[s2[2]:]
            others = None
        else:
            others = rng.sample([x for x in names if x not in (io_name, s_name)], 3)
            corrupted = clean
            for (role, a, b), new in sorted(zip(spans, others), key=lambda t: -t[0][1]):
                corrupted = corrupted[:a] + new + corrupted[b:]
        pair = PromptPair(clean, corrupted, " " + io_name, " " + s_name)
        prepared, issues = check_pair(tokenizer, pair, max_tokens)
        if issues:
            failures[issues[0].message.split(".")[0][:60]] += 1
            continue
        roles = ioi_roles(tokenizer, clean, prepared.clean_ids, spans)
        if roles is None:
            failures["names do not line up with tokens"] += 1
            continue
        meta = {"template": template, "order": kind, "IO": io_name, "S": s_name,
                "place": place, "object": obj}
        if others:
            meta["corrupted_names"] = others
        items.append(DatasetPair(pair, roles=roles, meta=meta, n_tokens=prepared.n_tokens))
    notes = []
    dropped = [w for k in ("names", "places", "objects") for w in vocab[f"dropped_{k}"]]
    if dropped:
        notes.append(f"Left out {len(dropped)} words that are not a single token for this model: "
                     + ", ".join(dropped[:12]) + (" …" if len(dropped) > 12 else "") + ".")
    lengths = sorted({it.n_tokens for it in items})
    if len(lengths) > 1:
        notes.append(f"Prompts have {lengths[0]}–{lengths[-1]} tokens; positions are matched by role "
                     f"({', '.join(ROLE_ORDER)}), and a role that spans several tokens is averaged.")
    settings = {"source": "ioi", "n": n, "seed": seed, "corruption": corruption, "templates": templates}
    return PairDataset(items, "ioi", settings, [], notes)


def role_order(roles_per_pair) -> list[str]:
    """Roles present in every pair, ordered by where they sit on average (ties: ROLE_ORDER)."""
    sets = [set(r) for r in roles_per_pair]
    common = set.intersection(*sets) if sets else set()
    mean_idx = {}
    for role in common:
        idx = []
        for roles in roles_per_pair:
            seq = list(dict.fromkeys(roles))  # roles in order of first appearance
            idx.append(seq.index(role))
        mean_idx[role] = sum(idx) / len(idx)
    rank = {r: i for i, r in enumerate(ROLE_ORDER)}
    return sorted(common, key=lambda r: (mean_idx[r], rank.get(r, len(rank)), r))

