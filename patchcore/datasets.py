"""Datasets of prompt pairs: the IOI generator and CSV/JSONL uploads.

One pair is an anecdote; a dataset is many pairs run through the same sweep.

- ``generate_ioi`` builds N pairs from the BABA/ABBA templates of
  ``patchcore/data/ioi.json`` (Wang et al. 2022). Names, places and objects are
  kept only when they are one token *with the leading space they have in the
  prompt* for the given tokenizer. Every token position gets a role label
  (``start``, ``S1``, ``and``, ``IO``, ``middle``, ``S2``, ``after S2``,
  ``END``), so pairs made from different templates (different token lengths)
  are averaged role by role, not index by index.
- ``parse_upload`` reads CSV or JSONL with the columns clean, corrupted,
  answer, wrong. Every row is validated; rejected rows keep their line number
  and the reason, and the good rows still run.
- Uploaded pairs carry no roles. Per-position sweeps therefore **require equal
  token lengths**: pairs are grouped by token length (``length_groups``) and
  one group is run (by default the largest). Sweeps without a position axis
  (``layer``, ``head``) run every pair whatever its length.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import PatchError
from .prompts import MAX_PROMPT_TOKENS, PromptPair, check_pair, encode

DATA_FILE = Path(__file__).with_name("data") / "ioi.json"

CORRUPTIONS = {
    "swap": "Name swap: the second mention of the subject (S2) becomes the indirect object's name, "
            "so the right answer flips to the other name.",
    "abc": "ABC: the three name slots get three other names, unrelated to the answer, so the "
           "prompt no longer says who receives anything (the IOI paper's baseline).",
}
TEMPLATE_SETS = ("mixed", "baba", "abba")

# Role of every token position in an IOI prompt, in their usual order (BABA).
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

MAX_UPLOAD_BYTES = 5 * 2**20   # 5 MiB
MAX_UPLOAD_PAIRS = 2000
MAX_IOI_PAIRS = 2000
MIN_WORDS = {"names": 5, "places": 1, "objects": 1}


class DatasetError(PatchError):
    """A dataset that cannot be built or read as asked."""


@dataclass
class DatasetPair:
    pair: PromptPair
    line: int | None = None          # line in the uploaded file (1-based)
    roles: list[str] | None = None   # role label per token position (IOI pairs)
    meta: dict = field(default_factory=dict)
    n_tokens: int | None = None

    def to_dict(self) -> dict:
        d = self.pair.to_dict()
        if self.line is not None:
            d["line"] = self.line
        if self.meta:
            d["meta"] = dict(self.meta)
        return d


@dataclass(frozen=True)
class RowIssue:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class PairDataset:
    items: list[DatasetPair]
    source: str                                  # 'ioi' | 'upload' | 'list'
    settings: dict = field(default_factory=dict)
    rejected: list[RowIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[PromptPair]:
        return [it.pair for it in self.items]

    @property
    def role_aligned(self) -> bool:
        return bool(self.items) and all(it.roles is not None for it in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, items: list[DatasetPair], note: str | None = None) -> "PairDataset":
        notes = list(self.notes) + ([note] if note else [])
        return PairDataset(list(items), self.source, dict(self.settings), list(self.rejected), notes)


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
    first, second = sorted((where["S1"], where["IO"]))
    s2, end = where["S2"], len(ids) - 1
    if not (first < second < s2 < end):
        return None
    roles = []
    for i in range(len(ids)):
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


# --------------------------------------------------------------------------- uploads
COLUMNS = ("clean", "corrupted", "answer", "wrong")


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data.lstrip("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"The file is not UTF-8 text (bad byte at offset {exc.start}). "
                           f"Save it as UTF-8 CSV or JSONL.") from None


def detect_format(name: str | None, text: str) -> str:
    low = (name or "").lower()
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if low.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return "jsonl" if first.lstrip().startswith("{") else "csv"


def _rows_csv(text: str):
    """Yield (line, dict or None, error) per CSV record; line = where the record starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError("The file is empty. It needs a header row: clean,corrupted,answer,wrong.") from None
    except csv.Error as exc:
        raise DatasetError(f"The CSV header cannot be read ({exc}).") from None
    cols = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise DatasetError(
            f"The CSV header is missing the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}. "
            f"The first row must name the columns: clean,corrupted,answer,wrong (found: {', '.join(cols) or 'nothing'}).")
    index = {c: cols.index(c) for c in COLUMNS}
    prev_end = reader.line_num
    while True:
        start = prev_end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, None, f"cannot be read as CSV ({exc})"
            return
        prev_end = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(cols):
            yield start, None, (f"has {len(row)} field{'s' if len(row) != 1 else ''}, the header has "
                                f"{len(cols)} (quote text that contains commas)")
            continue
        if len(row) > len(cols):
            yield start, None, (f"has {len(row)} fields, the header has {len(cols)} "
                                f"(quote text that contains commas)")
            continue
        yield start, {c: row[i] for c, i in index.items()}, None


def _rows_jsonl(text: str):
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, None, f"is not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(obj, dict):
            yield line_no, None, "is not a JSON object like {\"clean\": …, \"corrupted\": …, \"answer\": …, \"wrong\": …}"
            continue
        missing = [c for c in COLUMNS if c not in obj]
        if missing:
            yield line_no, None, f"is missing {', '.join(missing)}"
            continue
        bad = [c for c in COLUMNS if not isinstance(obj[c], str)]
        if bad:
            yield line_no, None, f"{', '.join(bad)} must be text (in quotes)"
            continue
        yield line_no, {c: obj[c] for c in COLUMNS}, None


def parse_upload(data: bytes | str, name: str | None = None, tokenizer=None,
                 max_bytes: int = MAX_UPLOAD_BYTES, max_pairs: int = MAX_UPLOAD_PAIRS,
                 max_tokens: int = MAX_PROMPT_TOKENS) -> PairDataset:
    """Read a CSV/JSONL file of pairs. Bad rows go to `rejected` (line + reason); good rows run.

    With a tokenizer every row is also checked as a prompt pair (single-token
    answers, equal token lengths, ...). A file that cannot be read at all raises
    DatasetError.
    """
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > max_bytes:
        raise DatasetError(f"The file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. "
                           f"Split it or keep fewer pairs.")
    text = _decode(data)
    if not text.strip():
        raise DatasetError("The file is empty.")
    fmt = detect_format(name, text)
    rows = _rows_csv(text) if fmt == "csv" else _rows_jsonl(text)
    items, rejected = [], []
    seen: dict[PromptPair, int] = {}
    for line, row, error in rows:
        if error:
            rejected.append(RowIssue(line, error))
            continue
        if len(items) >= max_pairs:
            rejected.append(RowIssue(line, f"over the limit of {max_pairs} pairs per file (this row and "
                                           f"the ones after it were not read)"))
            break
        pair = PromptPair(row["clean"], row["corrupted"], row["answer"], row["wrong"])
        if pair in seen:
            rejected.append(RowIssue(line, f"repeats the pair on line {seen[pair]}"))
            continue
        n_tok = None
        if tokenizer is not None:
            prepared, issues = check_pair(tokenizer, pair, max_tokens)
            if issues:
                rejected.append(RowIssue(line, " ".join(_first_line(i.message) for i in issues)))
                continue
            n_tok = prepared.n_tokens
        seen[pair] = line
        items.append(DatasetPair(pair, line=line, n_tokens=n_tok))
    if not items and not rejected:  # a CSV header and nothing under it
        raise DatasetError("The file has a header but no pairs under it. Add one row per pair: "
                           "clean,corrupted,answer,wrong.")
    settings = {"source": "upload", "file": name or "", "format": fmt}
    ds = PairDataset(items, "upload", settings, rejected, [])
    if tokenizer is not None:
        from .advice import spacing_advice
        unspaced = [it.line if it.line is not None else k + 1 for k, it in enumerate(items)
                    if spacing_advice(tokenizer, it.pair)]
        if unspaced:
            where = ", ".join(map(str, unspaced[:8])) + (" …" if len(unspaced) > 8 else "")
            ds.notes.append(f"{len(unspaced)} pair(s) have an answer or wrong answer without a leading "
                            f"space (lines {where}); after a word the next token usually starts with "
                            f"one (' Paris', not 'Paris'). Check those rows.")
    if not items:
        ds.notes.append("No row could be used; see the rejected rows.")
    return ds


def rejected_summary(ds: PairDataset) -> str:
    """One line on an upload's rejected rows and what can still run (shown above their list)."""
    n, ok = len(ds.rejected), len(ds.items)
    if not ok:
        return ("The file's only row was rejected, so no pair can run; the reason is below." if n == 1 else
                f"All {n} rows of the file were rejected, so no pair can run; the reasons are below.")
    return (f"{n} row{'s' if n != 1 else ''} of the file {'were' if n != 1 else 'was'} rejected; "
            f"the other {ok} pair{'s' if ok != 1 else ''} can run.")


def _first_line(message: str) -> str:
    return message.splitlines()[0]


def pairs_from_list(pairs, tokenizer=None) -> PairDataset:
    """A dataset from PromptPairs (or dicts) given in code, checked like an upload."""
    items = []
    for p in pairs:
        items.append(p if isinstance(p, DatasetPair) else
                     DatasetPair(p if isinstance(p, PromptPair) else PromptPair(**p)))
    ds = PairDataset(items, "list", {"source": "list"})
    if tokenizer is not None:
        for i, it in enumerate(ds.items):
            if it.n_tokens is None:
                it.n_tokens = len(encode(tokenizer, it.pair.clean))
    return ds


# --------------------------------------------------------------------------- lengths
def length_groups(ds: PairDataset, tokenizer=None) -> dict[int, list[DatasetPair]]:
    """Pairs grouped by token length, largest group first."""
    groups: dict[int, list[DatasetPair]] = {}
    for it in ds.items:
        if it.n_tokens is None:
            if tokenizer is None:
                raise DatasetError("Token lengths are unknown: pass the tokenizer.")
            it.n_tokens = len(encode(tokenizer, it.pair.clean))
        groups.setdefault(it.n_tokens, []).append(it)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def for_sweep(ds: PairDataset, per_position: bool, tokenizer=None,
              length: int | None = None) -> PairDataset:
    """The pairs one sweep can average.

    IOI pairs (with roles) and sweeps without a position axis: all pairs.
    Uploaded pairs with a per-position sweep: equal token lengths are required,
    so one length group runs – `length`, or by default the largest – and a note
    says how many pairs were set aside.
    """
    if not per_position or ds.role_aligned or not ds.items:
        return ds
    groups = length_groups(ds, tokenizer)
    if len(groups) == 1 and (length is None or length in groups):
        return ds
    if length is None:
        length = next(iter(groups))
    if length not in groups:
        raise DatasetError(f"No pair has {length} tokens. Lengths present: "
                           + ", ".join(f"{k} ({len(v)} pairs)" for k, v in groups.items()) + ".")
    others = ", ".join(f"{len(v)} with {k}" for k, v in groups.items() if k != length)
    kept = groups[length]
    note = (f"Per-position sweeps need pairs of equal token length, so the {len(kept)} pairs with "
            f"{length} tokens ran; set aside: {others}. Run another length group, or a sweep "
            f"without positions (layer, head), to use them.")
    return ds.subset(kept, note)
