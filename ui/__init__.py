"""The dashboard's shared Streamlit code (pages hold only their own layout; patchcore computes).

Why a package beside `pages/`: Streamlit's `pages/` router makes a page of every
`pages/*.py`, and `streamlit run` puts the entry point's folder on sys.path, so every
page can `import ui`.

    ui.text     text safety (md_escape) and error boxes        ui.state   session state and URL
    ui.model    the shared loaded model and the sidebar         ui.jobs    background runs
    ui.results  showing a result                                ui.page    page(): every page's start
    ui.datasets dataset runs and their results                  ui.remote  NDIF connections
    ui.atp      the fast preview (attribution patching)         ui.ablation the ablation choice
    ui.hypothesis, ui.paths, ui.circuit, ui.circuit_view, ui.patterns: the hypothesis check,
                the Paths and Circuit pages' parts, where the heads look

The names below are what pages use most, importable as `ui.<name>`.
"""
from patchcore.models import EMBEDDED
from ui.jobs import (Job, clear, cost_columns, job_of, job_panel, job_running, plan_line, result_for,
                     seconds_text, start_job, start_preview, start_sweep)
from ui.model import auto_model, baseline, chosen_spec, get_model, is_loaded, model_label
from ui.page import link, page
from ui.results import show_result
from ui.state import (DEVICES, MAX_PROMPT_CHARS, MAX_TOKEN_CHARS, bind, current_pair, server_address,
                      sync_url)
from ui.text import md_escape, metric_name, show_error, show_token

__all__ = ["EMBEDDED", "Job", "clear", "cost_columns", "job_of", "job_panel", "job_running", "plan_line",
           "result_for", "seconds_text", "start_job", "start_preview", "start_sweep", "auto_model",
           "baseline", "chosen_spec", "get_model", "is_loaded", "model_label", "link", "page",
           "show_result", "DEVICES",
           "MAX_PROMPT_CHARS", "MAX_TOKEN_CHARS", "bind", "current_pair", "server_address",
           "sync_url", "md_escape", "metric_name", "show_error", "show_token"]
