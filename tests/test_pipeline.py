"""The pipeline end to end on a tiny model, the recipes, and the CLI's error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cai.config import RunConfig, load_config
from cai.errors import ConfigError

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_loads(recipe):
    config = load_config(recipe)
    assert config.stages


def test_unknown_recipe_key_is_an_error(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\ncritique:\n  rounds: 2\n  roundz: 3\n")
    with pytest.raises(ConfigError, match="roundz"):
        load_config(bad)


def test_pipeline_runs_every_stage_on_a_tiny_model_and_resumes(tmp_path, tiny_model_dir):
    from cai.pipeline import run_pipeline

    config = RunConfig.model_validate({
        "name": "tiny", "model": str(tiny_model_dir), "constitution": "seed", "dtype": "fp32",
        "stages": ["critique", "sft", "label", "reward", "ppo", "evaluate"],
        "critique_prompts": {"source": "redteam", "limit": 4},
        "critique": {"rounds": 1, "max_new_tokens": 6},
        "sft": {"max_steps": 1, "batch_size": 2},
        "rl_prompts": {"source": "mixed", "limit": 4},
        "label": {"samples": 2, "max_new_tokens": 6},
        "reward": {"max_steps": 1, "batch_size": 2},
        "ppo": {"max_steps": 1, "batch_size": 2, "mini_batch_size": 2, "max_new_tokens": 4, "ppo_epochs": 1},
        "evaluate": {"limit": 2, "max_new_tokens": 4, "redteam": True},
    })
    out = tmp_path / "run"
    manifest = run_pipeline(config, out)
    assert set(manifest["stages"]) == {"critique", "sft", "label", "reward", "ppo", "evaluate"}
    refusals = manifest["stages"]["evaluate"]["refusals"]
    assert list(refusals) == [str(tiny_model_dir), str(out / "sft"), manifest["final_model"]]  # base, SFT, PPO
    assert all(0 <= r["harmful_refusal"] <= 1 for r in refusals.values())
    # a tiny random model's replies mostly loop: counted as degenerate, no attack success rate without others
    assert all(r["attack_success"] is None or 0 <= r["attack_success"] <= 1 for r in refusals.values())
    report = (out / "report" / "report.md").read_text()
    assert "## Harmlessness and over-refusal" in report and "## Jailbreaks" in report and "PPO run" in report
    assert (out / "critique" / "records.jsonl").exists() and (out / "preferences" / "pairs.jsonl").exists()
    assert (out / "ppo" / "metrics.jsonl").exists()
    assert Path(manifest["final_model"], "config.json").exists()
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["name"] == "tiny"
    before = json.loads((out / "manifest.json").read_text())
    again = run_pipeline(config, out)  # everything done: nothing re-runs
    assert again["stages"] == before["stages"]


def test_cli_reports_bad_recipe_without_traceback(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: [unclosed\n")
    r = subprocess.run([sys.executable, "-m", "cai", "run", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "r.yaml" in r.stderr


def _small(tiny_model_dir, **changes) -> RunConfig:
    data = {"name": "small", "model": str(tiny_model_dir), "constitution": "seed", "dtype": "fp32",
            "stages": ["critique"], "critique_prompts": {"source": "redteam", "limit": 2},
            "critique": {"rounds": 1, "max_new_tokens": 4}, "sft": {"max_steps": 1, "batch_size": 2}}
    data.update(changes)
    return RunConfig.model_validate(data)


def test_a_run_takes_added_stages_and_locks_a_stage_only_by_the_settings_it_reads(tmp_path, tiny_model_dir):
    from cai.pipeline import run_pipeline

    out = tmp_path / "run"
    first = run_pipeline(_small(tiny_model_dir), out)
    # a later stage's settings and an added stage do not touch the finished critique
    both = _small(tiny_model_dir, stages=["critique", "sft"], sft={"max_steps": 1, "batch_size": 1})
    second = run_pipeline(both, out)
    assert second["stages"]["critique"] == first["stages"]["critique"]
    assert (out / "sft" / "config.json").is_file() and second["final_model"] == str(out / "sft")
    # a setting the finished critique read is refused, with the flag that redoes it
    changed = _small(tiny_model_dir, stages=["critique", "sft"], critique={"rounds": 1, "max_new_tokens": 5})
    with pytest.raises(ConfigError, match="--redo critique") as e:
        run_pipeline(changed, out)
    assert "max_new_tokens" in str(e.value)
    redone = run_pipeline(changed, out, redo=("critique",))  # and the sft after it runs again too
    assert redone["stages"]["critique"]["settings"]["critique"]["max_new_tokens"] == 5
    assert redone["stages"]["sft"]["seconds"] != second["stages"]["sft"]["seconds"] or \
        (out / "sft" / "config.json").stat().st_mtime > (out / "critique" / "records.jsonl").stat().st_mtime


def test_a_failed_start_locks_nothing_and_a_failure_is_recorded_with_its_stage(tmp_path, tiny_model_dir):
    from cai.errors import ModelError
    from cai.pipeline import run_pipeline

    out = tmp_path / "run"
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m'"):
        run_pipeline(_small(tiny_model_dir, model="smollm2-135"), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["failed"]["stage"] == "setup" and "smollm2-135" in manifest["failed"]["error"]
    assert "did you mean" in (out / "cai.log").read_text()
    (tmp_path / "blank.jsonl").write_text('{"id": "a", "prompt": ""}\n')
    with pytest.raises(ConfigError):  # fails inside the critique stage: no usable prompt
        run_pipeline(_small(tiny_model_dir, critique_prompts={"source": str(tmp_path / "blank.jsonl")}), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["failed"]["stage"] == "critique" and manifest["stages"]["critique"]["done"] is False
    done = run_pipeline(_small(tiny_model_dir), out)  # the right settings are not refused
    assert done["stages"]["critique"]["done"] and "failed" not in done


def test_served_models_are_refused_for_training_stages_with_the_reason(tmp_path):
    from cai.pipeline import run_pipeline

    config = RunConfig.model_validate({"model": "openai:m@http://127.0.0.1:9/v1", "stages": ["critique", "sft"]})
    with pytest.raises(ConfigError, match=r"served, and stages \['sft'\] train"):
        run_pipeline(config, tmp_path / "run")


def test_dpo_pipeline_evaluates_the_dpo_model_also_after_a_resume(tmp_path, tiny_model_dir):
    from cai.pipeline import run_pipeline

    config = RunConfig.model_validate({
        "name": "tiny-dpo", "model": str(tiny_model_dir), "constitution": "seed", "dtype": "fp32",
        "stages": ["critique", "sft", "label", "dpo", "evaluate"],
        "critique_prompts": {"source": "redteam", "limit": 3},
        "helpful_prompts": {"source": "helpful", "limit": 3},
        "critique": {"rounds": 1, "max_new_tokens": 6, "critique_step": False},
        "sft": {"max_steps": 1, "batch_size": 2},
        "label": {"source": "constructed"},
        "dpo": {"max_steps": 1, "batch_size": 2, "min_confidence": 0.5},
        "evaluate": {"limit": 2, "max_new_tokens": 4},
    })
    out = tmp_path / "run"
    manifest = run_pipeline(config, out)
    assert manifest["final_model"] == str(out / "dpo")
    expected = [str(tiny_model_dir), str(out / "sft"), str(out / "dpo")]  # base, SFT, DPO
    assert list(manifest["stages"]["evaluate"]["refusals"]) == expected
    assert manifest["stages"]["label"]["label_source"] == "constructed"
    assert json.loads((out / "preferences" / "label_source.json").read_text())["label_source"] == "constructed"
    # a run killed before evaluate: the resumed run starts from the DPO model it finds done
    saved = json.loads((out / "manifest.json").read_text())
    del saved["stages"]["evaluate"]
    (out / "manifest.json").write_text(json.dumps(saved))
    again = run_pipeline(config, out)
    assert list(again["stages"]["evaluate"]["refusals"]) == expected and again["final_model"] == str(out / "dpo")
    refusals = json.loads((out / "evaluate" / "refusals.json").read_text())
    assert refusals["harmful"] == "redteam:eval" and [m["model_spec"] for m in refusals["models"]] == expected
    assert [(m["stage"], m["round"]) for m in refusals["models"]] == [("base", 0), ("sft", 1), ("dpo", 1)]
