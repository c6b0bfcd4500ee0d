"""Uploads in a real browser: rows are checked (bad ones listed by line), and the uploaded file is
never written anywhere on the server outside a temporary directory (issue 6): Streamlit keeps
uploads in memory and patchcore parses the bytes."""
from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from browser_harness import REPO, table_rows

pytestmark = pytest.mark.browser


def written_since(t0: float, roots: list[Path], marker: bytes) -> list[str]:
    """Files under `roots` modified since t0 whose bytes contain `marker` (temp dirs excluded)."""
    temp = Path(tempfile.gettempdir()).resolve()
    hits = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath).resolve()
            if here == temp or temp in here.parents:
                dirnames[:] = []
                continue
            for name in filenames:
                p = here / name
                try:
                    st = p.stat()
                    if st.st_mtime < t0 or st.st_size > 50 * 2**20:
                        continue
                    if marker in p.read_bytes():
                        hits.append(str(p))
                except OSError:
                    continue
    return hits


def test_upload_rows_checked_and_file_never_written(server, open_session, tmp_path):
    marker = f"Zq{uuid.uuid4().hex[:10]}"
    csv = tmp_path / "upload" / "pairs.csv"
    csv.parent.mkdir()
    csv.write_text(
        "clean,corrupted,answer,wrong\n"
        f'"When Tom and Anna went to the park, Anna gave a ball to","When Tom and Anna went to the park, Tom gave a ball to"," Tom"," Anna"\n'
        f'"{marker} and Mary","{marker} and John"," Mary"," Mary"\n'
        f'"After John and Mary went to the store, Mary gave a bottle of milk to","After John and Mary went to the store, John gave a bottle of milk to"," John"," Mary"\n')
    s = open_session(server)
    s.goto("/")
    s.open_page("^Datasets$")
    s.main.get_by_role("heading", name="Datasets").wait_for()
    s.pick("Upload a file of pairs (CSV or JSONL)")
    t0 = time.time() - 1
    s.main.locator('input[type="file"]').set_input_files(str(csv))
    s.main.get_by_text("1 row of the file was rejected").wait_for(timeout=60_000)
    s.settle()
    text = s.main.inner_text()
    assert "the other 2 pairs can run" in text, text
    grid = s.main.locator('[data-testid="stDataFrame"]').first
    deadline = time.monotonic() + 30
    while len(rows := table_rows(grid)) < 2 and time.monotonic() < deadline:
        s.page.wait_for_timeout(200)  # the grid fills its hidden table after it has drawn
    # one rejected row: line 3 of the file (the header is line 1), and why
    body = [[c.strip() for c in r] for r in rows[1:] if any(c.strip() for c in r)]
    assert len(body) == 1 and "3" in body[0], rows
    assert any("answer" in c.lower() for c in body[0]), rows
    s.assert_clean("after the upload")

    csv.unlink()  # only copies the server made remain
    roots = [REPO, Path.home()]
    data_dir = os.environ.get("PATCHCORE_DATA_DIR")
    if data_dir:
        roots.append(Path(data_dir))
    hits = written_since(t0, roots, marker.encode())
    assert not hits, f"the uploaded file was written to disk: {hits}"
