"""The simulated NDIF run (remote="local") leaves the process's modules alone.

nnsight's own dry run removes every non-installed module from sys.modules while it
deserialises a request; another thread importing in that window re-runs the module
(under AppTest: "DeltaGeneratorSingleton instance already exists!"). patchcore's
SimulatedNDIF makes the same check with an unpickler instead.
"""
from __future__ import annotations

import pickle
import sys
import threading

import pytest

from patchcore import PromptPair, run_sweep
from patchcore.backends.nnsight import NNsightBackend
from patchcore.backends.simulation import ServerUnpickler, installed_on_server
from tiny import tiny_model

PAIR = PromptPair(clean="Mary and John met, and John thanked",
                  corrupted="Mary and John met, and Mary thanked", answer=" Mary", wrong=" John")


class LocalThing:  # defined in a test file: not installed, so not on an NDIF server
    pass


def _watch_modules(work) -> list[str]:
    """Run work() on a thread; meanwhile, from this thread, note every moment a module that was
    imported before (patchcore, this test module, pytest) or a sys.path entry went missing."""
    watched = ["patchcore", "patchcore.engine", __name__, "pytest"]
    paths = list(sys.path)
    missing: list[str] = []
    err: list[BaseException] = []

    def run():
        try:
            work()
        except BaseException as exc:  # noqa: BLE001
            err.append(exc)
    t = threading.Thread(target=run)
    t.start()
    while t.is_alive():
        missing += [m for m in watched if m not in sys.modules]
        missing += [p for p in paths if p not in sys.path]
    t.join()
    assert not err, err
    return missing


def test_simulated_runs_never_hide_modules_from_other_threads(single_thread):
    m = tiny_model("gpt2")
    backend = NNsightBackend(m, remote="local", rows_per_trace=16)

    def sweeps():
        for _ in range(3):
            run_sweep(m, PAIR, "layer_pos", "denoise", backend=backend)
    assert _watch_modules(sweeps) == []
    assert backend.requests >= 6  # the requests really went through the simulated server path


def test_the_server_check_still_refuses_local_code():
    assert installed_on_server("torch.nn") and installed_on_server("collections")
    assert installed_on_server("numpy")            # installed in site-packages
    assert not installed_on_server(__name__)       # a test file: the user's own code
    import patchcore  # `make setup` installs it editable: it lives in the checkout, not site-packages
    assert installed_on_server("patchcore.engine") == ("site-packages" in patchcore.__file__)
    blob = pickle.dumps(LocalThing())
    import io
    with pytest.raises(ModuleNotFoundError, match=__name__):
        ServerUnpickler(io.BytesIO(blob), {}).load()
    assert isinstance(ServerUnpickler(io.BytesIO(pickle.dumps({"a": [1]})), {}).load(), dict)
