"""Alternating SL/RL rounds over seeds (cai.rounds) on a tiny model, and the figures evaluate gives them."""

from __future__ import annotations

import json

import pytest

from cai.config import RunConfig


def _rounds_config(tiny_model_dir, **changes) -> RunConfig:
    data = {
        "name": "tiny-rounds", "model": str(tiny_model_dir), "constitution": "general", "dtype": "fp32",
        "stages": ["critique", "sft", "label", "dpo", "evaluate"], "rounds": 2, "seeds": [0, 1],
        "critique_prompts": {"source": "redteam", "limit": 2},
        "helpful_prompts": {"source": "helpful", "limit": 2},
        "critique": {"rounds": 1, "max_new_tokens": 6, "critique_step": False},
        "sft": {"max_steps": 1, "batch_size": 2},
        "label": {"source": "contrastive", "max_new_tokens": 6, "temperature": 1.0,
                  "contrast": {"harmful": "redteam:train", "safe": "helpful:train", "limit": 3, "keep": "all"}},
        "dpo": {"max_steps": 1, "batch_size": 2, "learning_rate": 1e-3},
        "evaluate": {"limit": 3, "max_new_tokens": 4},
    }
    data.update(changes)
    return RunConfig.model_validate(data)


def test_units_alternate_sl_and_rl_and_share_round_one_sft_across_seeds(tiny_model_dir):
    from cai.rounds import plan_units

    keys = [u.key for u in plan_units(_rounds_config(tiny_model_dir))]
    assert keys == ["round1/sl", "round1/seed0/rl", "round1/seed1/rl", "round2/seed0/sl", "round2/seed0/rl",
                    "round2/seed1/sl", "round2/seed1/rl"]
    iterated = plan_units(_rounds_config(tiny_model_dir, rounds=1, seeds=None, rl_iterations=2))
    assert [u.key for u in iterated] == ["round1/sl", "round1/rl1", "round1/rl2"]


def test_seeds_change_the_pairs_and_trainer_seed_not_the_sft_data(tiny_model_dir):
    from cai.rounds import Unit, unit_config

    config = _rounds_config(tiny_model_dir)
    a, b = (unit_config(config, Unit(1, s, "rl", ("label", "dpo"))) for s in (0, 1))
    assert (a.dpo.seed, b.dpo.seed) == (0, 1) and a.label.seed != b.label.seed
    assert unit_config(config, Unit(2, 0, "rl", ("label", "dpo"))).label.seed != a.label.seed  # fresh pairs
    shared = unit_config(config, Unit(1, None, "sl", ("critique", "sft")))
    assert shared.critique == config.critique and shared.sft == config.sft and shared.seeds is None


@pytest.mark.slow
def test_two_rounds_over_two_seeds_run_evaluate_per_seed_and_resume(tmp_path, tiny_model_dir, monkeypatch):
    import cai.pipeline as pipeline
    from cai.rounds import run_rounds as run_pipeline

    config = _rounds_config(tiny_model_dir)
    out = tmp_path / "run"
    real_dpo = pipeline.STAGE_FUNCTIONS["dpo"]

    def dies_in_round_two(ctx):  # a crash in the middle of the run: round 2, seed 1's RL stage
        if "round2/seed1" in str(ctx.out):
            raise RuntimeError("killed")
        return real_dpo(ctx)

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "dpo", dies_in_round_two)
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(config, out)
    assert json.loads((out / "manifest.json").read_text())["failed"]["unit"] == "round2/seed1/rl"
    pairs_before = (out / "round2" / "seed1" / "rl" / "preferences" / "pairs.jsonl").read_text()
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "dpo", real_dpo)
    manifest = run_pipeline(config, out)

    # the resumed run kept what was done: round 2 seed 1's pairs are not made again
    assert (out / "round2" / "seed1" / "rl" / "preferences" / "pairs.jsonl").read_text() == pairs_before
    units = manifest["units"]
    assert units["round1/seed0/rl"]["start"] == units["round1/seed1/rl"]["start"] == units["round1/sl"]["model"]
    assert units["round2/seed1/sl"]["start"] == units["round1/seed1/rl"]["model"]  # each seed its own chain
    # contrastive pairs come from the policy being trained, with their provenance
    pair = json.loads((out / "round1" / "seed1" / "rl" / "preferences" / "pairs.jsonl").read_text().splitlines()[0])
    sft_card = json.loads((out / "round1" / "sl" / "sft" / "cai_model.json").read_text())
    assert pair["provenance"]["model"] == sft_card["model_id"]
    assert pair["provenance"]["label_source"] == "contrastive prompting" and pair["principle_id"]
    assert set(pair["provenance"]["templates"]) >= {"positive_system", "negative_system"}
    # seeds give different RL models
    from safetensors.torch import load_file

    w0, w1 = (load_file(f"{units[f'round1/seed{s}/rl']['model']}/model.safetensors") for s in (0, 1))
    assert any((w0[k] != w1[k]).any() for k in w0)

    refusals = json.loads((out / "evaluate" / "refusals.json").read_text())
    models = refusals["models"]
    assert [(m["stage"], m["round"]) for m in models] == [("base", 0), ("sft", 1), ("dpo", 1), ("sft", 2), ("dpo", 2)]
    assert "seeds" not in models[1]  # round 1's SFT is shared
    final = models[-1]
    assert [s["seed"] for s in final["seeds"]] == [0, 1]
    rates = [s["sets"]["harmful"]["refusal_rate"] for s in final["seeds"]]
    assert final["sets"]["harmful"]["refusal_rate"] == pytest.approx(sum(rates) / 2)
    diffs = [d for d in refusals["differences"] if d["round"] == 2 and d["set"] == "harmful"]
    assert len(diffs) == 1 and [p["seed"] for p in diffs[0]["per_seed"]] == [0, 1]
    assert diffs[0]["ci95"][0] <= diffs[0]["mean"] <= diffs[0]["ci95"][1]
    report = (out / "report" / "report.md").read_text()
    assert "## Rounds and seeds" in report and "round 2 dpo: mean of 2 seeds" in report
    assert (out / "report" / "rounds.png").is_file()


def test_paired_bootstrap_interval_is_above_zero_only_for_a_consistent_gain():
    from cai.evaluation.evaluate import paired_bootstrap

    gain = [[1.0] * 30 + [0.0] * 70, [1.0] * 25 + [0.0] * 75]  # two seeds, each a gain on 25-30 of 100 prompts
    mean, lo, hi = paired_bootstrap(gain, samples=500)
    assert mean == pytest.approx(0.275) and 0 < lo < mean < hi
    noise = [[1.0] * 10 + [-1.0] * 10 + [0.0] * 80]
    mean, lo, hi = paired_bootstrap(noise, samples=500)
    assert mean == 0 and lo < 0 < hi
