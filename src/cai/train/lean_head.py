"""Response-only, vocabulary-tiled log-probs in TRL's trainers on a CPU: what TRL 1.16 lacks there, set by hand.

TRL's SFT and DPO trainers compute the loss through a fused LM head (``trl.trainer.utils.add_fused_lm_head``)
that never builds the whole ``[tokens, vocab]`` logits: it projects tiles of tokens x ``chunk_size`` vocabulary
entries and folds each into running log-sum-exps. Two of its choices suit a GPU and not a CPU:

- off CUDA/XPU it scores *every* position (prompt and padding too; only Triton devices score just the positions
  with a label), so a CPU spends the LM head's matmul on tokens whose loss is masked away;
- its vocabulary tile is 32,768 entries wide, so one tile for a micro-batch of 1,000 tokens is 128 MiB in fp32,
  and the fold's temporaries several times that: the largest transient of a CPU training step.

``lean_lm_head()`` scores only the labelled positions on a CPU as well (TRL's own "compact" path, which it skips
elsewhere to avoid recompilation on XLA-like devices: a CPU compiles nothing) and narrows the tile to
``VOCAB_TILE`` entries. The arithmetic is TRL's, tile by tile; only the tile shapes change. Where TRL's names
have moved (another version), nothing is patched and training runs as TRL does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

VOCAB_TILE = 4096  # vocabulary entries per tile: 16 MiB of fp32 logits per 1,000 tokens


@contextmanager
def lean_lm_head() -> Iterator[bool]:
    """While training: TRL's fused LM head scores labelled positions only, in narrow vocabulary tiles (CPU
    tensors; GPU tensors keep TRL's behaviour). Yields whether TRL was patched."""
    try:
        from trl.trainer import utils
    except ImportError:  # no TRL: nothing to patch
        yield False
        return
    names = ("_CHUNKED_LOGPROB_CHUNK_SIZE", "_use_triton")
    if not all(hasattr(utils, n) for n in names):
        log.debug("TRL's fused LM head has changed (no %s): left as it is", ", ".join(names))
        yield False
        return
    import torch

    saved = {n: getattr(utils, n) for n in names}
    triton = saved["_use_triton"]
    utils._use_triton = lambda device: triton(device) or device.type == "cpu"  # "compact": labelled positions
    if not torch.cuda.is_available():  # a GPU keeps TRL's wide tiles
        utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(saved["_CHUNKED_LOGPROB_CHUNK_SIZE"], VOCAB_TILE)
    try:
        yield True
    finally:
        for n, value in saved.items():
            setattr(utils, n, value)
