"""Every page starts with page("Title"): a deep link runs only that page, so each page sets up
the session state, the URL, its runs and the sidebar itself.

The sidebar's page list is drawn here (Streamlit's own list is off in .streamlit/config.toml):
it names the entry page "Home", not "dashboard", and every link carries only the settings of
the page it opens (ui.state.PAGE_KEYS). New files in pages/ appear in it by themselves.
"""
from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from ui import jobs
from ui.model import sidebar
from ui.state import _init_state, sync_url, url_params
from ui.text import md_escape

ROOT = Path(__file__).resolve().parents[1]
# The browser tab's icon: an emoji is drawn in the page itself (a data: URL). A ':material/…:'
# page icon would make every page view fetch an image from a Google font host.
FAVICON = "🧪"
ICONS = {"Home": ":material/home:", "Model": ":material/memory:", "Prompts": ":material/edit_note:",
         "Patching": ":material/grid_on:", "Datasets": ":material/dataset:",
         "History": ":material/history:", "Paths": ":material/route:", "Circuit": ":material/account_tree:",
         "Guide": ":material/menu_book:"}


def page(title: str, icon: str | None = None) -> None:
    """Start a page: config, state from the URL, notices, this browser's runs, URL sync, sidebar.

    `icon`: an emoji for the browser tab (':material/…:' icons are ignored there, see FAVICON)."""
    tab_icon = icon if icon and not icon.startswith(":material") else FAVICON
    st.set_page_config(page_title=f"{title} · patchcore", page_icon=tab_icon, layout="wide")
    st.session_state["_page"] = title
    _init_state(title)
    notices = st.session_state.pop("_notices", None)
    if notices:
        st.warning("Some settings in the link were not valid:\n\n" +
                   "\n".join(f"- {md_escape(n)}" for n in notices), icon=":material/link_off:")
    jobs.attach()
    sync_url(title)
    with st.sidebar:
        navigation(title)
    sidebar()


def pages() -> list[tuple[str, str]]:
    """(script path relative to the app, title) of every page, in the sidebar's order."""
    out = [("dashboard.py", "Home")]
    for path in sorted((ROOT / "pages").glob("*.py"), key=lambda p: _order(p.name)):
        out.append((f"pages/{path.name}", title_of(path.name)))
    return out


def _order(name: str) -> tuple:
    m = re.match(r"^(\d+)", name)
    return (int(m.group(1)) if m else 10**6, name)


def title_of(file_name: str) -> str:
    """'3_Patching.py' -> 'Patching' (Streamlit's rule for page names)."""
    stem = Path(file_name).stem
    return re.sub(r"^[\d_\s-]*", "", stem).replace("_", " ").strip() or stem


def link(path: str, label: str | None = None, icon: str | None = None, where=None) -> None:
    """A link to another page of the app, carrying that page's settings (and no others)."""
    title = "Home" if path == "dashboard.py" else title_of(path)
    (where or st).page_link(path, label=label or title, icon=icon or ICONS.get(title, ":material/article:"),
                            query_params=url_params(title) or None)


def navigation(current: str) -> None:
    for path, title in pages():
        link(path, title)
    st.divider()
