"""Uploaded pairs: CSV or JSONL with the columns clean, corrupted, answer, wrong.

Every row is validated; rejected rows keep their line number and the reason, and the good
rows still run.
"""
from __future__ import annotations

import csv
import io
import json

from .datasets import DatasetError, DatasetPair, PairDataset, RowIssue
from .prompts import MAX_PROMPT_TOKENS, PromptPair, check_pair

MAX_UPLOAD_BYTES = 5 * 2**20   # 5 MiB
MAX_UPLOAD_PAIRS = 2000


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

