"""Shared fixtures: the embedded model (loaded once), tiny random models per family."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
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
