"""Bradley-Terry strengths and Elo ratings from pairwise outcomes, with bootstrap confidence intervals.

An outcome is (model i, model j, y) with y in [0, 1] the probability (or share) that i beat j; soft outcomes
from a judge's both-order reading are used as they are. The Bradley-Terry model says
P(i beats j) = sigmoid(b_i - b_j); its maximum-likelihood strengths are found by Newton's method on the
(concave) log-likelihood with a small ridge term that keeps them finite when a model wins or loses every
comparison. Elo is the same scale, 400 / ln(10) points per unit of strength, anchored so the ``anchor``
model sits at ``BASE_ELO``.

Hand-written (numpy, a few lines) rather than a library: the usual ones (choix, scipy's optimisers) are
not dependencies of this project and do not take soft outcomes directly.

Bootstrap: the outcomes are grouped by prompt and whole prompts are resampled with replacement (a
prompt's comparisons are not independent of each other), the ratings refitted, and the percentile interval
of each rating taken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ELO_PER_UNIT = 400 / math.log(10)
BASE_ELO = 1000.0


def fit_strengths(n_models: int, outcomes: Sequence[tuple[int, int, float]], *, ridge: float = 1e-3,
                  iters: int = 100) -> list[float]:
    """Bradley-Terry strengths (mean zero) from (i, j, y) outcomes, y = P(i beats j)."""
    import numpy as np

    b = np.zeros(n_models)
    if not outcomes:
        return b.tolist()
    pairs: dict[tuple[int, int], list[float]] = {}  # the likelihood only needs each pair's wins and count
    for i_, j_, y_ in outcomes:
        acc = pairs.setdefault((i_, j_), [0.0, 0.0])
        acc[0] += y_
        acc[1] += 1
    i = np.array([k[0] for k in pairs])
    j = np.array([k[1] for k in pairs])
    wins = np.array([v[0] for v in pairs.values()])
    count = np.array([v[1] for v in pairs.values()])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(b[i] - b[j])))
        g = wins - count * p  # d loglik / d (b_i - b_j)
        grad = np.bincount(i, g, n_models) - np.bincount(j, g, n_models) - ridge * b
        w = count * p * (1 - p)
        hess = np.zeros((n_models, n_models))
        np.add.at(hess, (i, i), -w)
        np.add.at(hess, (j, j), -w)
        np.add.at(hess, (i, j), w)
        np.add.at(hess, (j, i), w)
        hess -= ridge * np.eye(n_models)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]  # least norm: strengths are defined up to a shift
        b -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return (b - b.mean()).tolist()


def elo(strengths: Sequence[float], anchor: int = 0) -> list[float]:
    """Elo ratings from strengths, the ``anchor`` model at ``BASE_ELO``."""
    return [BASE_ELO + ELO_PER_UNIT * (s - strengths[anchor]) for s in strengths]


def bootstrap_elo(n_models: int, groups: Sequence[Sequence[tuple[int, int, float]]], *, anchor: int = 0,
                  samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Elo of each model on all outcomes, and its percentile interval over ``samples`` resamplings of the
    groups (one group per prompt). Returns {"elo", "low", "high"}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    flat = [o for g in groups for o in g]
    point = elo(fit_strengths(n_models, flat), anchor)
    draws = []
    for _ in range(samples):
        picked = rng.integers(0, len(groups), len(groups))
        draws.append(elo(fit_strengths(n_models, [o for k in picked for o in groups[k]]), anchor))
    arr = np.array(draws)
    tail = (1 - level) / 2 * 100
    return {"elo": point, "low": np.percentile(arr, tail, axis=0).tolist(),
            "high": np.percentile(arr, 100 - tail, axis=0).tolist()}


def mean_interval(values: Sequence[float], *, samples: int = 1000, level: float = 0.95, seed: int = 0
                  ) -> tuple[float, float, float]:
    """(mean, low, high): a percentile bootstrap interval of the mean of ``values``."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (samples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
