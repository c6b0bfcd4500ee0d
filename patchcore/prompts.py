"""Prompt pairs: validation with messages a non-coder can act on."""
from __future__ import annotations

from dataclasses import dataclass, field, asdict

from .errors import PairError

MAX_PROMPT_TOKENS = 256  # per prompt; longer prompts make sweeps slow and heatmaps unreadable


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupted: str
    answer: str
    wrong: str

    def to_dict(self) -> dict:
        return asdict(self)


# The seed document's IOI pair: the default everywhere.
DEFAULT_PAIR = PromptPair(
    clean="After John and Mary went to the store, Mary gave a bottle of milk to",
    corrupted="After John and Mary went to the store, John gave a bottle of milk to",
    answer=" John",
    wrong=" Mary",
)


@dataclass(frozen=True)
class Issue:
    field: str    # clean | corrupted | answer | wrong
    message: str


@dataclass
class PreparedPair:
    pair: PromptPair
    clean_ids: list[int]
    corrupted_ids: list[int]
    answer_id: int
    wrong_id: int
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    diff_positions: list[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.clean_ids)

    @property
    def first_diff(self) -> int:
        """The first position where the prompts differ (0 when they do not)."""
        return min(self.diff_positions, default=0)


def encode(tokenizer, text: str) -> list[int]:
    """Tokenize as the model's tokenizer does by default (its own BOS, if any)."""
    return list(tokenizer(text)["input_ids"])


def token_texts(tokenizer, ids) -> list[str]:
    """Readable text of each token (with its leading space), one per id."""
    return [tokenizer.decode([int(i)]) for i in ids]


def _show(tokens) -> str:
    return " | ".join(repr(t) for t in tokens)


def aligned_table(clean_tokens, corrupted_tokens) -> str:
    """Both token lists side by side, marking the positions that differ."""
    n = max(len(clean_tokens), len(corrupted_tokens))
    rows = ["pos  clean            corrupted"]
    for i in range(n):
        a = clean_tokens[i] if i < len(clean_tokens) else "—"
        b = corrupted_tokens[i] if i < len(corrupted_tokens) else "—"
        mark = "  <- differs" if a != b else ""
        rows.append(f"{i:>3}  {a!r:<16} {b!r:<16}{mark}")
    return "\n".join(rows)


def _single_token(tokenizer, field_name: str, label: str, text: str):
    """Return (token_id, None) or (None, Issue)."""
    if text == "":
        return None, Issue(field_name, f"The {label} token is empty. Type the word the model "
                                       f"should predict, usually with a leading space, e.g. ' John'.")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return ids[0], None
    pieces = _show(token_texts(tokenizer, ids))
    hint = ""
    if not text.startswith(" "):
        spaced = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        if len(spaced) == 1:
            hint = f" Try it with a leading space: {(' ' + text)!r} is one token."
    if not hint:
        hint = " Pick a shorter or more common word that is a single token."
    return None, Issue(field_name, f"The {label} {text!r} is {len(ids)} tokens for this model "
                                   f"({pieces}), but it must be exactly one token.{hint}")


def check_pair(tokenizer, pair: PromptPair, max_tokens: int = MAX_PROMPT_TOKENS):
    """Validate a pair. Returns (PreparedPair or None, list of Issues)."""
    issues: list[Issue] = []
    for name in ("clean", "corrupted"):
        if not getattr(pair, name).strip():
            issues.append(Issue(name, f"The {name} prompt is empty. Type a sentence for the model "
                                      f"to complete, e.g. {DEFAULT_PAIR.clean!r}."))
    answer_id, issue = _single_token(tokenizer, "answer", "answer", pair.answer)
    if issue:
        issues.append(issue)
    wrong_id, issue = _single_token(tokenizer, "wrong", "wrong answer", pair.wrong)
    if issue:
        issues.append(issue)
    if answer_id is not None and answer_id == wrong_id:
        issues.append(Issue("wrong", f"The answer and the wrong answer are the same token "
                                     f"({pair.answer!r}). Pick two different tokens, e.g. ' John' and ' Mary'."))
    if any(i.field in ("clean", "corrupted") for i in issues):
        return None, issues

    clean_ids, corrupted_ids = encode(tokenizer, pair.clean), encode(tokenizer, pair.corrupted)
    clean_tokens = token_texts(tokenizer, clean_ids)
    corrupted_tokens = token_texts(tokenizer, corrupted_ids)
    for name, ids in (("clean", clean_ids), ("corrupted", corrupted_ids)):
        if len(ids) > max_tokens:
            issues.append(Issue(name, f"The {name} prompt is {len(ids)} tokens; the limit is "
                                      f"{max_tokens}. Shorten it."))
    if len(clean_ids) != len(corrupted_ids):
        issues.append(Issue("corrupted", (
            f"The prompts have different lengths: clean is {len(clean_ids)} tokens, corrupted is "
            f"{len(corrupted_ids)}. Patching matches positions one to one, so edit the corrupted "
            f"prompt until both have the same number of tokens (swap a name for one of the same "
            f"token length).\n" + aligned_table(clean_tokens, corrupted_tokens))))
    elif clean_ids == corrupted_ids:
        issues.append(Issue("corrupted", "The clean and corrupted prompts are the same. Change one "
                                         "detail in the corrupted prompt (e.g. swap a name), so the "
                                         "model's answer changes."))
    if issues:
        return None, issues
    diff = [i for i, (a, b) in enumerate(zip(clean_ids, corrupted_ids)) if a != b]
    return PreparedPair(pair, clean_ids, corrupted_ids, answer_id, wrong_id,
                        clean_tokens, corrupted_tokens, diff), []


def prepare_pair(tokenizer, pair: PromptPair, max_tokens: int = MAX_PROMPT_TOKENS) -> PreparedPair:
    prepared, issues = check_pair(tokenizer, pair, max_tokens)
    if issues:
        raise PairError(issues)
    return prepared
