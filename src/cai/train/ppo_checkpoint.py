"""Save and restore a PPO run so that re-running with the same ``out_dir`` continues where it stopped.

``out_dir/checkpoint/`` holds ``weights.pt`` (the trainable policy weights -- all of them, or the LoRA
adapter --, the value head, the optimiser, the RNG states) and ``state.json`` (step, KL controller,
the run's history for the reward-hacking signals, the options). A new checkpoint is written beside the
old one and swapped in by renames, so a crash mid-save leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"


def save_checkpoint(out_dir: Path, actor_critic, optimizer, state: dict[str, Any]) -> Path:
    """Write the checkpoint for ``state["step"]``; returns its directory."""
    import numpy as np
    import torch

    out_dir = Path(out_dir)
    final, tmp, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.tmp", out_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach() for n, p in actor_critic.model.named_parameters() if p.requires_grad}
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"policy": trainable, "value_head": actor_critic.value_head.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": rng}, tmp / "weights.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint directory to resume from, if any (falls back to one left mid-swap)."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):
        path = Path(out_dir) / name
        if (path / "state.json").is_file() and (path / "weights.pt").is_file():
            return path
    return None


def load_checkpoint(path: Path, actor_critic, optimizer) -> dict[str, Any]:
    """Restore weights, optimiser and RNG states in place; returns the saved state dict."""
    import numpy as np
    import torch

    from cai.errors import ModelError

    saved = torch.load(path / "weights.pt", map_location="cpu", weights_only=False)
    trainable = {n for n, p in actor_critic.model.named_parameters() if p.requires_grad}
    try:
        missing, unexpected = actor_critic.model.load_state_dict(saved["policy"], strict=False)
    except RuntimeError:  # same names, other shapes
        missing, unexpected = list(trainable), ["(shape mismatch)"]
    if unexpected or trainable & set(missing):
        raise ModelError(
            "the checkpoint's weights do not fit this policy (written with another --policy or --lora?)",
            where=str(path), fix="re-run with the same options, or use a new --out directory",
        )
    actor_critic.value_head.load_state_dict(saved["value_head"])
    optimizer.load_state_dict(saved["optimizer"])
    actor_critic.sync_rollout_model()
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop metric rows after ``last_step`` (logged after the last checkpoint); returns how many went."""
    from cai.jsonl import read_records, repair, write_jsonl_atomic

    path = Path(path)
    if not path.exists():
        return 0
    repair(path)
    rows = read_records(path)
    keep = [r for r in rows if r.get("step", 0) <= last_step]
    if len(keep) != len(rows):
        write_jsonl_atomic(path, keep)
    return len(rows) - len(keep)
