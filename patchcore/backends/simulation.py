"""NDIF's dry run, safe to use while other threads import modules.

nnsight's own `LocalSimulationBackend` checks that a request can be deserialised
without the user's local code by *removing* every non-installed module from
`sys.modules` (and local folders from `sys.path`) for the duration of the
deserialisation. That is process-wide: any other thread that imports a module in
that window re-executes it from scratch. In a Streamlit server (one thread per
browser session) or under Streamlit's AppTest, a page that runs `import streamlit`
at that moment re-runs streamlit's `__init__` and fails with "DeltaGeneratorSingleton
instance already exists!" – the fault behind the random AppTest failures.

Here the same check is made without touching global state: the unpickler refuses
any global whose module would be missing on the server (neither the standard
library, nor one of the packages NDIF has installed, nor installed in
site-packages), exactly where nnsight's version would fail to import it.
"""
from __future__ import annotations

import importlib.util
import linecache
import sys

from nnsight.intervention.backends.local import _SERVER_MODULES, LocalSimulationBackend
from nnsight.intervention.serialization import CustomCloudUnpickler


def installed_on_server(module: str) -> bool:
    """Whether NDIF's server could import `module`: stdlib, a server package, or installed."""
    root = module.split(".")[0]
    if root in _SERVER_MODULES or root in sys.stdlib_module_names or "nnsight" in module:
        return True
    loaded = sys.modules.get(root)
    origin = getattr(loaded, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(root)
        except (ImportError, ValueError):
            return False
        origin = getattr(spec, "origin", None) if spec is not None else None
    # nnsight's rule: what lives outside site-packages / lib/python is the user's own code
    return bool(origin) and ("site-packages" in origin or "lib/python" in origin)


class ServerUnpickler(CustomCloudUnpickler):
    """Refuses globals from modules the server would not have (as a server import would)."""

    def find_class(self, module, name):
        if not installed_on_server(module):
            raise ModuleNotFoundError(f"No module named '{module}' on the NDIF server: code from it "
                                      f"must be shipped by value", name=module)
        return super().find_class(module, name)


class SimulatedNDIF(LocalSimulationBackend):
    """nnsight's remote="local" dry run (serialise, deserialise as the server would, run here),
    without hiding modules from other threads."""

    def __call__(self, tracer) -> None:
        from nnsight.ndif import pull_env
        from nnsight.schema.request import RequestModel

        pull_env()
        blob = RequestModel.serialize(tracer, compress=False)
        persistent = self.model._remoteable_persistent_objects()
        # deserialize() registers the block's source in linecache under the user's file name
        filename = tracer.info.frame.f_code.co_filename
        saved_line = linecache.cache.get(filename)
        try:
            restored = RequestModel.deserialize(blob, persistent, compress=False,
                                                unpickler=ServerUnpickler)
        finally:
            if saved_line is not None:
                linecache.cache[filename] = saved_line
            else:
                linecache.cache.pop(filename, None)
        tracer.info.code = restored.info.code
        tracer.execute(tracer.info.code)
