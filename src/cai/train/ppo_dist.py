"""PPO in several processes (``accelerate launch``/torchrun): data parallel by hand, as the loop is.

Each of N processes takes its own consecutive share of the step's global batch of prompts
(``batch_size`` per process, ``N x batch_size`` per step), samples and scores its rollouts, and whitens the
advantages with the mean and variance of the whole global batch. After each minibatch's backward pass the
gradients are averaged over the processes (an all-reduce), so every process applies the same update and
the weights stay identical. Metrics are averaged and the samples gathered to the main process, which
alone writes files. Hand-written because cai's PPO loop is (TRL has no PPO trainer any more); the
collectives are torch.distributed's, set up by accelerate.

With one process every function here is the identity (or the plain local computation), so the default
path does not touch torch.distributed.
"""

from __future__ import annotations

from typing import Any

from cai.distributed import rank, world_size


def setup() -> None:
    """Start the process group (gloo on CPUs, NCCL on GPUs) when there are several processes."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState()


def my_share(indices: list[int]) -> list[int]:
    """This process's consecutive share of the global batch's prompt indices."""
    n = world_size()
    size = len(indices) // n
    return indices[rank() * size:(rank() + 1) * size]


def whiten(x, mask, eps: float = 1e-8):
    """``ppo_losses.masked_whiten`` over the masked positions of every process's batch: [B, T] -> [B, T]."""
    from cai.train.ppo_losses import masked_whiten

    if world_size() == 1:
        return masked_whiten(x, mask, eps=eps)
    import torch
    import torch.distributed as dist

    sums = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double()
    dist.all_reduce(sums)
    total, total_sq, n = sums.tolist()
    mean = total / max(n, 1.0)
    var = (total_sq / max(n, 1.0) - mean * mean) * (n / (n - 1) if n > 1 else 1.0)  # unbiased, as masked_var
    return (x - mean) * torch.rsqrt(torch.tensor(max(var, 0.0) + eps, dtype=x.dtype, device=x.device)) * mask


def average_gradients(parameters) -> None:
    """Replace each gradient by its mean over the processes (no-op in one process)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    n = world_size()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= n


def mean_over_processes(value: float) -> float:
    """The mean of ``value`` over the processes."""
    if world_size() == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world_size()


def mean_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with every float averaged over the processes (the same keys in each)."""
    if world_size() == 1:
        return row
    import torch
    import torch.distributed as dist

    keys = sorted(k for k, v in row.items() if isinstance(v, float))
    t = torch.tensor([row[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {**row, **dict(zip(keys, (t / world_size()).tolist(), strict=True))}


def gather(items: list) -> list:
    """Every process's ``items``, concatenated in rank order, on every process."""
    if world_size() == 1:
        return items
    import torch.distributed as dist

    parts: list = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
