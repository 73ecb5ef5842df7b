"""The cost ledger: what each stage spent, per stage and per model.

For every stage the pipeline records wall time and peak memory (``measure``), and every model it loads
goes through a ``CountingBackend`` that adds up the prompt and generated tokens of each ``generate`` call
(the judge's scoring calls are counted as prompt tokens where the backend reports them). Money is
computed where a price per million tokens is configured for the model (``prices`` in the recipe).

Peak memory is the highest resident set seen during the stage (``cai.memory.PeakSampler``: sampled, and the
kernel's high-water mark where it rose during the stage; the mark itself is never reset, so ``/usr/bin/time``
still reads the whole run's peak). The memory guard's estimate for the stage, when it made one, is recorded
beside it (``estimate_mib``), with the kernel's share of the stage's CPU time and its minor page faults. On a
GPU the peak allocated device memory is added.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelTokens:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    calls: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "calls": self.calls, "seconds": round(self.seconds, 2)}


@dataclass
class Meter:
    """Token counts per model spec for one stage."""

    models: dict[str, ModelTokens] = field(default_factory=dict)

    def add(self, model: str, prompt_tokens: int, generated_tokens: int, seconds: float) -> None:
        m = self.models.setdefault(model, ModelTokens())
        m.prompt_tokens += prompt_tokens
        m.generated_tokens += generated_tokens
        m.calls += 1
        m.seconds += seconds


class CountingBackend:
    """A backend that counts the tokens of its ``generate`` calls into a ``Meter``; everything else is the
    wrapped backend's (attributes are forwarded)."""

    def __init__(self, backend, meter: Meter, spec: str):
        self._backend, self._meter, self._spec = backend, meter, spec

    def generate(self, conversations, params, **kwargs):
        t0 = time.perf_counter()
        out = self._backend.generate(conversations, params, **kwargs)
        self._meter.add(self._spec, sum(c.prompt_tokens for c in out), sum(c.completion_tokens for c in out),
                        time.perf_counter() - t0)
        return out

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


def _gpu_peak_mib(reset: bool = False) -> float | None:
    torch = sys.modules.get("torch")  # only when the stage loaded torch; never imported for this
    if torch is None or not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_allocated() / 2**20


@dataclass
class StageCost:
    meter: Meter = field(default_factory=Meter)
    entry: dict[str, Any] = field(default_factory=dict)


@contextmanager
def measure() -> Iterator[StageCost]:
    """Measure a stage: on exit ``cost.entry`` holds wall seconds, peak memory, CPU and tokens per model; a
    stage may put the guard's estimate into ``cost.entry`` while it runs (kept)."""
    from cai import guard
    from cai.memory import MIB, PeakSampler, cpu_times, kernel_share

    cost = StageCost()
    guard.recorded.clear()
    _gpu_peak_mib(reset=True)
    t0, cpu0 = time.perf_counter(), cpu_times()
    sampler = PeakSampler()
    try:
        with sampler:
            yield cost
    finally:
        cpu1 = cpu_times()
        share = kernel_share(cpu0, cpu1)
        cost.entry.update({"wall_seconds": round(time.perf_counter() - t0, 2),
                           "peak_rss_mib": round(sampler.peak / MIB, 1),
                           "kernel_cpu_share": None if share is None else round(share, 3),
                           "minor_faults": int(cpu1["minor_faults"] - cpu0["minor_faults"]),
                           "models": {k: v.as_dict() for k, v in cost.meter.models.items()}})
        if guard.recorded:
            largest = max(guard.recorded, key=lambda e: e.total)
            cost.entry["estimate_mib"] = round(largest.total / MIB, 1)
            cost.entry["estimate_parts_mib"] = {k: round(v / MIB, 1) for k, v in largest.parts.items()}
            if largest.micro_batch:
                cost.entry["micro_batch"] = largest.micro_batch
            guard.recorded.clear()
        gpu = _gpu_peak_mib()
        if gpu is not None:
            cost.entry["peak_gpu_mib"] = round(gpu, 1)


def price(tokens: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]], model: str) -> float | None:
    """Money for one model's tokens: ``prices[model]`` gives ``prompt`` and ``generated`` per million tokens."""
    p = prices.get(model)
    if not p:
        return None
    return (tokens.get("prompt_tokens", 0) * p.get("prompt", 0.0)
            + tokens.get("generated_tokens", 0) * p.get("generated", 0.0)) / 1e6


def ledger_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (stage, model) of a run's manifest, plus a stage row for stages that called no model."""
    prices = manifest.get("prices") or {}
    rows = []
    for stage, entry in manifest.get("stages", {}).items():
        cost = entry.get("cost")
        if not cost:
            continue
        base = {"stage": stage, "wall_seconds": cost.get("wall_seconds"), "peak_rss_mib": cost.get("peak_rss_mib"),
                "estimate_mib": cost.get("estimate_mib"), "peak_gpu_mib": cost.get("peak_gpu_mib")}
        models = cost.get("models") or {}
        if not models:
            rows.append({**base, "model": "-", "prompt_tokens": 0, "generated_tokens": 0, "money": None})
        for model, tokens in models.items():
            rows.append({**base, "model": model, "prompt_tokens": tokens.get("prompt_tokens", 0),
                         "generated_tokens": tokens.get("generated_tokens", 0),
                         "money": price(tokens, prices, model)})
    return rows


LEDGER_HEADER = ("stage", "model", "prompt tokens", "generated tokens", "wall s", "peak RSS MiB", "guard estimate MiB",
                 "money")


def ledger_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The rows as table cells (``LEDGER_HEADER``), with a total line."""
    cells = [[r["stage"], r["model"], r["prompt_tokens"], r["generated_tokens"], r["wall_seconds"],
              r["peak_rss_mib"], r.get("estimate_mib"), None if r["money"] is None else round(r["money"], 6)]
             for r in rows]
    if rows:
        stages = {r["stage"]: r["wall_seconds"] or 0 for r in rows}  # a stage's time once, not per model
        money = [r["money"] for r in rows if r["money"] is not None]
        cells.append(["total", "", sum(r["prompt_tokens"] for r in rows), sum(r["generated_tokens"] for r in rows),
                      round(sum(stages.values()), 1), max((r["peak_rss_mib"] or 0) for r in rows), None,
                      round(sum(money), 6) if money else None])
    return cells
