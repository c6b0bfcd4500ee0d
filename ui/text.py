"""Text safety and errors: what the dashboard shows of user and stored strings, and how it
reports a failure (one line for bad input; an error id for a bug, its traceback in the server log)."""
from __future__ import annotations

import re
import uuid

import streamlit as st
from streamlit.logger import get_logger

from patchcore import PatchError


METRIC_NAMES = {"logit_diff": "logit difference", "prob": "probability of the answer",
                "logprob": "log-probability of the answer"}


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=^\"'])")


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def metric_md(metric: str) -> str:
    """metric_name for Markdown: a stored run's unknown metric name is escaped."""
    return METRIC_NAMES[metric] if metric in METRIC_NAMES else md_escape(metric)


def md_escape(text: str) -> str:
    """Text that Streamlit's Markdown shows literally (no links, HTML, colours, maths, emoji)."""
    text = _MD_SPECIAL.sub(r"\\\1", str(text))
    return text.replace("\n", "  \n")


def show_token(tok: str) -> str:
    """A token as plain text with its spaces and newlines visible."""
    return tok.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


log = get_logger("patchcore.dashboard")  # the server's log (the terminal running streamlit)


def show_error(exc: BaseException, where=None) -> None:
    """A PatchError's message, or for a bug a generic line with an error id. The traceback (with
    the server's paths) goes to the server's log under that id, never to the browser."""
    where = where or st
    if isinstance(exc, PatchError):
        first, _, rest = exc.message.partition("\n")
        where.error(md_escape(first), icon=":material/error:")
        if rest.strip():
            where.code(rest, language=None)
        return
    error_id = uuid.uuid4().hex[:10]
    log.error("dashboard error %s: %s", error_id, type(exc).__name__, exc_info=exc)
    where.error("Something went wrong inside the dashboard (a bug, not your input). Your settings "
                "are kept; try again. If it happens again, give the person who runs this server the "
                f"error id **{error_id}**: the details are in the server's log under that id.",
                icon=":material/bug_report:")
