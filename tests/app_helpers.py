"""Helpers for the Streamlit AppTest tests (tests/test_app_*.py).

AppTest runs the real scripts in this process: st.cache_resource is process-wide,
so the embedded model is loaded once for all app tests.
"""
from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the dashboard's `ui` package, as the pages import it
    sys.path.insert(0, str(ROOT))
TIMEOUT = 600  # seconds per script run: torch import and the first model load are slow on a busy CPU
PAGES = {"Model": "pages/1_Model.py", "Prompts": "pages/2_Prompts.py",
         "Patching": "pages/3_Patching.py", "Guide": "pages/9_Guide.py"}


@pytest.fixture(autouse=True)
def isolated_history(tmp_path, monkeypatch):
    """Runs the app saves go to a throwaway history, never the user's (import this into a test module)."""
    path = tmp_path / "history.sqlite3"
    monkeypatch.setenv("PATCHCORE_HISTORY_DB", str(path))
    return path


@contextlib.contextmanager
def served_on(address: str):
    """The dashboard as if started with --server.address `address` (the real option, restored after)."""
    from streamlit import config as st_config
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", address)
    try:
        yield
    finally:
        st_config.set_option("server.address", before)


def open_app(page: str | None = None, **params) -> AppTest:
    """A fresh session (like a new browser tab) on `page`, opened with these query parameters."""
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    at.query_params.update(params)
    if page:  # a deep link: only that page runs (the pages/ router resolves it by file name)
        at.switch_page(PAGES[page])
    return at.run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def run_job(at: AppTest, slot: str):
    """The session's run in `slot` (ui.jobs keeps runs per browser, on the server), or None."""
    import ui.jobs
    return ui.jobs.jobs_of(at.session_state["_browser"]).get(slot) if "_browser" in at.session_state else None


def run_result(at: AppTest, slot: str):
    """What a finished run in `slot` handed to the page (None: none, running, or failed)."""
    j = run_job(at, slot)
    return None if j is None or j.running or j.error is not None else j.result


def put_run(at: AppTest, slot: str, result=None, error: BaseException | None = None) -> None:
    """Hand the session a finished run, as if it had just run (the page shows it on its next run)."""
    import ui.jobs
    ui.jobs.jobs_of(at.session_state["_browser"])[slot] = ui.jobs.Job(total=1, result=result, error=error)


def wait_for_job(at: AppTest, slot: str, timeout: float = TIMEOUT) -> None:
    """Let a background run finish, then rerun the page so it shows the outcome."""
    job_ = run_job(at, slot)
    t0 = time.time()
    while job_ is not None and job_.running:
        assert time.time() - t0 < timeout, f"{slot} run still going after {timeout} s"
        time.sleep(0.2)
    at.run()


def run_to_end(at: AppTest, button: str, slot: str, timeout: float = TIMEOUT) -> None:
    """Press a run button: progress and Cancel show while it runs, and it ends with neither an
    exception nor an error box."""
    at.button(key=button).click().run()
    no_exception(at)
    assert at.get("progress") and any(b.label == "Cancel" for b in at.button)
    wait_for_job(at, slot, timeout)
    no_exception(at)
    assert errors(at) == []


def charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def chart_spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def chart_data(chart):
    """The heatmap's data rows, as the browser receives them."""
    (ds,) = chart.proto.datasets
    return convert_arrow_bytes_to_pandas_df(ds.data.data)


def click_chart(at: AppTest, chart, point: dict) -> AppTest:
    """What a click on a heatmap cell sends: the selection state of the chart widget.

    AppTest has no driver for chart selections, so this sends the widget state the
    frontend would (the chart id and its JSON selection) with every other widget unchanged.
    """
    states = WidgetStates()
    states.widgets.extend(w for w in at._tree.get_widget_states().widgets if w.id != chart.proto.id)
    ws = states.widgets.add()
    ws.id = chart.proto.id
    ws.string_value = json.dumps({"selection": {"cell": [point]}})
    return at._run(states)


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def plain(markdown: str) -> str:
    """Undo ui.text.md_escape: the text a reader sees."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("  \n", "\n")


def errors(at: AppTest) -> list[str]:
    return [plain(e.value) for e in at.error]


def column_of(at: AppTest, key: str):
    """The column holding the widget with this key."""
    for col in at.columns:
        if any(getattr(w, "key", None) == key for w in _walk(col)):
            return col
    raise AssertionError(f"no column holds widget {key!r}")


def _walk(block):
    for child in block.children.values():
        yield child
        if hasattr(child, "children"):
            yield from _walk(child)


def errors_after(at: AppTest, key: str, kind: str = "error") -> list[str]:
    """Error boxes (or another `kind`: "warning", "button") placed right under the widget `key`,
    before the next input widget."""
    items = list(_walk(column_of(at, key)))
    i = next(n for n, w in enumerate(items) if getattr(w, "key", None) == key)
    out = []
    for w in items[i + 1:]:
        if getattr(w, "type", "") in ("text_area", "text_input", "selectbox", "radio"):
            break
        if getattr(w, "type", "") == kind:
            out.append(plain(w.value) if kind != "button" else w.label)
    return out


# ---------------------------------------------------------------- a hub repository with custom code

CUSTOM_REPO = "patchcore-tests/custom-code-tiny"
_CUSTOM_CONFIG = '''"""A config class that writes a marker file when transformers imports it (trust_remote_code)."""
from pathlib import Path

from transformers import GPT2Config

Path({marker!r}).write_text("the repository's code ran in this process")


class CustomTinyConfig(GPT2Config):
    def __init__(self, **kwargs):
        kwargs.pop("model_type", None)
        super().__init__(**kwargs)
        self.model_type = "gpt2"  # a GPT-2 once loaded, so patchcore knows its components
'''
_CUSTOM_MODEL = '''from transformers import GPT2LMHeadModel

from .configuration_custom_tiny import CustomTinyConfig


class CustomTinyModel(GPT2LMHeadModel):
    config_class = CustomTinyConfig
'''


def custom_code_repo(hub_cache: Path, marker: Path, repo_id: str = CUSTOM_REPO) -> Path:
    """`repo_id` in a hub cache folder (HF_HUB_CACHE layout: models--owner--name/snapshots/<sha>,
    refs/main): a tiny GPT-2 whose config.json names a model type transformers does not know and
    maps it to custom code (auto_map), which writes `marker` when it is imported. Loading it
    without trust_remote_code fails ("custom code"); with it, the code runs and the model loads."""
    from tiny import build_hf, embedded_tokenizer

    sha = "c0de" * 10
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    model = build_hf("gpt2")
    model.save_pretrained(snap)
    embedded_tokenizer().save_pretrained(snap)
    config = json.loads((snap / "config.json").read_text())
    config.update(model_type="patchcore-custom-tiny", architectures=["CustomTinyModel"],
                  auto_map={"AutoConfig": "configuration_custom_tiny.CustomTinyConfig",
                            "AutoModelForCausalLM": "modeling_custom_tiny.CustomTinyModel"})
    (snap / "config.json").write_text(json.dumps(config, indent=1))
    (snap / "configuration_custom_tiny.py").write_text(_CUSTOM_CONFIG.format(marker=str(marker)))
    (snap / "modeling_custom_tiny.py").write_text(_CUSTOM_MODEL)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snap
