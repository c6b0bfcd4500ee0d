"""patchcore: activation patching engine (no streamlit here; the dashboard sits on top)."""
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
