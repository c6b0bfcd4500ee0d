"""patchcore: activation patching engine (no streamlit here; the dashboard sits on top)."""
import os

# torch's OpenMP threads spin while they wait for work; on a machine whose cores are busy with
# something else (a 2-core laptop serving the dashboard, a shared CI runner) that spinning made
# sweeps 5-10x slower. Waiting threads sleep instead (must be set before torch is imported;
# an explicit OMP_WAIT_POLICY wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .engine import Baseline, plan, run_baseline, run_sweep
from .errors import Cancelled, ModelLoadError, PairError, PatchError, SweepError, UnsupportedArchitecture
from .metrics import METRICS
from .models import EMBEDDED, LoadedModel, ModelSpec, load_model, wrap_model
from .prompts import DEFAULT_PAIR, PromptPair, check_pair, prepare_pair
from .results import PatchResult
from .sweeps import DIRECTIONS, SWEEPS

__all__ = [
    "Baseline", "plan", "run_baseline", "run_sweep", "Cancelled", "ModelLoadError", "PairError",
    "PatchError", "SweepError", "UnsupportedArchitecture", "METRICS", "EMBEDDED", "LoadedModel",
    "ModelSpec", "load_model", "wrap_model", "DEFAULT_PAIR", "PromptPair", "check_pair",
    "prepare_pair", "PatchResult", "DIRECTIONS", "SWEEPS",
]
