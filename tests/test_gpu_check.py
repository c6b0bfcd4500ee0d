"""The GPU check script runs (on the CPU here) and reports the device-vs-CPU equality it checks."""
from __future__ import annotations

import json

from patchcore import gpu_check


def test_gpu_check_runs_and_reports(tmp_path, single_thread):
    tok_dir = tmp_path / "tok"
    assert gpu_check.main(["--save-tokenizer", str(tok_dir)]) == 0
    assert (tok_dir / "tokenizer.json").is_file()       # what a GPU machine gets instead of the GGUF
    code = gpu_check.main(["--device", "cpu", "--quick", "--tokenizer", str(tok_dir),
                           "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert code == 0 and len(report["equality"]) == 2 * 2 * 2
    assert report["equality_max_diff"] <= gpu_check.TOL
    assert {r["family"] for r in report["equality"]} == {"GPT2Config", "LlamaConfig"}
