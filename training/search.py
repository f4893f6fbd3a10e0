"""Hyper-parameter searches that hit a target FLOP reduction (pure Python; the trainer is a callable).

* :func:`algorithm1`: Algorithm 1 of the polarization paper (seed 004), searching the regularizer's
  ``(t, λ)`` so that the FLOP reduction ``F`` after pruning lands in ``(F* − δ, F* + δ)``: from
  ``(t, λ) = (1.2, 1e-4)``, a **coarse search** on ``λ`` (halve when ``F − F* ≥ 2δ``, else double) until
  ``|F − F*| < 2δ``, then a **fine search** on ``t`` (``t − 0.1`` when ``F − F* ≥ δ``, else ``t + 0.1``) until
  ``|F − F*| < δ``. Each call of ``trial(t, lam)`` is one short training and returns ``F``.
* :func:`search_gate_target`: the same kind of search for CGNet's gating target ``T``: a coarse search in
  steps of ``coarse_step`` until ``|F − F*| < 2δ``, then a fine one in steps of ``fine_step`` until
  ``|F − F*| < δ``, where ``F`` grows with ``T`` (a higher target means fewer gates on). A step that
  crosses ``F*`` in the opposite direction of the previous one halves the step, so the search cannot
  oscillate forever.

Both stop after ``max_trials`` calls; the result then reports ``converged = False`` and the trial whose ``F``
came closest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SearchResult", "Trial", "algorithm1", "search_gate_target"]


@dataclass
class Trial:
    params: dict[str, float]
    flop_reduction: float
    stage: str


@dataclass
class SearchResult:
    """The chosen parameters, their FLOP reduction, whether ``|F − F*| < δ`` was reached, every trial."""

    params: dict[str, float]
    flop_reduction: float
    converged: bool
    trials: list[Trial] = field(default_factory=list)

    @property
    def n_trials(self) -> int:
        return len(self.trials)

    def to_dict(self) -> dict:
        return {
            "params": dict(self.params),
            "flop_reduction": self.flop_reduction,
            "converged": self.converged,
            "trials": [
                {"params": dict(t.params), "flop_reduction": t.flop_reduction, "stage": t.stage}
                for t in self.trials
            ],
        }


class _Budget(Exception):
    pass


def _check(target: float, delta: float, max_trials: int) -> None:
    if not delta > 0:
        raise ValueError(f"delta = {delta}: must be positive")
    if max_trials < 1:
        raise ValueError(f"max_trials = {max_trials}: must be at least 1")
    if not target == target:  # NaN
        raise ValueError("target is NaN")


def algorithm1(
    trial: Callable[[float, float], float],
    target: float,
    delta: float = 0.05,
    t0: float = 1.2,
    lam0: float = 1e-4,
    t_step: float = 0.1,
    max_trials: int = 20,
) -> SearchResult:
    """Algorithm 1 (module docstring): returns the ``(t, lam)`` whose trial gave ``|F − F*| < δ``."""
    _check(target, delta, max_trials)
    trials: list[Trial] = []

    def run(t: float, lam: float, stage: str) -> float:
        if len(trials) >= max_trials:
            raise _Budget
        f = float(trial(t, lam))
        trials.append(Trial({"t": t, "lam": lam}, f, stage))
        return f

    t, lam = float(t0), float(lam0)
    try:
        f = run(t, lam, "init")
        while abs(f - target) >= 2 * delta:  # coarse search on lambda
            lam = lam / 2 if f - target >= 2 * delta else lam * 2
            f = run(t, lam, "coarse")
        while abs(f - target) >= delta:  # fine search on t
            t = round(t - t_step, 10) if f - target >= delta else round(t + t_step, 10)
            f = run(t, lam, "fine")
    except _Budget:
        best = min(trials, key=lambda tr: abs(tr.flop_reduction - target))
        return SearchResult(dict(best.params), best.flop_reduction, False, trials)
    return SearchResult({"t": t, "lam": lam}, f, True, trials)


def search_gate_target(
    trial: Callable[[float], float],
    target: float,
    delta: float = 0.05,
    t0: float = 1.0,
    coarse_step: float = 0.5,
    fine_step: float = 0.1,
    max_trials: int = 12,
) -> SearchResult:
    """Search the gating target ``T`` (module docstring): returns ``{"T": ...}`` with ``|F − F*| < δ``."""
    _check(target, delta, max_trials)
    trials: list[Trial] = []

    def run(value: float, stage: str) -> float:
        if len(trials) >= max_trials:
            raise _Budget
        f = float(trial(value))
        trials.append(Trial({"T": value}, f, stage))
        return f

    value = float(t0)
    try:
        f = run(value, "init")
        for tol, step, stage in ((2 * delta, coarse_step, "coarse"), (delta, fine_step, "fine")):
            last_dir = 0
            while abs(f - target) >= tol:
                direction = -1 if f - target >= tol else 1  # F too high: lower T
                if last_dir and direction != last_dir:
                    step /= 2
                last_dir = direction
                value = round(value + direction * step, 10)
                f = run(value, stage)
    except _Budget:
        best = min(trials, key=lambda tr: abs(tr.flop_reduction - target))
        return SearchResult(dict(best.params), best.flop_reduction, False, trials)
    return SearchResult({"T": value}, f, True, trials)
