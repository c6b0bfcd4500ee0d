"""Every validation message a person can see, with the field the UI shows it beside."""
from __future__ import annotations

import pytest

from patchcore import DEFAULT_PAIR, PairError, PromptPair, check_pair, prepare_pair
from patchcore.prompts import MAX_PROMPT_TOKENS, aligned_table, encode, token_texts


def issues_of(tokenizer, pair, **kw):
    prepared, issues = check_pair(tokenizer, pair, **kw)
    assert (prepared is None) == bool(issues)
    return issues


def only_issue(tokenizer, pair, **kw):
    issues = issues_of(tokenizer, pair, **kw)
    assert len(issues) == 1, issues
    return issues[0]


def pair(**changes):
    base = DEFAULT_PAIR.to_dict()
    base.update(changes)
    return PromptPair(**base)


def test_default_pair_is_valid(tokenizer):
    prepared, issues = check_pair(tokenizer, DEFAULT_PAIR)
    assert issues == []
    assert prepared.n_tokens == 16
    assert prepared.diff_positions == [9]
    assert prepared.clean_tokens[9] == " Mary" and prepared.corrupted_tokens[9] == " John"
    assert prepared.clean_tokens[0] == "After"  # no extra BOS: SmolLM2's tokenizer adds none
    assert prepared.answer_id == tokenizer(" John", add_special_tokens=False)["input_ids"][0]
    assert prepared.wrong_id == tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    assert prepared.answer_id != prepared.wrong_id


def test_tokenize_as_the_tokenizer_does(tokenizer):
    ids = encode(tokenizer, DEFAULT_PAIR.clean)
    assert ids == list(tokenizer(DEFAULT_PAIR.clean)["input_ids"])
    assert "".join(token_texts(tokenizer, ids)) == DEFAULT_PAIR.clean


@pytest.mark.parametrize("field", ["clean", "corrupted"])
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_prompt(tokenizer, field, text):
    issue = only_issue(tokenizer, pair(**{field: text}))
    assert issue.field == field
    assert f"The {field} prompt is empty" in issue.message
    assert "Type a sentence" in issue.message


def test_both_prompts_empty_gives_two_issues(tokenizer):
    issues = issues_of(tokenizer, pair(clean="", corrupted=""))
    assert [i.field for i in issues] == ["clean", "corrupted"]


def test_different_token_lengths_show_aligned_tokens(tokenizer):
    p = pair(corrupted="After John and Mary went to the store, Johnathan gave a bottle of milk to")
    issue = only_issue(tokenizer, p)
    assert issue.field == "corrupted"
    msg = issue.message
    first, *table = msg.splitlines()
    assert "different lengths" in first
    assert "clean is 16 tokens, corrupted is 17" in first
    assert "same number of tokens" in first
    # aligned table: header + one row per position of the longer prompt
    assert table[0].split() == ["pos", "clean", "corrupted"]
    assert len(table) == 1 + 17
    rows = table[1:]
    for i in range(9):  # identical prefix: no marker
        assert "differs" not in rows[i] and rows[i].split()[0] == str(i)
    assert "' Mary'" in rows[9] and "' John'" in rows[9] and "<- differs" in rows[9]
    assert "'athan'" in rows[10] and "<- differs" in rows[10]
    assert "—" in rows[16] and "<- differs" in rows[16]  # clean ran out of tokens


def test_aligned_table_marks_only_differences():
    table = aligned_table(["A", " b", " c"], ["A", " x", " c", " d"]).splitlines()
    marked = [r.split()[0] for r in table[1:] if "<- differs" in r]
    assert marked == ["1", "3"]


def test_multi_token_answer_shows_split_and_suggests_leading_space(tokenizer):
    issue = only_issue(tokenizer, pair(answer="Johnathan"))
    assert issue.field == "answer"
    assert "'Johnathan' is 2 tokens" in issue.message
    assert "'John' | 'athan'" in issue.message
    assert "exactly one token" in issue.message
    # ' Johnathan' is two tokens as well, so no leading-space hint: suggest another word
    assert "leading space" not in issue.message
    assert "Pick a shorter or more common word" in issue.message


def test_missing_leading_space_suggested(tokenizer):
    # 'Mary' without a space is one token too; find a word that needs the space to be one token
    word = "Jonathan"
    assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) > 1
    assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1
    issue = only_issue(tokenizer, pair(wrong=word))
    assert issue.field == "wrong"
    assert "The wrong answer 'Jonathan' is" in issue.message
    assert "Try it with a leading space: ' Jonathan' is one token." in issue.message


def test_multi_token_with_leading_space_shows_split(tokenizer):
    issue = only_issue(tokenizer, pair(answer=" Constantinople and"))
    assert issue.field == "answer"
    assert "' Constantinople and' is 2 tokens for this model (' Constantinople' | ' and')" in issue.message
    assert "leading space" not in issue.message  # it already has one
    assert "single token" in issue.message


@pytest.mark.parametrize("field", ["answer", "wrong"])
def test_empty_answer_token(tokenizer, field):
    issue = only_issue(tokenizer, pair(**{field: ""}))
    assert issue.field == field
    assert "token is empty" in issue.message and "leading space" in issue.message


def test_answer_equal_to_wrong(tokenizer):
    issue = only_issue(tokenizer, pair(answer=" John", wrong=" John"))
    assert issue.field == "wrong"
    assert "are the same token (' John')" in issue.message
    assert "Pick two different tokens" in issue.message


def test_identical_prompts(tokenizer):
    issue = only_issue(tokenizer, pair(corrupted=DEFAULT_PAIR.clean))
    assert issue.field == "corrupted"
    assert "The clean and corrupted prompts are the same" in issue.message
    assert "Change one detail" in issue.message


def test_over_token_limit(tokenizer):
    long = " ".join(["milk"] * (MAX_PROMPT_TOKENS + 5))
    issues = issues_of(tokenizer, pair(clean=long, corrupted=long.replace("milk", "Mary", 1)))
    fields = [i.field for i in issues]
    assert fields == ["clean", "corrupted"]
    assert f"the limit is {MAX_PROMPT_TOKENS}" in issues[0].message
    assert "Shorten it" in issues[0].message
    assert issues_of(tokenizer, DEFAULT_PAIR, max_tokens=10)[0].message == \
        "The clean prompt is 16 tokens; the limit is 10. Shorten it."


def test_all_problems_reported_at_once(tokenizer):
    issues = issues_of(tokenizer, PromptPair(clean="", corrupted="x", answer="Johnathan", wrong=""))
    assert sorted(i.field for i in issues) == ["answer", "clean", "wrong"]


@pytest.mark.parametrize("clean, corrupted, expected", [
    ("After John and Mary went to the store, Mary gave a bottle of milk to",
     "After John and Mary went to the store, John gave a bottle of milk to", [9]),
    ("When Mary and John met, John thanked her", "When John and Mary met, Mary thanked her", [1, 3, 6]),
    ("Mary met John; John thanked", "John met Mary; Mary thanked", [0, 2, 4]),
])
def test_diff_positions(tokenizer, clean, corrupted, expected):
    prepared = prepare_pair(tokenizer, PromptPair(clean, corrupted, " John", " Mary"))
    assert prepared.diff_positions == expected
    assert all(prepared.clean_tokens[i] != prepared.corrupted_tokens[i] for i in expected)


def test_prepare_pair_raises_with_every_issue(tokenizer):
    with pytest.raises(PairError) as info:
        prepare_pair(tokenizer, PromptPair("", "", " John", " John"))
    err = info.value
    assert [i.field for i in err.issues] == ["clean", "corrupted", "wrong"]
    assert str(err) == err.issues[0].message and err.field == "clean"
