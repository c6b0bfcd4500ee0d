"""What runs the model for the engine: one explicit seam (base.Backend) and its implementations.

- hooks.HookBackend   local model, plain PyTorch hooks (the default, with exact shortcuts)
- nnsight.NNsightBackend  the same interventions through nnsight: locally, as NDIF's dry run,
  or on NDIF (ndif.py: keys, errors, job status; simulation.py: the thread-safe dry run)

No backend imports the engine; the engine types against base.Backend.
"""
from .base import Backend, Batch, Writes

__all__ = ["Backend", "Batch", "Writes"]
