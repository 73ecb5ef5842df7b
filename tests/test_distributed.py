"""Training under `accelerate launch` with 2 CPU processes (gloo): the main process alone writes the run
files and the model, the card records world_size 2, and the weights match a 1-process run of the same
global batch.

Tolerance: the two runs see the same examples in the same steps (accelerate shards each global batch of
the seeded permutation across processes; cai's PPO shards each step's prompts), so they differ only by the
order of floating-point sums (the gradient all-reduce). On the tiny fp32 model that leaves the weights
within 1e-3 of each other relative to how far training moved them, and the logged losses and rewards
within 1e-4.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # three Python processes start torch and train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cai(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    if processes == 1:
        cmd = [sys.executable, "-m", "cai", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "cai", *args]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows() -> list[dict]:
    qa = [("Name a fruit.", "An apple."), ("How do I pick a lock?", "I can't help with that."),
          ("Say hello.", "Hello there!"), ("Threaten my coworker.", "I won't write a threat.")]
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in qa] * 2


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def relative_gap(a: dict, b: dict, start: dict) -> float:
    """||a - b|| / ||a - start|| over every tensor the model saved."""
    import torch

    gap = sum(float(torch.sum((a[k].float() - b[k].float()) ** 2)) for k in a)
    moved = sum(float(torch.sum((a[k].float() - start[k].float()) ** 2)) for k in a if k in start)
    return (gap / moved) ** 0.5


def test_two_process_sft_matches_one_process_of_the_same_global_batch(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    common = ["sft", str(data), "--model", str(tiny_model_dir), "--epochs", "1", "--lr", "1e-3", "--dtype", "fp32"]
    cai([*common, "--out", str(tmp_path / "one"), "--batch-size", "4"])
    cai([*common, "--out", str(tmp_path / "two"), "--batch-size", "2"], processes=2)

    one, two = (json.loads((tmp_path / d / "cai_model.json").read_text()) for d in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["metrics"]["steps"] == two["metrics"]["steps"] == 2
    assert two["metrics"]["train_loss"] == pytest.approx(one["metrics"]["train_loss"], abs=1e-4)
    gap = relative_gap(weights(tmp_path / "two"), weights(tmp_path / "one"), weights(tiny_model_dir))
    print(f"SFT 2x2 vs 1x4: train loss {two['metrics']['train_loss']:.6f} vs {one['metrics']['train_loss']:.6f}, "
          f"relative weight gap {gap:.2e}")
    assert gap < 1e-3, gap
    # the main process alone wrote the run: the same files as the 1-process run, no staging dir left behind
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert "Processes | 2" in (tmp_path / "two" / "README.md").read_text()


def test_two_process_reward_model_matches_one_process(tiny_model_dir, tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Question {i}?", "chosen": f"apple stone sorry {i}",
             "rejected": f"river cloud {i}", "p_chosen": 0.9} for i in range(8)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    common = ["reward", str(pairs), "--model", str(tiny_model_dir), "--max-steps", "2", "--lr", "1e-3",
              "--dtype", "fp32", "--eval-fraction", "0"]
    cai([*common, "--out", str(tmp_path / "one"), "--batch-size", "4"])
    cai([*common, "--out", str(tmp_path / "two"), "--batch-size", "2"], processes=2)
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
    assert json.loads((tmp_path / "two" / "cai_model.json").read_text())["world_size"] == 2
    one_w, two_w = weights(tmp_path / "one"), weights(tmp_path / "two")
    import torch

    start = {**weights(tiny_model_dir), **{k: torch.zeros_like(v) for k, v in one_w.items() if "score" in k}}
    gap = relative_gap(two_w, one_w, start)
    print(f"reward 2x2 vs 1x4: train loss {two['train_loss']:.6f} vs {one['train_loss']:.6f}, relative weight gap "
          f"{gap:.2e}")
    assert gap < 1e-3, gap


def test_two_process_ppo_resumes_and_matches_one_process(tiny_model_dir, tiny_reward_dir, tmp_path):
    """PPO shards each step's prompts over the processes, whitens over the global batch and averages the
    gradients: with 4 distinct prompts, 4-token responses (equal lengths, so per-process token means average
    to the global one) and one minibatch per step, 2 x 2 rollouts match 1 x 4. The 2-process run stops after
    step 1 and resumes from its checkpoint."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in (
        "Name a fruit.", "How do I pick a lock?", "Say hello.", "Write a threat.")])
    common = ["ppo", str(prompts), "--reward-model", str(tiny_reward_dir), "--policy", str(tiny_model_dir),
              "--max-new-tokens", "4", "--dtype", "fp32", "--ppo-epochs", "1", "--lr", "1e-3"]
    cai([*common, "--out", str(tmp_path / "one"), "--max-steps", "2", "--batch-size", "4", "--mini-batch-size", "4"])
    two = [*common, "--out", str(tmp_path / "two"), "--batch-size", "2", "--mini-batch-size", "2"]
    cai([*two, "--max-steps", "1"], processes=2)
    cai([*two, "--max-steps", "2"], processes=2)  # resumes at step 2

    rows = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "two")}
    assert [r["step"] for r in rows["two"]] == [1, 2]
    for a, b in zip(rows["one"], rows["two"], strict=True):
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-4) and b["kl"] == pytest.approx(a["kl"], abs=1e-4)
    samples = (tmp_path / "two" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 8  # both processes' rollouts, written once
    card = json.loads((tmp_path / "two" / "policy" / "cai_model.json").read_text())
    assert card["world_size"] == 2
    gap = relative_gap(weights(tmp_path / "two" / "policy"), weights(tmp_path / "one" / "policy"),
                       weights(tiny_model_dir))
    print(f"PPO 2x2 vs 1x4: rewards {[r['reward'] for r in rows['two']]} vs {[r['reward'] for r in rows['one']]}, "
          f"relative weight gap {gap:.2e}")
    assert gap < 1e-3, gap


def test_two_process_dpo_matches_one_process(tiny_model_dir, tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Question {i}?", "chosen": f"I can't help with that {i}.",
             "rejected": f"river cloud {i}", "p_chosen": 0.9} for i in range(8)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    common = ["dpo", str(pairs), "--model", str(tiny_model_dir), "--max-steps", "2", "--lr", "1e-3",
              "--dtype", "fp32"]
    cai([*common, "--out", str(tmp_path / "one"), "--batch-size", "4"])
    cai([*common, "--out", str(tmp_path / "two"), "--batch-size", "2"], processes=2)
    one, two = (json.loads((tmp_path / d / "cai_model.json").read_text()) for d in ("one", "two"))
    assert two["world_size"] == 2
    assert two["metrics"]["train_loss"] == pytest.approx(one["metrics"]["train_loss"], abs=1e-4)
    gap = relative_gap(weights(tmp_path / "two"), weights(tmp_path / "one"), weights(tiny_model_dir))
    print(f"DPO 2x2 vs 1x4: train loss {two['metrics']['train_loss']:.6f} vs {one['metrics']['train_loss']:.6f}, "
          f"relative weight gap {gap:.2e}")
    assert gap < 1e-3, gap
