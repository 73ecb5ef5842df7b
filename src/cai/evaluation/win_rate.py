"""Length-controlled win rate (the RLAIF paper's appendix; AlpacaEval's length-controlled win rate).

A judge that likes longer answers makes a model that writes more look better. Fit a logistic regression of
the outcome on the length difference, P(win) = sigmoid(a + c * d) with d the candidate's length minus
the baseline's, in units of ``scale`` tokens; the length-controlled win rate is sigmoid(a), the win rate
the model would have at equal length. Soft outcomes (a judge's probability) are fitted as they are.

Hand-written (Newton's method on two parameters, with a small ridge term so a separable sample stays
finite): scikit-learn is not a dependency and its logistic regression does not take soft labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def logistic_fit(d: Sequence[float], y: Sequence[float], *, ridge: float = 1e-4, iters: int = 100
                 ) -> tuple[float, float]:
    """(a, c) maximising sum y log s(a + c d) + (1 - y) log(1 - s(a + c d)) - ridge/2 (a^2 + c^2)."""
    import numpy as np

    x = np.column_stack([np.ones(len(d)), np.asarray(d, dtype=float)])
    t = np.asarray(y, dtype=float)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (t - p) - ridge * w
        hess = -(x.T * (p * (1 - p))) @ x - ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(w[0]), float(w[1])


def length_controlled(outcomes: Sequence[float], length_diffs: Sequence[float], *, scale: float = 100.0
                      ) -> dict[str, float]:
    """Raw win rate, length-controlled win rate, and the fitted length coefficient (per ``scale`` tokens)."""
    if len(outcomes) != len(length_diffs) or not outcomes:
        raise ValueError("need one length difference per outcome, and at least one outcome")
    a, c = logistic_fit([x / scale for x in length_diffs], outcomes)
    return {"win_rate": sum(outcomes) / len(outcomes), "lc_win_rate": 1 / (1 + math.exp(-a)),
            "length_coef": c, "n": len(outcomes)}
