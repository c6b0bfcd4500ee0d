"""Every page starts with page("Title"): a deep link runs only that page, so each page sets up
the session state, the URL and the sidebar itself."""
from __future__ import annotations

import streamlit as st

from ui.model import sidebar
from ui.state import _init_state, sync_url
from ui.text import md_escape


def page(title: str, icon: str = ":material/insights:") -> None:
    """Start a page: config, state from the URL, notices, URL sync, sidebar."""
    st.set_page_config(page_title=f"{title} · patchcore", page_icon=icon, layout="wide")
    _init_state()
    notices = st.session_state.pop("_notices", None)
    if notices:
        st.warning("Some settings in the link were not valid:\n\n" +
                   "\n".join(f"- {md_escape(n)}" for n in notices), icon=":material/link_off:")
    sync_url()
    sidebar()
