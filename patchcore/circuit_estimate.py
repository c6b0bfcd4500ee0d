"""How long circuit discovery (circuits.run_circuit) will take, before it runs.

The same unit as estimate.py (the model's calibrated cost per token-layer) times the forwards a
run makes per pair: two capture forwards (scores, then curve and checks), `steps` gradient rows
(forward and backward) from the first differing token on, one row per exact check, and one row
per point of the faithfulness curve (a circuit forward, which also keeps every sender's output).
GRAD and CURVE are those rows' cost relative to a plain forward row. What the runs on this
machine then take corrects later estimates (estimate.learn, kind "circuit"), as for sweeps.
"""
from __future__ import annotations

from .backends.hooks import HookBackend
from .circuit_faith import log_grid
from .circuit_graph import build_graph
from .estimate import calibrate, correction, learn
from .planner import forward_cost

GRAD = 3.5    # a gradient row: forward, backward, the receivers' gradients kept
CURVE = 2.0   # a circuit-forward row: every sender's output kept and subtracted
KIND = "circuit"


def circuit_units(model, prepared: list, method: str, steps: int, check_top: int, curve_points: int,
                  edges: int, ablation: str = "corrupted") -> float:
    """Cost units (estimate.py's) of run_circuit on these prepared pairs."""
    c = model.components
    L, cm = c.n_layers, HookBackend(model).cost
    n_edges = len(build_graph(model).edges()[0])
    n_points = len(log_grid(n_edges, curve_points, [min(int(edges), n_edges)]))
    steps = int(steps) if method == "eap-ig" else 1
    check = min(int(check_top), n_edges)
    units = 0.0
    for p in prepared:
        T = p.n_tokens
        p0 = p.first_diff if ablation == "corrupted" else 0
        units += 2 * forward_cost(2, T, 0, L, cm, False)
        if p0:
            units += 2 * forward_cost(1, p0, 0, L, cm, False)
        units += GRAD * forward_cost(steps, T - p0, 0, L, cm, False)
        if check:
            units += forward_cost(check, T, 0, L, cm, False)
        units += CURVE * forward_cost(n_points + 1, T - p0, 0, L, cm, False)
    return units


def estimate_circuit_seconds(model, prepared: list, method: str = "eap-ig", *, steps: int = 5,
                             check_top: int = 0, curve_points: int = 16, edges: int = 100,
                             ablation: str = "corrupted") -> tuple[float, float]:
    """(seconds, raw seconds before this machine's correction) for run_circuit with these settings.

    The first call on a model times two small forwards (estimate.calibrate, then kept on disk);
    while another run holds the model it guesses from the model's size instead. Pass the raw
    figure to learn_circuit after the run."""
    cal = calibrate(model, wait=False)
    raw = cal.unit_s * circuit_units(model, prepared, method, steps, check_top, curve_points, edges, ablation)
    return correction(model, KIND) * raw, raw


def learn_circuit(model, raw_estimate: float | None, actual: float) -> None:
    """After a run: move this machine's correction for circuit runs towards actual / estimated."""
    if raw_estimate:
        learn(model, raw_estimate * correction(model, KIND), actual, KIND)
