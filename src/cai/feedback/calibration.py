"""Corrections for a small judge's biases, as pure functions over log-odds.

A judge's reading of a pair is a log-odds ``l = log P(A) - log P(B)``. Two biases of small judges are
removed here without any human label:

* **slot prior**: a judge prefers one slot regardless of content. Its size is read from a
  *content-free* question (both slots hold the same placeholder, so any preference is pure bias;
  Zhao et al. 2021, "Calibrate before use") or, over a batch, from the swapped orders (the mean of
  ``(l_order1 + l_order2) / 2`` is the slot preference, the content part cancelling). It is subtracted
  from each reading, so the two orders can agree with each other again.
* **length preference**: small judges favour the longer answer. Over a batch, the judge's score is
  regressed on the log length ratio of the two responses (least squares through the origin) and that
  part is taken out, so what remains is the judge's preference at equal length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EPS = 1e-6


def logit(p: float) -> float:
    """log(p / (1 - p)), with p kept inside [EPS, 1 - EPS]."""
    p = min(max(p, EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def swap_slot_prior(first: Sequence[float], second: Sequence[float]) -> float:
    """The slot prior in log-odds, from readings of the same pairs in both orders.

    first[i] = logit P(A) with response a in slot (A); second[i] = logit P(A) with b in slot (A).
    If l = content + prior, the content parts have opposite signs in the two orders and cancel.
    """
    if not first:
        return 0.0
    return sum(f + s for f, s in zip(first, second, strict=True)) / (2 * len(first))


def length_log_ratio(len_a: int, len_b: int) -> float:
    """log((len_a + 1) / (len_b + 1)): positive when a is longer."""
    return math.log((len_a + 1) / (len_b + 1))


def length_slope(scores: Sequence[float], deltas: Sequence[float]) -> float:
    """Least-squares slope of ``scores`` on ``deltas`` through the origin (0 if all deltas are 0).

    scores[i]: the judge's log-odds for response a over b; deltas[i]: ``length_log_ratio`` of the pair.
    Through the origin, so a pair of equal length keeps its score, and swapping a and b flips both.
    """
    den = sum(d * d for d in deltas)
    if den == 0:
        return 0.0
    return sum(s * d for s, d in zip(scores, deltas, strict=True)) / den
