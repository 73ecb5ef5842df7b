"""The cost ledger: what each stage spent, per stage and per model.

For every stage the pipeline records wall time and peak memory (``measure``), and every model it loads
goes through a ``CountingBackend`` that adds up the prompt and generated tokens of each ``generate`` call
(the judge's scoring calls are counted as prompt tokens where the backend reports them). Money is
computed where a price per million tokens is configured for the model (``prices`` in the recipe).

Peak memory is the process's resident-set high-water mark (``VmHWM``), reset at the start of each stage
through ``/proc/self/clear_refs`` (Linux); elsewhere it falls back to the process-lifetime peak
(``ru_maxrss``), marked ``peak_is_lifetime``. On a GPU the peak allocated device memory is added.
"""

from __future__ import annotations

import re
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


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            found = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_peak() -> bool:
    """Reset the resident-set high-water mark; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _lifetime_peak_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


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
    """Measure a stage: on exit ``cost.entry`` holds wall seconds, peak memory and tokens per model."""
    cost = StageCost()
    reset = _reset_peak()
    _gpu_peak_mib(reset=True)
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        hwm = _status_kib("VmHWM") if reset else None
        cost.entry = {"wall_seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_mib": round(hwm / 1024 if hwm is not None else _lifetime_peak_mib(), 1),
                      "peak_is_lifetime": hwm is None,
                      "models": {k: v.as_dict() for k, v in cost.meter.models.items()}}
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
                "peak_gpu_mib": cost.get("peak_gpu_mib")}
        models = cost.get("models") or {}
        if not models:
            rows.append({**base, "model": "-", "prompt_tokens": 0, "generated_tokens": 0, "money": None})
        for model, tokens in models.items():
            rows.append({**base, "model": model, "prompt_tokens": tokens.get("prompt_tokens", 0),
                         "generated_tokens": tokens.get("generated_tokens", 0),
                         "money": price(tokens, prices, model)})
    return rows


LEDGER_HEADER = ("stage", "model", "prompt tokens", "generated tokens", "wall s", "peak RSS MiB", "money")


def ledger_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The rows as table cells (``LEDGER_HEADER``), with a total line."""
    cells = [[r["stage"], r["model"], r["prompt_tokens"], r["generated_tokens"], r["wall_seconds"],
              r["peak_rss_mib"], None if r["money"] is None else round(r["money"], 6)] for r in rows]
    if rows:
        stages = {r["stage"]: r["wall_seconds"] or 0 for r in rows}  # a stage's time once, not per model
        money = [r["money"] for r in rows if r["money"] is not None]
        cells.append(["total", "", sum(r["prompt_tokens"] for r in rows), sum(r["generated_tokens"] for r in rows),
                      round(sum(stages.values()), 1), max((r["peak_rss_mib"] or 0) for r in rows),
                      round(sum(money), 6) if money else None])
    return cells
