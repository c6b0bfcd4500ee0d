"""Shared fixtures: the embedded model (loaded once), tiny random models per family."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # `from tiny import ...`, `from reference import ...`
    sys.path.insert(0, str(TESTS_DIR))

# Run history written by tests (CLI runs, dashboard servers started as subprocesses)
# goes to a throw-away folder, never the user's real history.
os.environ["PATCHCORE_DATA_DIR"] = tempfile.mkdtemp(prefix="patchcore-test-data-")


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2 model, loaded once per test session."""
    from patchcore import load_model
    return load_model("embedded")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer (shared by the tiny models)."""
    from tiny import embedded_tokenizer
    return embedded_tokenizer()


@pytest.fixture(scope="session")
def tiny():
    """tiny(family) -> LoadedModel, built once per family and shared within the session.

    Tests that need a model nobody else touches (threads, cancellation) build
    their own with tiny.tiny_model instead.
    """
    from tiny import tiny_model
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tiny_model(family)
        return cache[family]
    return get


@contextlib.contextmanager
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine
    torch's thread pool makes a 3-layer forward ~50x slower (spin-waiting).
    Restored afterwards so the embedded-model tests keep their default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    """One intra-op thread for one test."""
    with _one_thread():
        yield


@pytest.fixture(scope="module")
def single_thread_module():
    """One intra-op thread for a whole module, its module-scoped fixtures included."""
    with _one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny llama saved like any transformers model folder (weights, config, tokenizer)."""
    from tiny import build_hf, embedded_tokenizer
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_hf("llama").save_pretrained(folder)
    embedded_tokenizer().save_pretrained(folder)
    return folder


JOB_JOIN_S = float(os.environ.get("PATCHCORE_TEST_JOB_JOIN_S", "120"))


@pytest.fixture(autouse=True)
def background_jobs_end():
    """Background runs a test starts end before the test does.

    The dashboard runs its jobs on threads named `patchcore-<slot>` (ui.jobs.start_job), each
    carrying its job's cancel event. At teardown every such thread the test started is cancelled
    and joined; one still alive after JOB_JOIN_S fails the test (it would go on using the model,
    the history file and the CPU in the tests after it)."""
    before = set(threading.enumerate())
    yield
    started = [t for t in threading.enumerate()
               if t.name.startswith("patchcore-") and t not in before and t.is_alive()]
    for t in started:
        cancel = getattr(t, "cancel_event", None)
        if cancel is not None:
            cancel.set()
    deadline = time.monotonic() + JOB_JOIN_S
    for t in started:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in started if t.is_alive()]
    if alive:
        pytest.fail(f"background runs still going {JOB_JOIN_S:.0f} s after they were cancelled at the "
                    f"end of the test: {', '.join(alive)}", pytrace=False)


@pytest.fixture
def custom_repo(tmp_path, monkeypatch):
    """A hub id in a hub cache of its own (offline), whose config needs custom code that writes
    a marker file when it runs. Returns (repo id, marker)."""
    import huggingface_hub.constants as hc

    from app_helpers import custom_code_repo
    repo_id = f"patchcore-tests/{tmp_path.name[:60]}"  # its own id: never imported before
    marker = tmp_path / "marker"
    custom_code_repo(tmp_path / "hub", marker, repo_id)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PATCHCORE_TRUST_REMOTE_CODE", raising=False)
    return repo_id, marker
