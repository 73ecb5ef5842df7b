"""Time one PPO update (rollouts + training) on the embedded model: cai's PPO against TRL 1.0.0's.

TRL removed PPO after 1.0.0, so its ``trl.experimental.ppo.PPOTrainer`` runs from another virtualenv:

    python3 -m venv /work/trl100-venv
    /work/trl100-venv/bin/pip install torch==2.13.0          # the local CPU build first
    /work/trl100-venv/bin/pip install trl==1.0.0 transformers==5.24.0 accelerate datasets
    .venv/bin/python benchmarks/ppo_step.py --trl-python /work/trl100-venv/bin/python

Both sides get the same policy (the embedded SmolLM2-135M), the same reward model (a sequence-
classification head on the same model, seeded), the same prompts, batch, minibatches, PPO epochs,
response length and sampling temperature. Each side runs in a fresh subprocess, so its peak resident
memory (``getrusage`` ``ru_maxrss``, read right after the last timed update) is its own. The first
update is a warm-up and is not timed. TRL keeps a separate value model (a second trunk) and trains
in fp32 on a CPU (``trl``; ``trl-bf16`` adds bf16 autocast); cai puts the value head on the policy's
trunk and, with ``dtype=auto``, samples rollouts from a bf16 copy where the CPU has AVX512-BF16
(``cai-fp32``: plain fp32 everywhere). cai samples its rollouts with its lean decoder
(``cai-generate``: with transformers' ``generate`` instead, as before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Explain how photosynthesis works, step by step.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of inflation? Explain each one.",
    "Describe how to plan a week of healthy meals on a budget.",
    "Explain the difference between a virus and a bacterium.",
    "Give me a detailed guide to starting a vegetable garden.",
    "How does a car engine work? Explain it to a beginner.",
    "Write a letter to a friend describing a trip to the mountains.",
    "What should I consider when choosing a laptop for university?",
    "Explain how the internet routes a message from one computer to another.",
    "Describe the water cycle and why it matters for weather.",
    "What are good habits for learning a new language? Explain several.",
    "Explain how vaccines train the immune system.",
    "Write a product description for a handmade wooden chess set.",
    "How do airplanes stay in the air? Explain lift and thrust.",
    "Describe the history of the printing press and its effects.",
]
SIDES = ("cai", "cai-generate", "cai-fp32", "trl", "trl-bf16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl-python", help="python of a venv with trl==1.0.0 (skip TRL if not given)")
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ", ".join(SIDES))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mini-batch-size", type=int, default=4)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--updates", type=int, default=3, help="timed updates per side (after one warm-up)")
    p.add_argument("--out", default="benchmarks/results/ppo_step.json")
    p.add_argument("--work", help="scratch directory (default: a temporary one)")
    p.add_argument("--threads", type=int, help="torch threads on both sides (default: torch's own choice)")
    p.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side in this process
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        spec = json.loads(Path(args.spec).read_text())
        result = run_cai(spec, args.side) if args.side.startswith("cai") else run_trl(spec, args.side)
        print("RESULT " + json.dumps(result), flush=True)
        return
    compare(args)


def compare(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="ppo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = prepare(work, args)
    sides = [s for s in args.sides.split(",") if s and (not s.startswith("trl") or args.trl_python)]
    results = {}
    for side in sides:
        python = args.trl_python if side.startswith("trl") else sys.executable
        print(f"running {side} ...", flush=True)
        results[side] = run_side(python, side, work, args.threads)
        r = results[side]
        length = "" if r["response_len"] is None else f", mean response {r['response_len']:.1f} tokens"
        print(f"  {side}: {r['seconds_per_update']:.1f} s/update ({r['cpu_seconds_per_update']:.1f} s CPU), "
              f"peak RSS {r['peak_rss_mb']:.0f} MiB" + length, flush=True)
    summary = {"spec": {k: v for k, v in spec.items() if k != "prompts"}, "results": results,
               "threads": args.threads, "load_average_after": os.getloadavg(), "cpus": os.cpu_count()}
    baselines = [s for s in results if s.startswith("trl")]
    for base in baselines:
        for side in (s for s in results if s.startswith("cai")):
            trl, ours = results[base], results[side]
            speedup = trl["seconds_per_update"] / ours["seconds_per_update"]
            cpu_speedup = trl["cpu_seconds_per_update"] / ours["cpu_seconds_per_update"]
            memory = ours["peak_rss_mb"] / trl["peak_rss_mb"]
            summary[f"{side}_vs_{base}"] = {"speedup_wall": speedup, "speedup_cpu": cpu_speedup,
                                            "memory_ratio": memory}
            print(f"{side} vs {base} (TRL 1.0.0): {speedup:.2f}x faster per update in wall time ({cpu_speedup:.2f}x in "
                  f"CPU time), {memory:.2f}x the peak memory")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {args.out}")


def prepare(work: Path, args) -> dict:
    """The shared inputs: the embedded policy's plain copy and a seeded reward model built on it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.models import resolve

    policy = resolve("smollm2-135m").path
    reward = work / "reward-model"
    if not (reward / "config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = model.config.eos_token_id
        model.save_pretrained(reward)
        AutoTokenizer.from_pretrained(policy).save_pretrained(reward)
    spec = {"policy": policy, "reward_model": str(reward), "prompts": PROMPTS, "batch_size": args.batch_size,
            "mini_batch_size": args.mini_batch_size, "ppo_epochs": args.ppo_epochs,
            "max_new_tokens": args.max_new_tokens, "updates": args.updates, "warmup": 1, "temperature": 0.7,
            "lr": 1e-5, "kl_coef": 0.05, "work": str(work)}
    (work / "spec.json").write_text(json.dumps(spec))
    return spec


def run_side(python: str, side: str, work: Path, threads: int | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([python, __file__, "--side", side, "--spec", str(work / "spec.json")],
                          capture_output=True, text=True, env=env)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not results:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{side} failed (exit {proc.returncode})")
    return json.loads(results[-1][len("RESULT "):])


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_cai(spec: dict, side: str) -> dict:
    from cai.jsonl import read_records
    from cai.train.ppo import PPOOptions, train_ppo

    options = PPOOptions(max_steps=spec["warmup"] + spec["updates"], batch_size=spec["batch_size"],
                         mini_batch_size=spec["mini_batch_size"], ppo_epochs=spec["ppo_epochs"],
                         max_new_tokens=spec["max_new_tokens"], temperature=spec["temperature"],
                         learning_rate=spec["lr"], beta=spec["kl_coef"], seed=0,
                         dtype="fp32" if side == "cai-fp32" else "auto", lean_rollouts=side != "cai-generate")
    out = Path(tempfile.mkdtemp(dir=spec["work"], prefix=f"{side}-"))
    train_ppo(spec["prompts"], spec["reward_model"], out, policy=spec["policy"], options=options)
    rows = read_records(out / "metrics.jsonl")
    timed = rows[spec["warmup"]:]
    return {"seconds_per_update": statistics.median(r["time"] for r in timed),
            "cpu_seconds_per_update": statistics.median(r["cpu_time"] for r in timed),
            "rollout_and_scoring_seconds_per_update": statistics.median(r["time_rollout"] for r in timed),
            "update_seconds": [r["time"] for r in rows], "peak_rss_mb": timed[-1]["max_rss_mb"],
            "response_len": statistics.mean(r["response_len"] for r in rows), "library": _versions("cai")}


def run_trl(spec: dict, side: str) -> dict:
    """TRL 1.0.0's PPOTrainer with a separate value model, as its example script builds it.

    ``trl``: fp32 (``bf16=False``); ``trl-bf16``: bf16 autocast on the CPU (``use_cpu=True, bf16=True``).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers import AutoModelForSequenceClassification as SeqCls
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    value = SeqCls.from_pretrained(spec["policy"], num_labels=1, dtype=torch.float32)
    reward = SeqCls.from_pretrained(spec["reward_model"], dtype=torch.float32)
    value.config.pad_token_id = reward.config.pad_token_id = tok.pad_token_id
    queries = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for p in spec["prompts"]]
    data = Dataset.from_dict({"input_ids": queries})
    n = spec["warmup"] + spec["updates"]
    config = PPOConfig(
        output_dir=str(Path(spec["work"]) / "trl-out"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, num_mini_batches=spec["batch_size"] // spec["mini_batch_size"],
        num_ppo_epochs=spec["ppo_epochs"], response_length=spec["max_new_tokens"],
        temperature=spec["temperature"], learning_rate=spec["lr"], kl_coef=spec["kl_coef"], stop_token="eos",
        total_episodes=spec["batch_size"] * n, local_rollout_forward_batch_size=spec["mini_batch_size"],
        num_sample_generations=0, save_strategy="no", report_to="none", seed=0, logging_steps=1,
        disable_tqdm=True, bf16=side == "trl-bf16", use_cpu=side == "trl-bf16",
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks, self.cpu, self.rss = [], [], []

        def on_train_begin(self, *a, **k):
            self.marks.append(time.time())
            self.cpu.append(time.process_time())

        def on_step_end(self, *a, **k):
            self.marks.append(time.time())
            self.cpu.append(time.process_time())
            self.rss.append(peak_rss_mb())

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "val/num_eos_tokens" in logs:
                self.eos = getattr(self, "eos", []) + [logs["val/num_eos_tokens"]]

    clock = Clock()
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=data, value_model=value, eval_dataset=data, callbacks=[clock])
    trainer.train()
    seconds = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    cpu = [b - a for a, b in zip(clock.cpu, clock.cpu[1:], strict=False)]
    return {"seconds_per_update": statistics.median(seconds[spec["warmup"]:]),
            "cpu_seconds_per_update": statistics.median(cpu[spec["warmup"]:]), "update_seconds": seconds,
            "peak_rss_mb": clock.rss[-1], "response_len": None, "eos_per_batch": getattr(clock, "eos", []),
            "library": _versions("trl")}


def _versions(main_package: str) -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in (main_package, "torch", "transformers")}


if __name__ == "__main__":
    main()
