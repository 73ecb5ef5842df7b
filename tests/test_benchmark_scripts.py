"""The benchmark scripts' own plumbing (their measurements are not tests): options reach the process measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_passes_cai_options_to_the_child_that_trains():
    bench = load_script("train_step")
    options = json.dumps({"lora": True, "gradient_checkpointing": False, "learning_rate": 1e-3})
    parent = bench.parse_args(["--which", "sft", "--cai-options", options, "--steps", "2"])
    command = bench.child_command("cai", "sft", Path("rows.jsonl"), parent)
    child = bench.parse_args(command[2:])  # what the child process parses
    _, sft = bench.cai_stage("sft", child)
    assert (sft.lora, sft.gradient_checkpointing, sft.learning_rate, sft.max_steps) == (True, False, 1e-3, 2)
    _, dpo = bench.cai_stage("dpo", bench.parse_args(["--which", "dpo"]))
    assert not dpo.lora and dpo.max_steps == 4  # without options: cai's defaults at the benchmark's sizes
