"""PPO: the pure pieces on hand-made tensors, then whole runs on a tiny model with a plain reward function."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cai.train import ppo_losses as L
from cai.train.ppo_data import batch_indices
from cai.train.ppo_policy import response_mask
from cai.train.ppo_signals import boilerplate_share, kl_jump, length_drift

# ---- pure functions ----------------------------------------------------------------------------------


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.1, 0.2, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2 ends after two tokens
    adv, ret = L.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 1: d2 = 1 - .3 = .7; d1 = .3 - .4 = -.1, A1 = -.1 + .5 * .7 = .25; d0 = .4 - .5, A0 = -.1 + .125
    assert adv[0].tolist() == pytest.approx([0.025, 0.25, 0.7])
    assert ret[0].tolist() == pytest.approx([0.525, 0.65, 1.0])
    # row 2: the padding's reward and value are ignored: A1 = 2 - .2 = 1.8, A0 = (.2 - .1) + .5 * 1.8 = 1.0
    assert adv[1].tolist() == pytest.approx([1.0, 1.8, 0.0])
    assert ret[1].tolist() == pytest.approx([1.1, 2.0, 0.0])


def test_gae_with_gamma_discounts_future_rewards():
    rewards, values, mask = torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2)
    adv, _ = L.gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.9, 1.0])


def test_policy_loss_clips_outside_the_band_and_counts_it():
    old = torch.zeros(1, 4)
    # ratios 1.5 (A>0: clipped), 1.1 (A>0: inside), 0.5 (A<0: clipped), 1.5 (A<0: pessimistic, not clipped)
    logp = torch.log(torch.tensor([[1.5, 1.1, 0.5, 1.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, clipfrac = L.policy_loss(logp, old, adv, torch.ones(1, 4), clip_range=0.2)
    loss.backward()
    grad = logp.grad[0]
    assert grad[0] == 0 and grad[2] == 0  # outside the band in the advantage's direction: no gradient
    assert grad[1] < 0 and grad[3] > 0  # inside: push up good tokens, down bad ones
    assert clipfrac.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx((-1.2 - 1.1 + 0.8 + 1.5) / 4, abs=1e-6)


def test_policy_loss_ignores_padding():
    logp = torch.tensor([[0.0, 5.0]]).requires_grad_()
    loss, clipfrac = L.policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert loss.item() == pytest.approx(-1.0) and clipfrac.item() == 0.0
    assert logp.grad[0, 1] == 0


def test_value_loss_clips_the_new_value_near_the_old_one():
    old, returns = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[0.5, 0.1]]).requires_grad_()
    loss, clipfrac = L.value_loss(values, old, returns, torch.ones(1, 2), clip_range_value=0.2)
    loss.backward()
    # token 1 moved 0.5 > 0.2 towards the return: the clipped error (0.8^2) is larger and counts (no grad)
    assert values.grad[0, 0] == 0 and values.grad[0, 1] < 0
    assert clipfrac.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)


def test_kl_penalty_lowers_the_reward_when_the_policy_moves_away_from_the_reference():
    ref = torch.log(torch.full((2, 3), 0.1))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([1.0, 2.0])
    same, kl_same = L.per_token_rewards(scores, ref.clone(), ref, mask, kl_coef=0.1)
    assert kl_same.abs().sum() == 0
    assert same.flatten().tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0, 2.0, 0.0])  # score on the last real token
    moved, kl = L.per_token_rewards(scores, ref + 0.5, ref, mask, kl_coef=0.1)
    assert (kl.sum(1) > 0).all()
    assert (moved * mask < same * mask).sum() == int(mask.sum())  # every real token pays the penalty
    assert moved[1, 2] == 0  # padding gets nothing


def test_kl_estimators():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert L.kl_k1(logp, ref)[0].tolist() == pytest.approx([0.5, -1.0])
    k3 = L.kl_k3(logp, ref)
    assert (k3 >= 0).all() and L.kl_k3(ref, ref).abs().max() == 0
    assert k3[0, 0].item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)


def test_whitening_uses_only_real_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    w = L.masked_whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.std().item() == pytest.approx(1.0, abs=1e-4)
    assert (w[~mask.bool()] == 0).all()
    assert L.masked_mean(x, mask).item() == pytest.approx(3.0)


def test_logprobs_and_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    logp = L.logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    assert logp[0, 0].item() == pytest.approx(math.log(0.5))
    assert logp[0, 1].item() == pytest.approx(2 - math.log(math.exp(2) + 1))
    assert L.entropy_from_logits(logits)[0, 0].item() == pytest.approx(math.log(2))
    hot = L.logprobs_from_logits(logits, torch.tensor([[1, 0]]), temperature=2.0)
    assert hot[0, 1].item() == pytest.approx(1 - math.log(math.exp(1) + 1))


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    high = L.AdaptiveKLController(0.1, target=6.0, horizon=100)
    high.update(12.0, n_steps=10)  # KL above target: penalise more (error clipped to +20%)
    assert high.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    low = L.AdaptiveKLController(0.1, target=6.0, horizon=100)
    low.update(3.0, n_steps=10)
    assert low.value < 0.1
    fixed = L.FixedKLController(0.1)
    fixed.update(100.0, n_steps=10)
    assert fixed.value == 0.1


def test_response_mask_keeps_tokens_up_to_the_first_end_token():
    responses = torch.tensor([[5, 6, 2, 9, 2], [5, 5, 5, 5, 5]])
    assert response_mask(responses, {2}).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_batch_indices_cover_every_prompt_each_epoch_and_repeat_per_seed():
    first_epoch = batch_indices(6, 3, 1, seed=0) + batch_indices(6, 3, 2, seed=0)
    assert sorted(first_epoch) == list(range(6))
    assert batch_indices(6, 4, 2, seed=0) == batch_indices(6, 4, 2, seed=0)
    assert len(batch_indices(5, 4, 3, seed=1)) == 4


def test_reward_hacking_signals():
    boiler = "I'm sorry, but I cannot help with that request."
    assert boilerplate_share([boiler + " A.", boiler + " B.", "Sure, here is a poem.", "Cats sleep a lot."]) == 0.5
    assert boilerplate_share(["one two three", "four five six"]) == 0.0
    assert length_drift(30.0, 20.0) == pytest.approx(0.5)
    assert kl_jump(10.0, [0.0, 1.0, 2.0, 1.0]) and not kl_jump(2.5, [1.0, 2.0, 1.0]) and not kl_jump(9.0, [0.1])


def test_options_reject_unknown_keys_and_uneven_minibatches():
    from pydantic import ValidationError

    from cai.train.ppo import PPOOptions

    with pytest.raises(ValidationError):
        PPOOptions(klcoef=0.1)
    with pytest.raises(ValidationError):
        PPOOptions(batch_size=6, mini_batch_size=4)


# ---- whole runs on a tiny model -------------------------------------------------------------------------

WORDS = ["yes", "no", "maybe", "ok", "sure"]


pytestmark = pytest.mark.usefixtures("one_thread")  # ~10x faster than two contended threads here


@pytest.fixture(scope="module")
def babbler_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama that says only a handful of tokens (five words and the end token), uniformly.

    One residual dimension is constant (set in every token embedding) and only those six tokens'
    output rows read it, so every other token's logit is ~17 lower. PPO then has a small action set
    in which a reward on one word is quick to learn.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    allowed = [_word_id(tokenizer, w) for w in WORDS] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[allowed, 0] = 3.0
    out = tmp_path_factory.mktemp("babbler")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _word_id(tokenizer, word: str) -> int:
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (word, ids)
    return ids[0]


def count_yes(prompts, responses):
    """+1 per occurrence of the word "yes" in the response."""
    return torch.tensor([float(r.split().count("yes")) for r in responses])


PROMPTS = [f"Question {i}: shall we?" for i in range(8)]


def _opts(**kw):
    from cai.train.ppo import PPOOptions

    base = dict(max_steps=12, batch_size=8, mini_batch_size=4, ppo_epochs=2, learning_rate=3e-3, max_new_tokens=12,
                temperature=1.0, beta=0.01, dtype="fp32", seed=0)
    return PPOOptions(**{**base, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_learns_a_simple_reward_on_a_tiny_model(tmp_path, babbler_dir):
    from cai.models import resolve
    from cai.train.ppo import train_ppo

    policy_dir = train_ppo(PROMPTS, count_yes, tmp_path, policy=str(babbler_dir), options=_opts(max_steps=8))
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    first, last = sum(r["reward"] for r in rows[:3]) / 3, sum(r["reward"] for r in rows[-3:]) / 3
    assert last > first + 1.0, [round(r["reward"], 2) for r in rows]
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["policy_loss"]) for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout comes from the reference itself
    assert rows[-1]["kl"] > 0.1
    for key in ("reward_std", "kl_k3", "kl_coef", "entropy", "clipfrac", "value_loss", "approx_kl",
                "response_len", "boilerplate_share", "length_drift", "kl_jump", "time"):
        assert key in rows[-1]
    card = json.loads((policy_dir / "cai_model.json").read_text())
    assert card["stage"] == "ppo" and card["model_id"].startswith(resolve(str(babbler_dir)).model_id + "+ppo")
    assert resolve(str(policy_dir)).model_id == card["model_id"]
    assert (tmp_path / "cai.log").is_file() and (tmp_path / "checkpoint" / "state.json").is_file()


def _babbler_rollouts(babbler_dir, tokenizer, prompts, *, lean: bool, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from cai.train.ppo_policy import eos_token_ids, sample_responses, sample_responses_lean

    model = AutoModelForCausalLM.from_pretrained(babbler_dir, dtype=torch.float32).eval()
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, eos_ids=eos_token_ids(tokenizer, model))
    torch.manual_seed(seed)
    if lean:
        return sample_responses_lean(model, tokenizer, msgs, **kw, seed=seed), kw["eos_ids"]
    return sample_responses(model, tokenizer, msgs, **kw), kw["eos_ids"]


def test_lean_rollouts_are_laid_out_like_generate_rollouts(babbler_dir, tokenizer):
    prompts = PROMPTS[:3] + [PROMPTS[0]] * 3  # one prompt four times in the batch
    lean, eos_ids = _babbler_rollouts(babbler_dir, tokenizer, prompts, lean=True)
    hf, _ = _babbler_rollouts(babbler_dir, tokenizer, prompts, lean=False)
    q = lean.query_len
    assert q == hf.query_len
    assert torch.equal(lean.input_ids[:, :q], hf.input_ids[:, :q])
    assert torch.equal(lean.attention_mask[:, :q], hf.attention_mask[:, :q])
    allowed = {_word_id(tokenizer, w) for w in WORDS} | eos_ids
    responses = lean.input_ids[:, q:]
    for b in range(len(prompts)):
        kept = responses[b][lean.mask[b].bool()].tolist()
        assert kept and set(kept) <= allowed
        assert not any(t in eos_ids for t in kept[:-1])  # the mask ends at the first end token
        assert bool(lean.ended[b]) == (kept[-1] in eos_ids)
        assert len(kept) == 12 or lean.ended[b]
        assert torch.equal(lean.attention_mask[b, q:], lean.mask[b].long())
        assert lean.texts[b] == tokenizer.decode(kept, skip_special_tokens=True)
    repeats = {tuple(responses[b][lean.mask[b].bool()].tolist()) for b in (0, 3, 4, 5)}
    assert len(repeats) > 1  # each repeat draws under its own key (a shared key would repeat one response)


def test_lean_rollouts_draw_from_the_policy_distribution(babbler_dir, tokenizer):
    """The babbler says each of its six tokens with probability 1/6 at every position."""
    from collections import Counter

    rollout, _ = _babbler_rollouts(babbler_dir, tokenizer, [f"Prompt {i}" for i in range(48)], lean=True, seed=3)
    tokens = rollout.input_ids[:, rollout.query_len:][rollout.mask.bool()].tolist()
    counts = Counter(tokens)
    assert len(counts) == 6 and len(tokens) > 150
    assert all(0.1 < c / len(tokens) < 0.24 for c in counts.values()), counts


def test_a_large_kl_coef_keeps_the_policy_near_the_reference(tmp_path, babbler_dir):
    from cai.train.ppo import train_ppo

    train_ppo(PROMPTS, count_yes, tmp_path / "free", policy=str(babbler_dir), options=_opts(max_steps=5, beta=0.0))
    train_ppo(PROMPTS, count_yes, tmp_path / "held", policy=str(babbler_dir), options=_opts(max_steps=5, beta=2.0))
    free, held = _metrics(tmp_path / "free")[-1]["kl"], _metrics(tmp_path / "held")[-1]["kl"]
    assert held < free / 2, (held, free)


def test_bf16_compute_starts_at_zero_kl_and_stays_finite(tmp_path, babbler_dir):
    from cai.train.ppo import train_ppo

    train_ppo(PROMPTS, count_yes, tmp_path, policy=str(babbler_dir), options=_opts(max_steps=3, dtype="bf16"))
    rows = _metrics(tmp_path)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # policy and reference see the same bf16 rounding
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["policy_loss"]) for r in rows)


def test_nan_reward_raises_training_diverged(tmp_path, babbler_dir):
    from cai.errors import TrainingDiverged
    from cai.train.ppo import train_ppo

    def nan_reward(prompts, responses):
        return torch.full((len(responses),), float("nan"))

    with pytest.raises(TrainingDiverged, match="step 1"):
        train_ppo(PROMPTS, nan_reward, tmp_path, policy=str(babbler_dir), options=_opts(max_steps=2))
    assert not (tmp_path / "checkpoint").exists()


def test_kl_above_max_kl_raises_training_diverged(tmp_path, babbler_dir):
    from cai.errors import TrainingDiverged
    from cai.train.ppo import train_ppo

    with pytest.raises(TrainingDiverged, match="max_kl"):
        train_ppo(PROMPTS, count_yes, tmp_path, policy=str(babbler_dir),
                  options=_opts(max_steps=12, learning_rate=3e-2, beta=0.0, max_kl=0.5))


def test_resume_continues_at_the_next_step_as_if_never_stopped(tmp_path, babbler_dir):
    from cai.train.ppo import train_ppo

    train_ppo(PROMPTS, count_yes, tmp_path / "straight", policy=str(babbler_dir), options=_opts(max_steps=3))
    resumed = tmp_path / "resumed"
    train_ppo(PROMPTS, count_yes, resumed, policy=str(babbler_dir), options=_opts(max_steps=2, save_every=1))
    with open(resumed / "metrics.jsonl", "a") as f:  # a step logged after the last checkpoint, then a crash
        f.write(json.dumps({"step": 3, "reward": -1.0}) + "\n")
    train_ppo(PROMPTS, count_yes, resumed, policy=str(babbler_dir), options=_opts(max_steps=3))
    rows = _metrics(resumed)
    assert [r["step"] for r in rows] == [1, 2, 3]
    want = _metrics(tmp_path / "straight")[2]
    for key in ("reward", "kl", "policy_loss", "value_loss"):
        assert rows[2][key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    assert "resuming from" in (resumed / "cai.log").read_text()


def test_resuming_with_another_kind_of_policy_is_a_model_error(tmp_path, babbler_dir):
    from cai.errors import ModelError
    from cai.train.ppo import train_ppo

    train_ppo(PROMPTS, count_yes, tmp_path, policy=str(babbler_dir), options=_opts(max_steps=1))
    with pytest.raises(ModelError, match="do not fit"):
        train_ppo(PROMPTS, count_yes, tmp_path, policy=str(babbler_dir), options=_opts(max_steps=2, lora=True))


def test_lora_uses_the_base_model_as_reference(tmp_path, babbler_dir):
    from cai.train.ppo import train_ppo

    policy_dir = train_ppo(PROMPTS, count_yes, tmp_path, policy=str(babbler_dir),
                           options=_opts(max_steps=2, lora=True, lora_r=4))
    rows = _metrics(tmp_path)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert (policy_dir / "config.json").is_file() and not (policy_dir / "adapter_config.json").exists()


def test_sl_term_is_mixed_into_the_updates(tmp_path, babbler_dir):
    from cai.train.ppo import train_ppo

    sl = tmp_path / "sft.jsonl"
    sl.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                   {"role": "assistant", "content": "yes yes"}]}) + "\n"
                          for i in range(3)))
    from safetensors.torch import load_file

    train_ppo(PROMPTS, count_yes, tmp_path / "run", policy=str(babbler_dir), options=_opts(max_steps=4, sl_coef=1.0),
              sl_data=sl)
    rows = _metrics(tmp_path / "run")
    assert all(r["sl_loss"] is not None and math.isfinite(r["sl_loss"]) for r in rows)
    assert rows[-1]["sl_loss"] < rows[0]["sl_loss"]  # the SL term is learned
    train_ppo(PROMPTS, count_yes, tmp_path / "rl-only", policy=str(babbler_dir), options=_opts(max_steps=4))
    with_sl, without = (load_file(str(tmp_path / d / "policy" / "model.safetensors")) for d in ("run", "rl-only"))
    assert any(not torch.equal(with_sl[k], without[k]) for k in with_sl)  # and it moves the update


def test_missing_reward_model_fails_before_writing_anything(tmp_path, babbler_dir):
    from cai.errors import ModelError
    from cai.train.ppo import train_ppo

    out = tmp_path / "out"
    with pytest.raises(ModelError, match="does not exist"):
        train_ppo(PROMPTS, tmp_path / "no-such-rm", out, policy=str(babbler_dir), options=_opts(max_steps=1))
    assert not out.exists()


def test_cli_runs_ppo_with_a_reward_model_directory(tmp_path, babbler_dir, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from typer.testing import CliRunner

    from cai.cli import app

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    rm_dir = tmp_path / "rm"
    LlamaForSequenceClassification(config).save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["ppo", str(prompts), "--reward-model", str(rm_dir), "--out", str(out),
                                      "--policy", str(babbler_dir), "--max-steps", "2", "--batch-size", "4",
                                      "--max-new-tokens", "8", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    rows = _metrics(out)
    assert len(rows) == 2 and all(math.isfinite(r["reward"]) for r in rows)
    assert (out / "policy" / "config.json").is_file()


@pytest.mark.slow
def test_one_step_on_the_embedded_model(tmp_path, embedded_model_dir):
    from cai.train.ppo import train_ppo

    def shorter_is_better(prompts, responses):
        return torch.tensor([-len(r.split()) / 10 for r in responses])

    train_ppo(PROMPTS[:2], shorter_is_better, tmp_path, policy=str(embedded_model_dir),
              options=_opts(max_steps=1, batch_size=2, mini_batch_size=2, ppo_epochs=1, learning_rate=1e-6,
                            max_new_tokens=8, dtype="auto"))
    row = _metrics(tmp_path)[0]
    assert row["kl"] == pytest.approx(0.0, abs=1e-3) and math.isfinite(row["policy_loss"])
    assert (tmp_path / "policy" / "model.safetensors").is_file()


def test_the_reference_with_bf16_linear_weights_scores_exactly_like_an_fp32_copy_under_autocast(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from cai.train.ppo_policy import _frozen_copy, forward_response

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    full, lean = _frozen_copy(model), _frozen_copy(model, linear_dtype=torch.bfloat16)
    assert next(lean.get_decoder().layers[0].mlp.parameters()).dtype == torch.bfloat16
    assert lean.get_input_embeddings().weight.dtype == torch.float32  # embeddings (the tied head) stay fp32
    ids = torch.randint(0, 1000, (2, 12))
    attn = torch.ones_like(ids)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = forward_response(full, None, ids, attn, 5, 1.0)["logp"]
        b = forward_response(lean, None, ids, attn, 5, 1.0)["logp"]
    assert torch.equal(a, b)


def test_the_rollout_snapshot_in_bf16_of_an_fp32_policy_equals_one_of_a_bf16_copy(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from cai.backends.engine import LlamaEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    direct = LlamaEngine.from_model(model, dtype=torch.bfloat16)
    copy = _frozen(model).to(torch.bfloat16)  # the bf16 rollout copy PPO used to keep
    assert copy.model.rotary_emb.inv_freq.dtype == torch.bfloat16  # .to() had rounded its rotary frequencies
    copy.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq  # the snapshot keeps them fp32
    via_copy = LlamaEngine.from_model(copy)
    tokens, where, pos = torch.tensor([5, 6, 7]), torch.zeros(3, dtype=torch.long), torch.arange(3)
    logits = [e.prefill(tokens, where, pos, e.new_cache(1, 4, filled=[3]).rows(0, 1)) for e in (direct, via_copy)]
    assert direct.dtype == torch.bfloat16 and torch.equal(logits[0], logits[1])


def _frozen(model):
    import copy

    return copy.deepcopy(model)


def test_micro_batches_make_the_same_update_as_whole_minibatches(tmp_path, babbler_dir):
    """Passes of 1 rollout (and 1 SL row) accumulate to the same gradients as passes of the whole minibatch:
    each pass's loss is weighted by its share of the minibatch's tokens."""
    from safetensors.torch import load_file

    from cai.train.ppo import train_ppo

    sl = tmp_path / "sft.jsonl"
    sl.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                   {"role": "assistant", "content": "yes " * (i + 1)}]}) + "\n"
                          for i in range(4)))
    runs = {}
    for micro in (4, 1):
        out = tmp_path / f"micro{micro}"
        train_ppo(PROMPTS, count_yes, out, policy=str(babbler_dir), sl_data=sl,
                  options=_opts(max_steps=2, sl_coef=0.5, micro_batch_size=micro))
        runs[micro] = (_metrics(out), load_file(str(out / "policy" / "model.safetensors")))
    (whole, w_whole), (parts, w_parts) = runs[4], runs[1]
    for a, b in zip(whole, parts, strict=True):
        for key in ("reward", "policy_loss", "value_loss", "sl_loss", "grad_norm", "approx_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key
    moved = [k for k in w_whole if not torch.equal(w_whole[k], load_file(
        str(babbler_dir / "model.safetensors"))[k])]
    assert moved  # the update did something to compare
    for k in moved:
        assert torch.allclose(w_parts[k], w_whole[k], rtol=1e-3, atol=1e-5), k


def test_the_guard_chooses_the_ppo_micro_batch_and_counts_the_other_models(monkeypatch, tmp_path, babbler_dir):
    from cai import guard
    from cai.train.ppo import train_ppo

    monkeypatch.setattr(guard, "room", lambda: (None, "test"))  # unlimited: the cap (4), a divisor of 4
    guard.recorded.clear()
    train_ppo(PROMPTS, count_yes, tmp_path / "a", policy=str(babbler_dir), options=_opts(max_steps=1))
    full = guard.recorded[-1]
    assert full.stage == "ppo" and full.micro_batch == 4
    assert {"reference", "rollout weights", "logits", "activations"} <= set(full.parts)
    lora = guard.fit_rl("ppo", guard.shape_of(babbler_dir), *_tokenizer_and_prompts(babbler_dir), batch_size=4,
                        wanted=None, max_new_tokens=12, lora=True, checkpointing=False, extra={}, fix="x")
    assert lora.total < full.total  # no reference, no rollout copy, adapters' optimizer state only


def _tokenizer_and_prompts(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), [[{"role": "user", "content": p}] for p in PROMPTS]


def test_ppo_that_does_not_fit_stops_before_loading_anything(tmp_path, babbler_dir):
    import os
    import subprocess
    import sys

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    run = subprocess.run([sys.executable, "-m", "cai", "ppo", str(prompts), "--reward-model", str(babbler_dir),
                          "--out", str(tmp_path / "run"), "--policy", str(babbler_dir), "--max-steps", "1"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "CAI_MEMORY_LIMIT": "200"})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "stage ppo needs about" in run.stderr and "ppo.micro_batch_size" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "run" / "metrics.jsonl").exists()
