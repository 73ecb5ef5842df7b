"""Whether training on this CPU should use bf16 autocast: only where bf16 is both correct and fast here.

CPUs differ: with AVX-512 bf16 (or AMX) a bf16 matmul runs two or more times faster than fp32; without native
bf16 (AVX2 only, most laptops) it is emulated and runs hundreds of times slower; and one Intel AMX machine gave
NaN from bf16 kernels on shapes whose inner size is not a multiple of the tile. So before the first training
run on a machine, a small check runs a forward and backward pass of one MLP block with the embedded model's
shapes (hidden 576, intermediate 1536, an odd row count) under bf16 autocast and in fp32:

- correct: every output and gradient finite, and the largest difference from fp32 relative to fp32's largest
  magnitude at most ``REL_BOUND``;
- fast: the bf16 pass at most ``SPEED_RATIO`` of the fp32 pass's time (best of a few repeats).

The verdict is cached per CPU, torch version and oneDNN setting (``$CAI_CACHE/precision``); ``cai env`` shows it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

CHECK_VERSION = 1
REL_BOUND = 0.05  # bf16 keeps 8 mantissa bits: ~0.01 relative error per matmul; a broken kernel is off by far more
SPEED_RATIO = 0.7  # bf16 must take at most this share of fp32's time to be worth its rounding
SHAPES = (97, 576, 1536)  # rows (odd, not a tile multiple), hidden, intermediate


@dataclass
class Bf16Verdict:
    use: bool
    finite: bool
    rel_error: float
    fp32_seconds: float
    bf16_seconds: float
    why: str
    cached: bool = False


def _mlp_pass(x, w_gate, w_up, w_down, bf16: bool):
    """One SwiGLU block forward and backward; returns (output, input gradient, weight gradients)."""
    import torch

    x = x.detach().requires_grad_(True)
    ws = [w.detach().requires_grad_(True) for w in (w_gate, w_up, w_down)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = torch.nn.functional.silu(x @ ws[0].T) * (x @ ws[1].T)
        y = h @ ws[2].T
    y.float().square().mean().backward()
    return [y.detach().float(), x.grad.float(), *(w.grad.float() for w in ws)]


def _best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_check() -> Bf16Verdict:
    """Run the check now (about a second on a CPU with native bf16; a few seconds where bf16 is emulated)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    rows, hidden, inter = SHAPES
    x = torch.randn(rows, hidden, generator=gen)
    w_gate, w_up = (torch.randn(inter, hidden, generator=gen) * hidden**-0.5 for _ in range(2))
    w_down = torch.randn(hidden, inter, generator=gen) * inter**-0.5
    want = _mlp_pass(x, w_gate, w_up, w_down, bf16=False)
    got = _mlp_pass(x, w_gate, w_up, w_down, bf16=True)
    finite = all(bool(g.isfinite().all()) for g in got)
    rel = max(float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)) for g, w in zip(got, want, strict=True))
    rel = rel if finite else float("inf")
    fp32 = _best_time(lambda: _mlp_pass(x, w_gate, w_up, w_down, bf16=False))
    bf16 = _best_time(lambda: _mlp_pass(x, w_gate, w_up, w_down, bf16=True), repeats=3 if finite else 1)
    if not finite or rel > REL_BOUND:
        why = f"bf16 is wrong here (finite {finite}, relative error {rel:.3g} > {REL_BOUND})"
    elif bf16 > SPEED_RATIO * fp32:
        why = f"bf16 is slow here ({bf16 / fp32:.2f}x fp32's time; needs <= {SPEED_RATIO})"
    else:
        why = f"bf16 is correct (relative error {rel:.3g}) and fast ({bf16 / fp32:.2f}x fp32's time) here"
    use = finite and rel <= REL_BOUND and bf16 <= SPEED_RATIO * fp32
    return Bf16Verdict(use, finite, round(rel, 5), round(fp32, 5), round(bf16, 5), why)


def _key() -> str:
    import torch

    from cai.backends.engine_check import cpu_description

    parts = {"cpu": cpu_description(), "torch": torch.__version__, "version": CHECK_VERSION,
             "isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cpu_bf16_verdict(force: bool = False) -> Bf16Verdict:
    """The cached verdict for this CPU, or a fresh check (saved). ``CAI_TRAIN_BF16=0``/``1`` overrides it."""
    from cai.jsonl import write_atomic
    from cai.models import cache_dir

    override = os.environ.get("CAI_TRAIN_BF16")
    if override in ("0", "1"):
        return Bf16Verdict(override == "1", True, 0.0, 0.0, 0.0, f"CAI_TRAIN_BF16={override}")
    path = cache_dir() / "precision" / f"{_key()}.json"
    if not force:
        try:
            return Bf16Verdict(**{**json.loads(path.read_text()), "cached": True})
        except (OSError, ValueError, TypeError):
            pass
    verdict = run_check()
    log.info("training precision on this CPU: %s", verdict.why)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(verdict), indent=2))
    return verdict
