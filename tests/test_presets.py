"""Prompt presets and the IOI builder (patchcore.presets) against the embedded tokenizer/model."""
import pytest

from patchcore import check_pair, run_baseline
from patchcore.presets import (PRESETS, abc_names, ioi_pair, ioi_templates, load_ioi_material,
                               single_token_names)


@pytest.mark.parametrize("key", list(PRESETS))
def test_every_preset_is_a_valid_pair(tokenizer, key):
    prepared, issues = check_pair(tokenizer, PRESETS[key].pair)
    assert issues == []
    assert prepared.diff_positions, "clean and corrupted must differ somewhere"


@pytest.mark.embedded
def test_presets_work_on_the_embedded_model(embedded):
    """Each preset is a real demo: the clean prompt prefers the answer more than the corrupted one."""
    for key, preset in PRESETS.items():
        b = run_baseline(embedded, preset.pair)
        assert b.clean_metric > 0 > b.corrupted_metric, key


def test_single_token_names_filter(tokenizer):
    names = single_token_names(tokenizer)
    assert "John" in names and "Mary" in names
    assert "Brandon" not in names  # ' Brandon' is two tokens for SmolLM2
    assert len(names) < len(load_ioi_material()["names"])
    for n in names:
        assert len(tokenizer(" " + n, add_special_tokens=False)["input_ids"]) == 1


def test_name_swap_reproduces_the_seed_pair():
    tpl = "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]"
    assert tpl in ioi_templates()
    pair = ioi_pair(tpl, "John", "Mary", "store", "drink", "swap")
    assert pair.clean == "After Mary and John went to the store, Mary gave a drink to"
    assert pair.corrupted == "After Mary and John went to the store, John gave a drink to"
    assert (pair.answer, pair.wrong) == (" John", " Mary")


def test_abba_template_and_abc_corruption(tokenizer):
    tpl = "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    pool = single_token_names(tokenizer)
    pair = ioi_pair(tpl, "John", "Mary", "garden", "ring", "abc", pool=pool)
    assert pair.clean == "Then, John and Mary went to the garden. Mary gave a ring to"
    others = abc_names("John", "Mary", pool, seed=tpl)
    assert len(set(others)) == 3 and not {"John", "Mary"} & set(others)
    assert pair.corrupted == f"Then, {others[0]} and {others[1]} went to the garden. {others[2]} gave a ring to"
    assert ioi_pair(tpl, "John", "Mary", "garden", "ring", "abc", pool=pool) == pair  # deterministic
    prepared, issues = check_pair(tokenizer, pair)
    assert issues == [] and len(prepared.diff_positions) == 3


def test_every_template_builds_a_valid_pair(tokenizer):
    names = single_token_names(tokenizer)
    for tpl in ioi_templates():
        for corruption in ("swap", "abc"):
            pair = ioi_pair(tpl, "John", "Mary", "school", "snack", corruption, pool=names)
            assert check_pair(tokenizer, pair)[1] == [], (tpl, corruption)


def test_builder_rejects_bad_choices():
    tpl = ioi_templates()[0]
    with pytest.raises(ValueError, match="different"):
        ioi_pair(tpl, "John", "John")
    with pytest.raises(ValueError, match="corruption"):
        ioi_pair(tpl, "John", "Mary", corruption="shuffle")
    with pytest.raises(ValueError, match="three other"):
        ioi_pair(tpl, "John", "Mary", corruption="abc", pool=["John", "Mary", "Anna"])
