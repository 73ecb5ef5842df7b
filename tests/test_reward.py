"""The reward model: the soft Bradley-Terry loss, bad input, learning a preference, load/score round trip."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cai.errors import ConfigError, ModelError
from cai.train.data import read_preference_pairs
from cai.train.reward import (
    RewardOptions,
    load_reward_model,
    reward_input_ids,
    score_responses,
    soft_bradley_terry_loss,
    split_pairs,
    train_reward,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- the loss ----------------------------------------------------------------------------------


def test_soft_loss_at_p1_is_the_hard_bradley_terry_loss():
    import torch
    import torch.nn.functional as F

    r_c, r_r = torch.randn(16), torch.randn(16)
    hard = -F.logsigmoid(r_c - r_r).mean()
    assert torch.allclose(soft_bradley_terry_loss(r_c, r_r, torch.ones(16)), hard)


def test_soft_loss_is_symmetric_and_flat_at_p_half():
    import torch

    r_c, r_r, half = torch.randn(8), torch.randn(8), torch.full((8,), 0.5)
    assert torch.allclose(soft_bradley_terry_loss(r_c, r_r, half), soft_bradley_terry_loss(r_r, r_c, half))
    margin = torch.zeros(4, requires_grad=True)
    soft_bradley_terry_loss(margin, torch.zeros(4), torch.full((4,), 0.5)).backward()
    assert torch.allclose(margin.grad, torch.zeros(4))  # no preference gradient at margin 0


def test_chosen_preferred_gives_lower_loss():
    import torch

    p = torch.tensor([0.9])
    assert soft_bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), p) < \
        soft_bradley_terry_loss(torch.tensor([0.0]), torch.tensor([2.0]), p)


def test_soft_loss_is_minimised_at_the_labels_log_odds():
    import torch

    p = 0.8
    margin = torch.tensor([math.log(p / (1 - p))], requires_grad=True)
    soft_bradley_terry_loss(margin, torch.zeros(1), torch.tensor([p])).backward()
    assert abs(margin.grad.item()) < 1e-6  # a soft label asks for a finite margin, not an infinite one


# ---- data ----------------------------------------------------------------------------------------


def pair(i: int, chosen: str, rejected: str, p: float | None = 0.9) -> dict:
    row = {
        "id": f"p{i}",
        "prompt": [{"role": "user", "content": f"Question {i}?"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_a_first": 0.9, "p_a_second": 0.1, "principle_id": "harmless", "judge": "tiny",
        "provenance": {"stage": "label", "model": "tiny", "seed": 0,
                       "constitution": {"name": "c", "version": "1", "hash": "beef"}},
    }
    if p is not None:
        row["p_chosen"] = p
    return row


def test_plain_string_pairs_are_hard_labels(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"prompt": "Q?", "chosen": "good", "rejected": "bad"}])
    (row,) = read_preference_pairs(path).rows
    assert row == {"prompt": [{"role": "user", "content": "Q?"}],
                   "chosen": [{"role": "assistant", "content": "good"}],
                   "rejected": [{"role": "assistant", "content": "bad"}], "p_chosen": 1.0}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda r: r.pop("chosen"), "no `chosen`"),
        (lambda r: r.update(rejected=[{"role": "assistant", "content": ""}]), "rejected[0].content"),
        (lambda r: r.update(p_chosen=1.5), "p_chosen"),
        (lambda r: r.update(p_chosen="high"), "p_chosen"),
        (lambda r: r.update(prompt=[{"role": "narrator", "content": "x"}]), "prompt[0]"),
    ],
)
def test_bad_pairs_name_file_line_and_field_and_write_nothing(tmp_path, change, needle):
    rows = [pair(0, "a", "b"), pair(1, "c", "d")]
    change(rows[1])
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        train_reward(path, tmp_path / "rm", model="unused")
    assert needle in str(err.value) and f"{path}:2" in str(err.value)
    assert not (tmp_path / "rm").exists()


def test_missing_pairs_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_preference_pairs(tmp_path / "nope.jsonl")


def test_split_is_seeded_and_holds_out_at_least_one_pair():
    rows = [{"i": i} for i in range(20)]
    train, held = split_pairs(rows, 0.1, seed=3)
    assert (len(train), len(held)) == (18, 2)
    assert split_pairs(rows, 0.1, seed=3) == (train, held)
    assert len(split_pairs(rows[:4], 0.1, seed=0)[1]) == 1
    assert len(split_pairs(rows[:3], 0.1, seed=0)[1]) == 0
    assert len(split_pairs(rows, 0.0, seed=0)[1]) == 0


def test_too_long_inputs_lose_the_start_of_the_prompt(tokenizer):
    prompt = [{"role": "user", "content": "word " * 200}]
    full = reward_input_ids(tokenizer, prompt, "the answer", max_length=10_000)
    cut = reward_input_ids(tokenizer, prompt, "the answer", max_length=32)
    assert cut == full[-32:] and len(full) > 32


# ---- training and scoring ------------------------------------------------------------------------

WORDS = "apple river stone cloud music paper green light table window garden yellow silver ocean".split()


def marker_pairs(n: int, seed: int = 0) -> list[dict]:
    """Answers ending in the marker word "sorry" are preferred (p = 0.9); the rest is random words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = (" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(2))
        rows.append(pair(i, a + " sorry", b))
    return rows


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    pairs = write_jsonl(tmp / "pairs.jsonl", marker_pairs(40))
    options = RewardOptions(epochs=2, batch_size=8, learning_rate=3e-3, eval_fraction=0.25, logging_steps=5)
    report = train_reward(pairs, tmp / "rm", model=str(tiny_model_dir), options=options)
    return report, tmp / "rm"


def test_the_trainer_uses_the_soft_labels(tiny_model_dir, tokenizer, tmp_path):
    import torch
    import torch.nn.functional as F

    from cai.models import resolve
    from cai.train.reward import build_reward_trainer, load_reward_base

    rows = read_preference_pairs(write_jsonl(tmp_path / "p.jsonl", [pair(0, "yes", "no", 0.7),
                                                                     pair(1, "ok", "hmm", 0.6)])).rows
    model = load_reward_base(resolve(str(tiny_model_dir)), tokenizer, torch.float32)
    trainer = build_reward_trainer(model, tokenizer, rows, tmp_path / "scratch", RewardOptions(max_steps=1))
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert batch["p_chosen"].tolist() == pytest.approx([0.7, 0.6])
    with torch.no_grad():
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        r_c, r_r = scores.chunk(2)
        loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx(soft_bradley_terry_loss(r_c, r_r, batch["p_chosen"]).item(), rel=1e-5)
    assert loss.item() != pytest.approx(-F.logsigmoid(r_c - r_r).mean().item(), rel=1e-3)


def test_a_tiny_reward_model_learns_a_simple_preference(trained):
    report, out = trained
    assert (report.n_train, report.n_eval) == (30, 10)
    assert report.eval_accuracy > 0.8
    assert json.loads((out / "metrics.json").read_text())["eval_accuracy"] == report.eval_accuracy
    card = json.loads((out / "cai_model.json").read_text())
    assert card["stage"] == "reward" and card["constitution"]["hash"] == "beef"


def test_load_and_score_round_trip(trained, tiny_model_dir):
    import torch

    _, out = trained
    model, tokenizer = load_reward_model(out, device="cpu")
    prompts = [[{"role": "user", "content": "Question?"}]] * 3
    responses = ["apple stone sorry", "apple stone", "a much longer answer " * 5]
    scores = score_responses(model, tokenizer, prompts, responses, batch_size=8)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and not scores.requires_grad
    one_by_one = score_responses(model, tokenizer, prompts, responses, batch_size=1)
    assert torch.allclose(scores, one_by_one, atol=1e-4)  # right-padding does not change a score
    assert scores[0] > scores[1]  # the learned preference


def test_load_reward_model_refuses_what_is_not_a_reward_model(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_reward_model(tmp_path / "missing")
    with pytest.raises(ModelError, match="not a reward model"):
        load_reward_model(tiny_model_dir)


def test_cli_prints_held_out_accuracy(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(8))
    args = ["reward", str(pairs), "--out", str(tmp_path / "rm"), "--model", str(tiny_model_dir),
            "--max-steps", "1", "--batch-size", "4", "--eval-fraction", "0.25"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "6 train / 2 held-out" in result.output


def test_cli_rejects_bad_options_without_traceback(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(4))
    run = subprocess.run([sys.executable, "-m", "cai", "reward", str(pairs), "--out", str(tmp_path / "rm"),
                          "--eval-fraction", "1.5"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "eval_fraction" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "rm").exists()
