"""TRL's GRPO/RLOO with the constitution as the reward: options, metrics, the saved policy, the CLI."""

from __future__ import annotations

import json

import pytest

from cai.train.grpo import OnlineRLOptions, metric_rows, train_online

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


PROMPTS = ["Name a fruit.", "How do I pick a lock?", "Say hello.", "Write a threat."]
TINY = dict(max_steps=2, batch_size=4, num_generations=4, max_new_tokens=8, learning_rate=1e-3, dtype="fp32")


def test_groups_must_fit_the_batch():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        OnlineRLOptions(batch_size=6, num_generations=4)


def test_metric_rows_keep_the_steps_with_a_reward():
    history = [{"loss": 0.1, "reward": 0.5, "kl": 0.01, "completions/mean_length": 7.0, "step": 1},
               {"train_runtime": 3.0, "step": 2}]
    assert metric_rows(history) == [{"step": 1, "reward": 0.5, "kl": 0.01, "loss": 0.1, "response_len": 7.0}]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_tiny_policy_trains_against_a_reward_model(algorithm, tiny_model_dir, tiny_reward_dir, tmp_path):
    from safetensors.torch import load_file

    options = OnlineRLOptions(algorithm=algorithm, **TINY)
    path = train_online(PROMPTS, tmp_path / "run", tiny_reward_dir, policy=str(tiny_model_dir), options=options)
    assert (path / "config.json").is_file() and not (path / ".partial").exists()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(isinstance(r["reward"], float) for r in rows)
    card = json.loads((path / "cai_model.json").read_text())
    assert card["stage"] == algorithm and card["world_size"] == 1 and card["metrics"]["steps"] == 2
    assert card["data"].endswith(str(tiny_reward_dir))
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)  # the policy moved


def test_the_judge_as_reward_from_the_cli(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = ["grpo", str(prompts), "--out", str(tmp_path / "run"), "--judge", str(tiny_model_dir), "--policy",
            str(tiny_model_dir), "--steps", "1", "--max-new-tokens", "8", "--dtype", "fp32", "--principles", "single"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "GRPO policy written" in result.output
    card = json.loads((tmp_path / "run" / "policy" / "cai_model.json").read_text())
    assert card["data"].startswith("4 prompts, reward judge:")


def test_cli_needs_exactly_one_reward(tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    result = CliRunner().invoke(app, ["grpo", "redteam", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "exactly one of --reward-model" in str(result.exception or result.output)


def test_the_pipeline_grpo_stage_starts_from_the_sft_policy_and_hands_its_own_on(tiny_model_dir, tmp_path):
    from cai.config import RunConfig
    from cai.pipeline import run_pipeline

    config = RunConfig.model_validate({
        "name": "tiny", "model": str(tiny_model_dir), "constitution": "seed", "dtype": "fp32",
        "stages": ["grpo"], "judge_model": str(tiny_model_dir), "rl_prompts": {"source": "mixed", "limit": 2},
        "grpo": {"reward": "judge", "max_steps": 1, "max_new_tokens": 4, "judge_principles": "single"},
    })
    manifest = run_pipeline(config, tmp_path / "run")
    assert manifest["final_model"] == str(tmp_path / "run" / "grpo" / "policy")
    assert (tmp_path / "run" / "grpo" / "metrics.jsonl").read_text().count("\n") == 1


def test_the_guard_sizes_grpo_passes_and_counts_the_reference_and_the_reward_model(monkeypatch, tiny_model_dir,
                                                                                   tiny_reward_dir, tmp_path):
    """Room for 2 completions a pass, not 4: TRL trains in passes of 2 (gradients accumulated over 2); with no
    room for one, GRPO stops with the guard's error before anything is loaded or written."""
    from cai import guard

    monkeypatch.setattr("cai.memory.rss_bytes", lambda: guard.RUNTIME_BYTES)
    options = OnlineRLOptions(**TINY)
    monkeypatch.setattr(guard, "room", lambda: (None, "test"))
    guard.recorded.clear()
    train_online(PROMPTS, tmp_path / "a", tiny_reward_dir, policy=str(tiny_model_dir), options=options)
    need = {e.micro_batch: e for e in guard.recorded if e.stage == "grpo"}[4]
    assert {"reference", "reward model", "logits"} <= set(need.parts)
    two = guard.fit_rl("grpo", guard.shape_of(tiny_model_dir), *_tokenizer_and_prompts(tiny_model_dir), batch_size=4,
                       wanted=2, max_new_tokens=8, lora=False, checkpointing=True, extra={}, fix="x")
    free = int((two.total + need.parts["reference"] + need.parts["reward model"] - guard.RUNTIME_BYTES)
               / guard.HEADROOM) + 1
    monkeypatch.setattr(guard, "room", lambda: (free, "test"))
    guard.recorded.clear()
    train_online(PROMPTS, tmp_path / "b", tiny_reward_dir, policy=str(tiny_model_dir), options=options)
    assert guard.recorded[0].micro_batch == 2
    monkeypatch.setattr(guard, "room", lambda: (1, "test"))
    with pytest.raises(guard.MemoryGuardError, match="stage grpo needs about"):
        train_online(PROMPTS, tmp_path / "c", tiny_reward_dir, policy=str(tiny_model_dir), options=options)
    assert not (tmp_path / "c").exists()


def _tokenizer_and_prompts(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), [[{"role": "user", "content": p}] for p in PROMPTS]
