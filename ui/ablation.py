"""The ablation choice (what a patch writes, patchcore.ablations), as Patching, Datasets and Paths
show it: a select box with every ablation explained, the chosen one's help and its caveat."""
from __future__ import annotations

from patchcore.ablations import ABLATIONS
from ui.state import bind
from ui.text import md_escape


def choose_ablation(widget_key: str, select, note, label: str = "What a patch writes (ablation)") -> str:
    """Draw the choice in `select` (a column or container) and its help and caveat in `note`;
    returns the chosen ablation's name (kept in the session's 'ablation' setting)."""
    ablation = select.selectbox(
        label, list(ABLATIONS), format_func=lambda a: ABLATIONS[a].title, **bind(widget_key, "ablation"),
        help="\n\n".join(f"**{md_escape(a.title)}**: {md_escape(a.help)}" for a in ABLATIONS.values()))
    note.caption(ABLATIONS[ablation].help)
    if ABLATIONS[ablation].caveat:
        note.warning(md_escape(ABLATIONS[ablation].caveat), icon=":material/warning:")
    return ablation
