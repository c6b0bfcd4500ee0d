"""The dashboard's shared helpers and settings, without running a page."""
import html
import sys
import tomllib
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import ui  # noqa: E402
from ui.state import _valid  # noqa: E402

HOSTILE = [
    "<b>bold</b> <script>alert(1)</script>",
    "**strong** _em_ `code` ~~gone~~",
    "[link](javascript:alert(1)) ![img](http://x.io/a.png)",
    "# heading\n- item\n1. first",
    ":red[colour] :material/home: :smile: $x^2$ \\backslash & &amp; |a|b|",
    "' Mary' ⟶ “quotes” 1.5 +1 -1 {x} (y) =z ^w",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_md_escape_renders_as_the_literal_text(text):
    rendered = MarkdownIt("commonmark").render(ui.md_escape(text))
    inner = rendered.strip().removeprefix("<p>").removesuffix("</p>")
    assert "<p>" not in inner and "<a" not in inner and "<strong" not in inner and "<h1" not in inner
    expected = html.escape(text, quote=False).replace("\n", "<br />\n")
    assert inner == expected.replace('"', "&quot;")
    # Streamlit's own Markdown extensions start with ':' (colours, icons, emoji) or '$' (maths)
    assert ":" not in ui.md_escape(text).replace("\\:", "") and "$" not in ui.md_escape(text).replace("\\$", "")


@pytest.mark.parametrize("raw,ok", [
    ("embedded", True), ("openai-community/gpt2", True), ("gpt2", True), ("Qwen/Qwen2.5-0.5B", True),
    ("/etc/passwd", False), ("../models/x", False), ("a/../b", False), ("~/m.gguf", False),
    ("C:\\models", False), ("x" * 300, False), ("owner/name/extra", False), ("", False),
])
def test_model_names_a_link_may_carry(raw, ok):
    value, reason = _valid("model", raw)
    assert (reason is None) == ok and (value == raw) == ok


@pytest.mark.parametrize("key,raw,ok", [
    ("cell", "12,5", True), ("cell", "1,2,3", True), ("cell", "1,2,3,4", False), ("cell", "-1", False),
    ("cell", "1e9", False), ("view", "raw", True), ("view", "value", False), ("sweep", "head_pos", True),
    ("sweep", "HEAD", False), ("revision", "v1.0/main", True), ("revision", "a b", False),
    ("clean", "x" * ui.MAX_PROMPT_CHARS, True), ("clean", "x" * (ui.MAX_PROMPT_CHARS + 1), False),
    ("answer", "a\x00", False),
])
def test_query_parameter_validation(key, raw, ok):
    assert (_valid(key, raw)[1] is None) == ok


def test_streamlit_config():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["headless"] is True
    assert cfg["server"]["enableXsrfProtection"] is True and cfg["server"]["enableCORS"] is True
    assert cfg["server"]["fileWatcherType"] == "none"
    assert 1 <= cfg["server"]["maxUploadSize"] <= 50
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["theme"]["base"] == "light"
    # a full GC after every rerun holds the GIL for seconds with a model loaded: runs would starve
    assert cfg["runner"]["postScriptGC"] is False


def test_page_files_sort_in_reading_order():
    """Streamlit orders pages/ by the number prefix; helpers must not sit in pages/ (they'd be pages)."""
    from streamlit.source_util import page_icon_and_name, page_sort_key
    files = sorted((ROOT / "pages").glob("*.py"), key=page_sort_key)
    names = [page_icon_and_name(f)[1] for f in files]
    mine = [n for n in names if n in ("Model", "Prompts", "Patching", "Guide")]
    assert mine == ["Model", "Prompts", "Patching", "Guide"]
    assert names[-1] == "Guide"
    assert not any(n.startswith("ui") or n.startswith("_") for n in names)
