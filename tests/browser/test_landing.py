"""Landing page in a real browser: Run demo -> heatmap + summary, cell detail, CSV download."""
from __future__ import annotations

import re

import numpy as np
import pytest

from browser_harness import cell_detail, click_cell

pytestmark = pytest.mark.browser

N_LAYERS, N_TOKENS = 30, 16          # embedded SmolLM2-135M, the seed's IOI pair
DIFF_POS = 9                         # ' Mary' / ' John': the only position where the prompts differ


def test_run_demo_shows_heatmap_and_summary(demo):
    s = demo.session
    print(f"Run demo: click -> heatmap and summary in {demo.seconds:.1f} s (cold server)")

    # the heatmap: one rect per (layer, position), all 30 x 16 of them, with numbers
    cells = demo.cells
    assert len(cells) == N_LAYERS * N_TOKENS, f"{len(cells)} heatmap cells"
    assert {(c["layer"], c["position"]) for c in cells} == \
        {(l, p) for l in range(N_LAYERS) for p in range(N_TOKENS)}
    assert all(np.isfinite(c["normalized"]) for c in cells)
    by = {(c["layer"], c["position"]): c for c in cells}
    # the token text labels the position axis, in order, repeats kept
    assert by[(0, DIFF_POS)]["token"].strip() == "Mary"
    assert by[(0, N_TOKENS - 1)]["token"].strip() == "to"
    # physics: before the differing token clean and corrupted activations are identical (score 0);
    # the last layer's residual at the last position *is* the clean run (score 1)
    assert all(abs(by[(l, p)]["normalized"]) < 1e-3 for l in range(N_LAYERS) for p in range(DIFF_POS))
    assert by[(N_LAYERS - 1, N_TOKENS - 1)]["normalized"] == pytest.approx(1.0, abs=1e-3)

    # the plain-language summary under the chart
    s.main.get_by_role("heading", name="What this shows").wait_for()
    bullets = s.main.get_by_text(re.compile(r"^• ")).all_inner_texts()
    assert bullets and all(len(b) > 20 for b in bullets), bullets
    assert s.main.get_by_text(re.compile(r"480 patches")).count() >= 1

    s.screenshot("landing")
    s.assert_clean("after Run demo")


def test_click_cell_shows_detail(demo):
    s = demo.session
    # a cell in the middle of the grid with a non-trivial score: layer 15 at the last position
    rec = click_cell(s, layer=15, position=N_TOKENS - 1)
    detail = cell_detail(s)
    f, text = detail["fields"], detail["text"]
    assert f.get("layer") == "15" and f.get("position") == "15", detail
    assert f.get("token") in ("␣to", " to"), detail
    # the detail's raw / normalised numbers are the cell's (the chart shows 3 decimals)
    raw = next(v for k, v in f.items() if k.startswith("raw"))
    assert float(raw.replace("−", "-")) == pytest.approx(rec["value"], abs=6e-4), detail
    assert float(f["normalised score"].replace("−", "-")) == pytest.approx(rec["normalized"], abs=6e-4)
    # the unpatched clean / corrupted values (DESIGN.md: +5.14 and -3.83) are given for reference
    assert "5.1367" in text and "-3.8286" in text.replace("−", "-"), text
    # the heading names the cell, and a sentence says what the number means
    assert re.search(r"Selected cell: layer 15, position 15", text), text
    assert any(len(line.split()) >= 6 for line in text.splitlines()[1:]), text
    s.assert_clean("after clicking a cell")


def test_csv_download_matches_sweep(demo):
    df = demo.csv
    assert list(df.columns)[:5] == ["layer", "position", "token", "value", "normalized"]
    # and what the numbers are about (issue 16, point 12)
    assert list(df.columns)[5:] == ["model", "sweep", "direction", "metric", "ablation", "clean", "corrupted",
                                    "answer", "wrong"]
    assert set(df.sweep) == {"layer_pos"} and set(df.direction) == {"denoise"} and set(df.answer) == {" John"}
    assert len(df) == N_LAYERS * N_TOKENS == 480
    assert set(zip(df.layer, df.position)) == {(l, p) for l in range(N_LAYERS) for p in range(N_TOKENS)}
    # normalised = (patched - corrupted) / (clean - corrupted), with the unpatched runs recovered
    # from the sweep itself: positions before the difference leave the corrupted run unchanged,
    # the last layer at the last position is the clean run
    corrupted = df[(df.position < DIFF_POS)].value
    clean = df[(df.layer == N_LAYERS - 1) & (df.position == N_TOKENS - 1)].value.iloc[0]
    assert np.ptp(corrupted) < 1e-4
    corrupted = float(corrupted.mean())
    assert clean == pytest.approx(5.14, abs=0.01) and corrupted == pytest.approx(-3.83, abs=0.01)
    np.testing.assert_allclose(df.normalized, (df.value - corrupted) / (clean - corrupted), atol=1e-4)
    # the download holds exactly what the heatmap shows (3 decimals in the chart)
    shown = {(c["layer"], c["position"]): c for c in demo.cells}
    for row in df.itertuples():
        c = shown[(row.layer, row.position)]
        assert abs(c["normalized"] - row.normalized) <= 0.0005 + 1e-9, (row, c)
        assert abs(c["value"] - row.value) <= 0.0005 + 1e-9, (row, c)
        assert c["token"] == row.token or c["token"].strip() == str(row.token).strip()
