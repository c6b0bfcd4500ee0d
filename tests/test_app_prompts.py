"""AppTest: the Prompts page – inline validation beside each field, presets, the IOI builder."""
import pytest

from app_helpers import errors, errors_after, no_exception, open_app
from patchcore import DEFAULT_PAIR, PromptPair, check_pair, run_baseline
from patchcore.presets import PRESETS, single_token_names

pytestmark = pytest.mark.embedded

D = DEFAULT_PAIR
BAD = {  # name: (the pair typed in, the field whose message must appear beside it)
    "empty clean": (PromptPair("", D.corrupted, D.answer, D.wrong), "clean"),
    "empty corrupted": (PromptPair(D.clean, "   ", D.answer, D.wrong), "corrupted"),
    "empty answer": (PromptPair(D.clean, D.corrupted, "", D.wrong), "answer"),
    "multi-token answer": (PromptPair(D.clean, D.corrupted, " Zyxwvutsrq", D.wrong), "answer"),
    "answer without its space": (PromptPair(D.clean, D.corrupted, "Jessica", D.wrong), "answer"),
    "multi-token wrong": (PromptPair(D.clean, D.corrupted, D.answer, " Brittany-Lou"), "wrong"),
    "same answer twice": (PromptPair(D.clean, D.corrupted, D.answer, D.answer), "wrong"),
    "different lengths": (PromptPair(D.clean, D.corrupted.replace("John gave", "Christopher Robin gave"),
                                     D.answer, D.wrong), "corrupted"),
    "identical prompts": (PromptPair(D.clean, D.clean, D.answer, D.wrong), "corrupted"),
    "too long": (PromptPair("milk " * 300, "water " * 300, D.answer, D.wrong), "clean"),
}
FIELDS = ("clean", "corrupted", "answer", "wrong")


def type_pair(at, pair: PromptPair):
    for f in FIELDS:
        w = at.text_area(key=f"w_{f}") if f in ("clean", "corrupted") else at.text_input(key=f"w_{f}")
        w.input(getattr(pair, f))
    return at.run()


@pytest.fixture(scope="module")
def prompts_page():
    return open_app("Prompts")


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_shows_its_message_beside_its_field(prompts_page, tokenizer, case):
    pair, field = BAD[case]
    at = type_pair(prompts_page, pair)
    no_exception(at)
    _, issues = check_pair(tokenizer, pair)
    assert issues and field in {i.field for i in issues}
    for issue in issues:  # every message, beside the field it is about, nowhere else
        shown = errors_after(at, f"w_{issue.field}")
        assert issue.message.splitlines()[0] in shown, (issue.field, shown)
        for other in set(FIELDS) - {issue.field}:
            assert issue.message.splitlines()[0] not in errors_after(at, f"w_{other}")
    # the user's text is kept as typed
    assert at.text_area(key="w_clean").value == pair.clean
    assert at.text_input(key="w_answer").value == pair.answer
    assert at.session_state["corrupted"] == pair.corrupted
    assert at.metric == [] or not len(at.metric)  # no baseline for an invalid pair
    if case == "different lengths":  # the aligned token table comes with the message
        assert any("<- differs" in c.value for c in at.code)
    type_pair(at, DEFAULT_PAIR)  # back to a valid pair for the next case
    assert errors(at) == []


def test_message_for_a_missing_leading_space_suggests_the_fix(prompts_page):
    at = type_pair(prompts_page, BAD["answer without its space"][0])
    (msg,) = errors_after(at, "w_answer")
    assert "Try it with a leading space: ' Jessica' is one token." in msg
    type_pair(at, DEFAULT_PAIR)


@pytest.mark.parametrize("key", list(PRESETS))
def test_presets_fill_the_fields_and_run_the_baseline(prompts_page, embedded, key):
    at = prompts_page
    at.selectbox(key="w_preset").select(key).run()
    no_exception(at)
    pair = PRESETS[key].pair
    assert at.text_area(key="w_clean").value == pair.clean
    assert at.text_area(key="w_corrupted").value == pair.corrupted
    assert (at.text_input(key="w_answer").value, at.text_input(key="w_wrong").value) == (pair.answer, pair.wrong)
    assert errors(at) == []
    base = run_baseline(embedded, pair)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Clean logit difference"] == f"{base.clean_metric:+.3f}"
    assert metrics["Corrupted logit difference"] == f"{base.corrupted_metric:+.3f}"


def test_ioi_builder_offers_only_single_token_names(prompts_page, tokenizer):
    at = prompts_page
    at.selectbox(key="w_preset").select("builder").run()
    no_exception(at)
    names = at.selectbox(key="w_io").options
    assert names == single_token_names(tokenizer)
    assert "Brandon" not in names and "John" in names
    clean = at.text_area(key="w_clean").value
    assert "John" in clean and "Mary" in clean and clean.endswith(" to")
    at.selectbox(key="w_io").select("David").run()
    at.selectbox(key="w_s").select("Sarah").run()
    at.radio(key="w_corruption").set_value("abc").run()
    no_exception(at)
    pair = at.session_state["clean"], at.session_state["corrupted"]
    assert "David" in pair[0] and "Sarah" in pair[0]
    assert "David" not in pair[1] and "Sarah" not in pair[1]  # ABC: three other names
    assert at.text_input(key="w_answer").value == " David"
    assert errors(at) == []
    assert len(at.metric) == 2  # the built pair is valid: baseline shown
    at.selectbox(key="w_s").select("David").run()  # the same name twice: said, text kept
    assert any("must be different" in e for e in errors(at))
    assert at.text_area(key="w_clean").value == pair[0]
    at.selectbox(key="w_preset").select("ioi").run()
    assert at.text_area(key="w_clean").value == DEFAULT_PAIR.clean


CAPITAL = PRESETS["capital"].pair


def test_an_answer_without_its_leading_space_is_flagged_with_a_one_click_fix():
    """Issue 16, point 2: 'Paris' is one token, so the pair is valid, but the model says ' Paris'."""
    at = open_app("Prompts")
    mine = "The capital of France is the lovely city of"          # the user's own text, kept
    typed = PromptPair(mine, mine.replace("France", "Italy"), "Paris", CAPITAL.wrong)
    at = type_pair(at, typed)
    no_exception(at)
    assert errors(at) == []
    (warning,) = errors_after(at, "w_answer", "warning")
    assert "' Paris'" in warning and "leading space" in warning
    assert errors_after(at, "w_answer", "button") == ["Use ' Paris'"]
    at.button(key="fix_answer").click().run()
    no_exception(at)
    assert at.text_input(key="w_answer").value == " Paris" and at.session_state["answer"] == " Paris"
    assert (at.text_area(key="w_clean").value, at.text_area(key="w_corrupted").value,
            at.text_input(key="w_wrong").value) == (typed.clean, typed.corrupted, typed.wrong)
    assert errors_after(at, "w_answer", "warning") == []


def test_a_clean_prompt_the_model_gets_wrong_is_flagged_under_it():
    at = type_pair(open_app("Prompts"), PromptPair(CAPITAL.clean, CAPITAL.corrupted, CAPITAL.wrong, CAPITAL.answer))
    no_exception(at)
    (warning,) = errors_after(at, "w_clean", "warning")
    assert "the model prefers ' Paris' to ' Rome'" in warning and "no clean behaviour to restore" in warning


def test_the_preset_box_follows_edits_and_a_preset_can_be_chosen_again():
    """Issue 16, point 7."""
    at = open_app("Prompts")
    at.selectbox(key="w_preset").select("capital").run()
    assert at.text_area(key="w_clean").value == CAPITAL.clean
    at.text_area(key="w_clean").input("The capital of Spain is the city of").run()
    no_exception(at)
    assert at.selectbox(key="w_preset").value == "custom"          # no longer the preset
    at.selectbox(key="w_preset").select("capital").run()            # choosing it again fills the fields
    assert at.text_area(key="w_clean").value == CAPITAL.clean
    assert at.selectbox(key="w_preset").value == "capital"
    at.selectbox(key="w_preset").select("custom").run()             # 'My own text' keeps the text and says so
    assert at.selectbox(key="w_preset").value == "custom" and at.text_area(key="w_clean").value == CAPITAL.clean
