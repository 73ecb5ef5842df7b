"""The lean engine proves itself on the machine at hand before its numbers are used.

Why: the engine's speed comes from oneDNN kernels (bf16 matmuls, prepacked weights, fused post-ops) whose
behaviour depends on the CPU. On Intel AMX, a bf16 matmul whose inner size is not a multiple of the tile
spreads a NaN of one operand row into other rows; the engine once fed such a matmul uninitialised memory
and gave NaN labels there while every test passed on AMD. So the first time the engine runs for a given
CPU, torch, architecture, dtype and device, it encodes a small fixed batch (mixed lengths, two rows that
share a prefix, a short row padded on the attention grid, a prefix encoded in one call and its suffix in
the next, then decode steps) and compares its log-probs with transformers' fp32 forward of the same
weights. The verdict is cached (``$CAI_CACHE/engine-checks``); a path that fails is never used: the
backend falls back to the next candidate (unpacked weights, then fp32, then transformers itself).

The verdict is keyed by architecture, not by checkpoint: the failures this guards against come from
kernels and shapes; a checkpoint's own overflow is caught where numbers leave the backend (``finite``
checks in scoring and sampling).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_VERSION = 1  # bump when the engine's arithmetic or the check batch changes: old verdicts no longer hold
TOP_K = 50  # deviations are measured on the reference's most likely tokens (the tail of a bf16 softmax is noise)
DECODE_STEPS = 3
# Largest |log p_engine - log p_fp32| over the reference's top-50 tokens that a path may show. bf16 keeps 8
# mantissa bits: transformers' own bf16 forward of SmolLM2-135M is ~0.55 from fp32 on this batch; a broken
# kernel is off by whole units, or NaN.
BOUNDS = {"float32": 0.01, "bfloat16": 1.0, "float16": 1.0}
ISA_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512_fp16", "avx512f", "avx2", "fma")

# Conversations of the check batch: different lengths, the first two sharing their opening turns.
_SHARED = [{"role": "system", "content": "You are a careful assistant. Answer briefly and truthfully."},
           {"role": "user", "content": "I am planning a small vegetable garden on a sunny balcony."}]
CHECK_CHATS = [
    [*_SHARED, {"role": "user", "content": "Which vegetables grow well in pots, and how often should I water them?"}],
    [*_SHARED, {"role": "user", "content": "Is it too late to plant tomatoes in August?"}],
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Explain in two sentences why the sky is blue, then give one everyday example "
                                 "of the same effect that a child could observe at home."}],
]


@dataclass
class Verdict:
    """The outcome of one engine path's check on this machine."""

    trusted: bool
    path: str  # what was checked: "engine (bf16, prepacked)", ...
    dtype: str
    device: str
    max_deviation: float  # max |log-prob difference| to fp32 over the top-50 tokens; inf when not finite
    bound: float
    finite: bool
    reason: str = ""
    cached: bool = False

    def line(self) -> str:
        dev = "non-finite" if not self.finite else f"{self.max_deviation:.3f}"
        return (f"{self.path}: max log-prob deviation from fp32 {dev} (bound {self.bound}) -> "
                f"{'trusted' if self.trusted else 'NOT trusted'}{f' ({self.reason})' if self.reason else ''}")


def cpu_description() -> dict:
    """The CPU's model name and the ISA flags that decide which kernels oneDNN picks."""
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("unknown", "x86_64", ""):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": name, "isa_flags": [f for f in ISA_FLAGS if f in flags]}


# config.json keys that say nothing about the engine's arithmetic: a fine-tuned checkpoint (saved by a trainer with
# use_cache false) reuses its base model's verdict instead of loading an fp32 reference to check again
NOT_ARCHITECTURE = ("_name", "transformers_version", "torch_dtype", "dtype", "architectures", "use_cache",
                    "bos_token_id", "eos_token_id", "pad_token_id")


def verdict_key(cfg: dict, *, dtype, device: str, path: str) -> str:
    """Hash of everything the engine's numbers depend on: CPU, torch, oneDNN settings, the engine's code,
    architecture, dtype, device and path."""
    import torch

    arch = {k: v for k, v in sorted(cfg.items()) if not k.startswith(NOT_ARCHITECTURE)}
    from cai.backends import engine

    code = hashlib.sha256(Path(engine.__file__).read_bytes()).hexdigest()[:16]  # a changed engine is checked again
    parts = {"cpu": cpu_description(), "torch": torch.__version__, "version": CHECK_VERSION, "engine": code,
             "isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA", ""), "arch": arch, "dtype": str(dtype),
             "device": device if device == "cpu" else _gpu_name(device), "path": path}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _gpu_name(device: str) -> str:
    import torch

    return f"{device}:{torch.cuda.get_device_name(0)}" if device.startswith("cuda") else device


def _verdict_file(key: str) -> Path:
    from cai.models import cache_dir

    return cache_dir() / "engine-checks" / f"{key}.json"


def cached_verdict(key: str) -> Verdict | None:
    try:
        return Verdict(**{**json.loads(_verdict_file(key).read_text()), "cached": True})
    except (OSError, ValueError, TypeError):
        return None


def save_verdict(key: str, verdict: Verdict) -> None:
    from cai.jsonl import write_atomic

    path = _verdict_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({**asdict(verdict), "cached": False}, indent=2))


def check_sequences(encode: Callable) -> list[list[int]]:
    """The check batch as token ids (``encode``: conversation -> ids, the backend's chat rendering)."""
    return [encode(c) for c in CHECK_CHATS]


def engine_logprobs(engine, seqs: list[list[int]], steps: int = DECODE_STEPS) -> list:
    """Log-probs [steps + 1, V] per sequence from the engine at its last ``steps + 1`` positions.

    Each sequence's head (all but its last ``steps`` tokens) is encoded in two prefill calls, the first
    half and then the rest on top of it (as a reused prefix is), on the engine's attention grid with the
    other rows; the last ``steps`` tokens are fed by decode steps. Run twice, so the second pass also goes
    through cache memory handed back by the first."""
    import torch

    out = None
    for _ in range(2):
        heads = [len(s) - steps for s in seqs]
        cache = engine.new_cache(len(seqs), max(map(len, seqs)) + 1, filled=heads)
        dev = engine.device
        cuts = [[0] * len(seqs), [h // 2 for h in heads], heads]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=False):  # a prefix, then the rest on top of it
            tokens = torch.tensor([t for b, s in enumerate(seqs) for t in s[lo[b]:hi[b]]], device=dev)
            where = torch.tensor([b for b in range(len(seqs)) for _ in range(hi[b] - lo[b])], device=dev)
            pos = torch.tensor([q for b in range(len(seqs)) for q in range(lo[b], hi[b])], device=dev)
            logits = engine.prefill(tokens, where, pos, cache)
        steps_logits = [logits]
        for j in range(steps):
            tok = torch.tensor([s[h + j] for s, h in zip(seqs, heads, strict=True)], device=dev)
            pos = torch.tensor([h + j for h in heads], device=dev)
            steps_logits.append(engine.decode(tok, pos, cache))
        del cache
        out = [torch.log_softmax(torch.stack([lg[b] for lg in steps_logits]).float(), -1)
               for b in range(len(seqs))]
    return out


def reference_logprobs(model, seqs: list[list[int]], steps: int = DECODE_STEPS) -> list:
    """The same positions' log-probs from a transformers model's plain forward, one sequence at a time."""
    import torch

    out = []
    with torch.inference_mode():
        for s in seqs:
            ids = torch.tensor([s], device=next(model.parameters()).device)
            logits = model(input_ids=ids).logits[0, len(s) - steps - 1:]
            out.append(torch.log_softmax(logits.float().cpu(), -1))
    return out


def compare(got: list, want: list) -> tuple[bool, float]:
    """(all finite, max |got - want| over each position's top-``TOP_K`` reference tokens)."""
    import torch

    finite, worst = True, 0.0
    for g, w in zip(got, want, strict=True):
        g = g.float().cpu()
        finite &= bool(torch.isfinite(g).all())
        top = w.topk(min(TOP_K, w.shape[-1]), dim=-1).indices
        worst = max(worst, float((g.gather(-1, top) - w.gather(-1, top)).abs().max()))
    return finite, (worst if finite else float("inf"))


def run_check(engine, seqs: list[list[int]], reference: list, *, path: str) -> Verdict:
    """Check one engine against reference log-probs (``reference_logprobs``)."""
    dtype = str(engine.dtype).removeprefix("torch.")
    bound = BOUNDS.get(dtype, 1.0)
    try:
        import torch

        with torch.inference_mode():
            got = engine_logprobs(engine, seqs)
    except RuntimeError as e:  # a kernel the CPU lacks, or an op this torch build does not have
        return Verdict(False, path, dtype, str(engine.device), float("inf"), bound, False, f"error: {e}"[:200])
    return _verdict(path, dtype, str(engine.device), *compare(got, reference))


def _verdict(path: str, dtype: str, device: str, finite: bool, worst: float) -> Verdict:
    bound = BOUNDS.get(dtype, 1.0)
    ok = finite and worst <= bound
    reason = "" if ok else ("NaN or inf in the log-probs" if not finite else "deviation above the bound")
    return Verdict(ok, path, dtype, device, round(worst, 4), bound, finite, reason)


def engine_path_name(engine) -> str:
    dtype = str(engine.dtype).removeprefix("torch.")
    return f"engine ({dtype}{', prepacked' if engine.prepacked else ''}, {engine.device})"


def choose_engine(cfg: dict, candidates: list[Callable], encode: Callable, reference_model: Callable, *,
                  force: bool = False) -> tuple[object | None, list[Verdict]]:
    """The first candidate engine whose check passes (cached verdicts are trusted), or None.

    candidates: zero-argument builders, fastest first; encode: conversation -> token ids;
    reference_model: () -> an fp32 transformers model of the same weights (built only when a verdict is
    missing). Every failed path is logged once as a warning."""
    seqs, reference, verdicts = None, None, []
    for build in candidates:
        engine = build()
        if engine is None:
            continue
        path = engine_path_name(engine)
        key = verdict_key(cfg, dtype=engine.dtype, device=str(engine.device), path=path)
        verdict = None if force else cached_verdict(key)
        if verdict is None:
            if reference is None:
                seqs = check_sequences(encode)
                reference = reference_logprobs(reference_model(), seqs)
            verdict = run_check(engine, seqs, reference, path=path)
            save_verdict(key, verdict)
            log.info("engine self-check: %s", verdict.line())
        verdicts.append(verdict)
        if verdict.trusted:
            return engine, verdicts
        log.warning("the fast engine is not trusted on this machine: %s; falling back to a slower, checked path "
                    "(run `cai env --check` for details)", verdict.line())
    return None, verdicts


def check_model_forward(model, encode: Callable, reference_model: Callable, *, force: bool = False) -> Verdict:
    """The same check for a transformers model's own forward (the path used when no engine path passed)."""
    dtype = str(model.dtype).removeprefix("torch.")
    device = str(next(model.parameters()).device)
    path = f"transformers ({dtype}, {device})"
    key = verdict_key(model.config.to_dict(), dtype=model.dtype, device=device, path=path)
    verdict = None if force else cached_verdict(key)
    if verdict is None:
        seqs = check_sequences(encode)
        verdict = _verdict(path, dtype, device, *compare(reference_logprobs(model, seqs),
                                                         reference_logprobs(reference_model(), seqs)))
        save_verdict(key, verdict)
    if not verdict.trusted:
        log.warning("transformers' own forward is not trusted on this machine: %s; using fp32", verdict.line())
    return verdict


def onednn_isa() -> str:
    """The ISA oneDNN dispatches to here (from its verbose info line, in a child process: the line is printed
    once per process, at the first primitive)."""
    import subprocess
    import sys

    code = "import torch; x = torch.ones(32, 32, dtype=torch.bfloat16); x @ x"
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "ONEDNN_VERBOSE": "1"})
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    for line in res.stdout.splitlines():
        if ",isa:" in line:
            return line.split(",isa:", 1)[1].strip()
    return "unknown (oneDNN printed no ISA line)"
