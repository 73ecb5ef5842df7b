"""DPO: soft labels become oriented hard pairs; a 2-step run saves a model that loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cai.errors import ConfigError
from cai.train.dpo import DPOOptions, balanced_order, hard_label_pairs, label_noise, train_dpo

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


def pair(i: int, p: float) -> dict:
    return {
        "id": f"p{i}",
        "prompt": [{"role": "user", "content": f"Can you help me with task {i}?"}],
        "chosen": [{"role": "assistant", "content": f"Yes, safely: step one for task {i}."}],
        "rejected": [{"role": "assistant", "content": f"No idea about {i}."}],
        "p_chosen": p, "p_a_first": p, "p_a_second": 1 - p, "principle_id": "helpful", "judge": "tiny",
        "provenance": {"stage": "label", "model": "tiny", "seed": 0,
                       "constitution": {"name": "c", "version": "2", "hash": "d00d"}},
    }


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair(i, 0.6 + 0.05 * i)) + "\n" for i in range(6)))
    return path


def test_soft_labels_become_oriented_hard_pairs():
    rows = [{"prompt": [], "chosen": ["a"], "rejected": ["b"], "p_chosen": p} for p in (1.0, 0.55, 0.2)]
    out = hard_label_pairs(rows, min_confidence=0.6)
    assert [(r["chosen"], r["rejected"]) for r in out] == [(["a"], ["b"]), (["b"], ["a"])]  # 0.55 dropped
    assert set(out[0]) == {"prompt", "chosen", "rejected"}  # only what DPOTrainer needs


def test_all_pairs_too_unsure_is_a_config_error(pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="min_confidence"):
        train_dpo(pairs_file, tmp_path / "dpo", model="unused", options=DPOOptions(min_confidence=0.99))


def test_two_steps_from_the_cli_save_a_model_that_loads(tiny_model_dir, pairs_file, tmp_path):
    import torch
    from typer.testing import CliRunner

    from cai.cli import app
    from cai.models import load_causal_lm, resolve

    out = tmp_path / "dpo"
    args = ["dpo", str(pairs_file), "--out", str(out), "--model", str(tiny_model_dir), "--max-steps", "2",
            "--batch-size", "2", "--beta", "0.2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "DPO policy written to" in result.output
    card = json.loads((out / "cai_model.json").read_text())
    assert card["stage"] == "dpo" and card["options"]["beta"] == 0.2 and card["metrics"]["steps"] == 2
    assert (card["metrics"]["pairs_used"], card["metrics"]["pairs_seen"]) == (6, 4)  # 2 steps of 2 of 6 pairs
    assert card["constitution"]["hash"] == "d00d"
    assert card["metrics"]["final_loss"] == pytest.approx(math.log(2), abs=0.05)  # starts at log 2
    # the soft labels (p 0.6 to 0.85) set the robust loss's flip probability
    assert card["metrics"]["label_smoothing"] == pytest.approx(1 - sum(0.6 + 0.05 * i for i in range(6)) / 6, abs=1e-3)
    model = load_causal_lm(resolve(str(out)), dtype=torch.float32, device="cpu")
    assert model.config.vocab_size > 0


def test_lora_dpo_is_merged(tiny_model_dir, pairs_file, tmp_path):
    out = train_dpo(pairs_file, tmp_path / "dpo-lora", model=str(tiny_model_dir),
                    options=DPOOptions(max_steps=1, batch_size=2, lora=True, lora_r=4))
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()



def test_label_noise_is_the_kept_pairs_mean_uncertainty():
    rows = [{"p_chosen": 0.9}, {"p_chosen": 0.3}, {"p_chosen": 0.5}]
    assert label_noise(rows, min_confidence=0.55) == pytest.approx(1 - (0.9 + 0.7) / 2)
    assert label_noise([{"p_chosen": 1.0}]) == 0.0  # hard labels: plain DPO


def test_balanced_order_spreads_each_label_source_over_every_stretch():
    groups = ["revision"] * 30 + ["answer"] * 30 + ["judge"] * 15
    order = balanced_order(groups, seed=3)
    assert sorted(order) == list(range(75)) and order == balanced_order(groups, seed=3)
    assert order != balanced_order(groups, seed=4)
    for start in range(0, 75, 15):  # each batch-sized stretch holds about 6 / 6 / 3
        stretch = [groups[i] for i in order[start:start + 15]]
        assert all(abs(stretch.count(g) - n) <= 1 for g, n in (("revision", 6), ("answer", 6), ("judge", 3)))


def test_equal_shares_give_every_label_source_the_same_count_until_the_smaller_runs_out():
    groups = ["answer"] * 40 + ["revision"] * 10
    order = balanced_order(groups, seed=1, equal=True)
    assert sorted(order) == list(range(50)) and order == balanced_order(groups, seed=1, equal=True)
    for start in range(0, 20, 4):  # while both last: 2 and 2 in every 4 (one straddling pair at most)
        stretch = [groups[i] for i in order[start:start + 4]]
        assert abs(stretch.count("revision") - 2) <= 1
    assert [groups[i] for i in order[:20]].count("revision") == 10
    assert all(groups[i] == "answer" for i in order[20:])


def test_pairs_from_two_sources_train_in_balanced_batches(tiny_model_dir, tmp_path, caplog):
    import logging

    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No.", "judge": "ab"[i % 2]}
            for i in range(8)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.INFO, logger="cai.train.dpo"):
        train_dpo(path, tmp_path / "dpo", model=str(tiny_model_dir), options=DPOOptions(max_steps=1, batch_size=2))
    assert "2 label sources in balanced batches" in caplog.text


def test_conservative_loss_is_the_weighted_sum_of_trls_sigmoid_and_robust_losses():
    import torch
    import torch.nn.functional as F

    from cai.train.dpo import conservative_dpo_loss, dpo_loss_args

    margin = torch.linspace(-4, 4, 9)
    for eps in (0.05, 0.2, 0.4):
        args = dpo_loss_args("conservative", eps)
        assert args["loss_type"] == ["sigmoid", "robust"] and args["label_smoothing"] == eps
        sigmoid = -F.logsigmoid(margin)  # TRL 1.16's two losses, as its DPOTrainer writes them
        robust = (-(1 - eps) * F.logsigmoid(margin) + eps * F.logsigmoid(-margin)) / (1 - 2 * eps)
        w = args["loss_weights"]
        assert torch.allclose(w[0] * sigmoid + w[1] * robust, conservative_dpo_loss(margin, eps), atol=1e-6)
        # its minimum sits where the model's preference matches the soft label: sigmoid(margin) = 1 - eps
        grid = torch.linspace(-8, 8, 16001)
        best = grid[conservative_dpo_loss(grid, eps).argmin()]
        assert torch.sigmoid(best).item() == pytest.approx(1 - eps, abs=1e-3)
    assert dpo_loss_args("conservative", 0.0) == {}  # hard labels: TRL's plain sigmoid loss
    assert dpo_loss_args("robust", 0.1) == {"loss_type": ["robust"], "label_smoothing": 0.1}


def test_the_sft_term_joins_whichever_dpo_loss_runs():
    from cai.train.dpo import dpo_loss_args

    assert dpo_loss_args("conservative", 0.0, sft_weight=0.5) == {"loss_type": ["sigmoid", "sft"],
                                                                   "loss_weights": [1.0, 0.5]}
    both = dpo_loss_args("conservative", 0.1, sft_weight=1.0)
    assert both["loss_type"] == ["sigmoid", "robust", "sft"] and both["loss_weights"][2] == 1.0
    assert dpo_loss_args("robust", 0.1, sft_weight=2.0)["loss_weights"] == [1.0, 2.0]


def chosen_log_likelihood(model_dir: Path, rows: list[dict]) -> float:
    """Mean log-probability per token of each row's chosen answer after its prompt, under ``model_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total = 0.0
    for row in rows:
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        answer = row["chosen"][0]["content"]
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + tok(answer, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        total += logps[torch.arange(len(targets)), targets][len(p) - 1:].mean().item()
    return total / len(rows)


def test_the_sft_term_keeps_the_chosen_answers_likely(tiny_model_dir, tmp_path):
    """Same pairs, seed and steps: with the SFT term the chosen answers end more likely than with DPO alone
    (which trains only the difference between chosen and rejected)."""
    rows = [pair(i, 1.0) for i in range(8)]
    path = tmp_path / "hard.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    likelihood = {}
    for weight in (0.0, 1.0):
        out = train_dpo(path, tmp_path / f"dpo-{weight}", model=str(tiny_model_dir),
                        options=DPOOptions(max_steps=4, batch_size=4, learning_rate=5e-3, beta=0.5, balance=False,
                                           sft_weight=weight))
        likelihood[weight] = chosen_log_likelihood(out, rows)
    assert likelihood[1.0] > likelihood[0.0] + 0.05, likelihood


def test_dpo_learns_the_preference_on_a_tiny_model(tiny_model_dir, tmp_path):
    """Hard pairs, a high learning rate: the reward margin rises and the loss falls below log 2 (a run that
    learned nothing stays at log 2, as the 2-step test above does)."""
    path = tmp_path / "hard.jsonl"
    path.write_text("".join(json.dumps(pair(i, 1.0)) + "\n" for i in range(8)))
    out = train_dpo(path, tmp_path / "dpo", model=str(tiny_model_dir),
                    options=DPOOptions(max_steps=6, batch_size=4, learning_rate=5e-3, beta=0.5, balance=False))
    metrics = json.loads((out / "cai_model.json").read_text())["metrics"]
    assert metrics["label_smoothing"] == 0.0
    assert metrics["final_loss"] < math.log(2) - 0.1 and metrics["final_reward_margin"] > 0.1
