"""Reward-hacking signals for a PPO run: boilerplate spreading through a batch, length drift, KL jumps.

Cheap text and number checks logged next to the reward each step. None of them stops a run; they
tell you where to look when the reward climbs faster than the responses improve.
"""

from __future__ import annotations

from collections import Counter

BOILERPLATE_N = 5  # words in an n-gram
BOILERPLATE_MIN_SHARE = 0.5  # an n-gram in at least this share of the batch's responses is boilerplate
KL_JUMP_WINDOW = 3  # a step's KL compared with the largest KL of this many steps before it:
KL_JUMP_FACTOR = 3.0  # above this multiple of it ...
KL_JUMP_MIN = 2.0  # ... and at least this many nats above it is a jump


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def boilerplate_share(responses: list[str], n: int = BOILERPLATE_N,
                      min_share: float = BOILERPLATE_MIN_SHARE) -> float:
    """Share of responses containing a word n-gram that recurs in at least ``min_share`` of the batch.

    A policy that found one phrase the reward model likes repeats it everywhere ("I'm sorry, but I
    cannot ..."): this share climbs towards 1. Needs at least two responses to say anything.
    """
    if len(responses) < 2:
        return 0.0
    grams = [_ngrams(r, n) for r in responses]
    counts = Counter(g for gs in grams for g in gs)
    needed = max(2, min_share * len(responses))
    common = {g for g, c in counts.items() if c >= needed}
    return sum(1 for gs in grams if gs & common) / len(responses)


def length_drift(mean_length: float, first_mean_length: float) -> float:
    """Relative change of the mean response length since the first step (0.5 = 50% longer)."""
    return mean_length / first_mean_length - 1.0 if first_mean_length > 0 else 0.0


def kl_jump(kl: float, previous: list[float], window: int = KL_JUMP_WINDOW, factor: float = KL_JUMP_FACTOR,
            min_jump: float = KL_JUMP_MIN) -> bool:
    """Whether this step's KL jumped well above the largest KL of the ``window`` steps before it.

    Needs ``window`` earlier steps: KL climbs from 0 at the start of every run, which is no jump.
    """
    if len(previous) < window:
        return False
    recent = max(previous[-window:])
    return kl > factor * max(recent, 0.0) and kl - recent > min_jump
