"""Pairs that pass every check but would measure nothing get a warning with the fix (issue 16.2)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import patchcore as pc
from patchcore.advice import pair_advice, spacing_advice
from patchcore.uploads import parse_upload

PARIS = pc.PromptPair("The Eiffel Tower is in the city of", "The Colosseum is in the city of", "Paris", " Rome")


@pytest.mark.embedded
def test_a_missing_leading_space_and_a_wrong_clean_prompt_are_named(embedded):
    got = pair_advice(embedded, pc.prepare_pair(embedded.tokenizer, PARIS))
    fields = [a.field for a in got]
    assert fields == ["answer", "clean"]
    assert "' Paris'" in got[0].message and got[0].fix.answer == " Paris"
    assert "prefers ' Rome'" in got[1].message
    assert pair_advice(embedded, pc.prepare_pair(embedded.tokenizer, got[0].fix)) == []
    assert pair_advice(embedded, pc.prepare_pair(embedded.tokenizer, pc.DEFAULT_PAIR)) == []


@pytest.mark.embedded
def test_the_cli_warns_and_still_runs(embedded, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "patchcore.cli", "sweep", "--sweep", "layer",
                           "--clean", PARIS.clean, "--corrupted", PARIS.corrupted, "--answer", "Paris",
                           "--wrong", " Rome", "--no-history", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("patchcore: warning:")]
    assert len(warnings) == 2 and "' Paris'" in warnings[0]


def test_uploads_note_answers_without_a_space(tokenizer):
    csv = "clean,corrupted,answer,wrong\n" + f"{PARIS.clean},{PARIS.corrupted},Paris, Rome\n" + \
          f"{PARIS.clean},{PARIS.corrupted}, Paris, Rome\n"
    ds = parse_upload(csv.encode(), "pairs.csv", tokenizer)
    assert any("1 pair(s)" in n and "line" in n for n in ds.notes)
    assert spacing_advice(tokenizer, ds.items[1].pair) == []
