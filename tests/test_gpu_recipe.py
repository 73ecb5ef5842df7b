"""The GPU recipe and the accelerate configs: they load, their stages are wired, and the GPU guide's command
lines name files that exist. (Running them needs GPUs; the same code paths run here on the tiny model.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cai.config import RunConfig, load_config
from cai.errors import ConfigError
from cai.pipeline import check_wiring, stage_inputs

ROOT = Path(__file__).parent.parent
GPU_RECIPE = ROOT / "recipes" / "gpu-7b.yaml"
ACCELERATE = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


def test_gpu_recipe_trains_a_7b_model_with_vllm_generation_and_a_served_judge(tmp_path):
    from cai.backends.served import is_served

    config = load_config(GPU_RECIPE)
    assert not is_served(config.model) and is_served(config.judge_model)
    assert config.grpo.use_vllm and config.grpo.reward == "reward_model"
    assert stage_inputs(config)["grpo"] == ["reward/config.json"]
    check_wiring(config, tmp_path)  # every stage's input is made by a stage before it


@pytest.mark.parametrize("stages, needle", [(["sft"], "critique"), (["label", "grpo"], "reward"),
                                            (["critique", "sft", "ppo"], "reward"), (["dpo"], "label")])
def test_a_stage_without_its_input_fails_before_anything_runs(stages, needle, tmp_path):
    with pytest.raises(ConfigError, match=f"which stage {needle} makes"):
        check_wiring(RunConfig(stages=stages), tmp_path)


def test_a_judged_grpo_stage_needs_no_reward_model(tmp_path):
    check_wiring(RunConfig(stages=["grpo"], grpo={"reward": "judge"}), tmp_path)


def test_a_stage_subset_may_use_what_an_earlier_run_left(tmp_path):
    (tmp_path / "reward").mkdir()
    (tmp_path / "reward" / "config.json").write_text("{}")
    check_wiring(RunConfig(stages=["grpo"]), tmp_path)


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.stem for p in ACCELERATE])
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    if path.stem.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


def test_gpu_guide_commands_name_shipped_files():
    section = (ROOT / "docs" / "guides" / "gpu-7b.md").read_text()
    named = set(re.findall(r"recipes/[\w./-]+\.yaml", section))
    assert {"recipes/gpu-7b.yaml", "recipes/accelerate/zero3.yaml"} <= named
    assert all((ROOT / n).is_file() for n in named), named
    assert "--num_machines 2" in section and "--machine_rank" in section
