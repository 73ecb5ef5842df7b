"""RLAIF by PPO: optimise the policy against the preference model's score with a KL penalty to the start.

Written by hand: TRL removed its PPO trainer (and its value-head model) in 2026. Each step follows the
recipe of Ziegler et al. (2019) / Stiennon et al. (2020), as used by Bai et al. (2022) for RL-CAI:

1. sample a batch of prompts and a response to each from the current policy (with cai's lean decoder
   over a snapshot of the weights where it supports the model, else with transformers' ``generate``);
2. score each (prompt, response) with the reward model;
3. compute the responses' log-probs under the policy and under the frozen reference, and the values;
4. per-token reward = -beta * KL(policy || reference), plus the score at the last response token;
5. advantages by GAE, whitened over the batch;
6. a few epochs of the clipped PPO objective (+ clipped value loss, - entropy bonus, + optional SL-CAI
   cross-entropy ``L = L_RL + sl_coef * L_SL``) on shuffled minibatches, with gradient clipping;
7. adapt beta (if asked), log the metrics, checkpoint.

The pure pieces live in ``ppo_losses`` (losses, GAE, KL), ``ppo_policy`` (value head, reference,
rollouts), ``ppo_data`` (batches, SL term), ``ppo_signals`` (reward-hacking signals) and
``ppo_checkpoint`` (resume).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.errors import ConfigError, TrainingDiverged
from cai.memory import MIB, peak_rss_bytes

log = logging.getLogger(__name__)

RewardFn = Callable[[list[list[dict]], list[str]], Any]  # (prompts, responses) -> float tensor [n]


class PPOOptions(BaseModel):
    """PPO hyperparameters. Defaults run 8 steps on the embedded 135M model in a few CPU minutes."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(8, ge=1, description="PPO steps, each one batch of rollouts and its updates")
    batch_size: int = Field(8, ge=1, description="prompts (rollouts) per step")
    mini_batch_size: int = Field(4, ge=1, description="rollouts per optimiser step")
    micro_batch_size: int | None = Field(None, ge=1, description=(
        "rollouts per forward/backward pass, a divisor of mini_batch_size (the passes' gradients add up to the "
        "minibatch's); default: the largest that fits in memory, at most 4 (the memory guard)"))
    ppo_epochs: int = Field(2, ge=1, description="passes over each batch of rollouts")
    learning_rate: float = Field(1e-5, gt=0, description="learning rate of the policy and value head (AdamW)")
    max_new_tokens: int = Field(48, ge=1, description="token budget of each rollout")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold of the rollouts")
    beta: float = Field(0.05, ge=0, description="weight of the per-token KL penalty to the reference model")
    adaptive_kl: bool = Field(False, description=(
        "adapt the KL weight towards a target KL (Ziegler et al. 2019) instead of keeping beta"))
    target_kl: float = Field(6.0, gt=0, description="adaptive KL: target per-sequence KL (nats)")
    kl_horizon: int = Field(64, ge=1, description="adaptive KL: rollouts over which beta may move ~20%")
    gamma: float = Field(1.0, ge=0, le=1, description="discount factor")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    clip_range: float = Field(0.2, gt=0, description="PPO's clip range of the policy ratio")
    clip_range_value: float = Field(0.2, gt=0, description="clip range of the value function's update")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    ent_coef: float = Field(0.0, ge=0, description="weight of the entropy bonus")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient norm clip")
    whiten_advantages: bool = Field(True, description="normalise the advantages of each step to mean 0, variance 1")
    sl_coef: float = Field(0.0, ge=0, description=(
        "a: the weight of the SL-CAI loss in L = L_RL + a * L_SL, on the critique stage's SFT data (0: none, as "
        "in the paper's RL step)"))
    lora: bool = Field(False, description="train LoRA adapters instead of every weight")
    lora_r: int = Field(16, ge=1, description="rank of the LoRA adapters")
    seed: int = Field(0, description="seed of prompt order, sampling and initialisation")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    max_kl: float = Field(50.0, gt=0, description="stop if the mean per-sequence KL exceeds this")
    dtype: Literal["auto", "fp32", "bf16"] = Field("auto", description="precision: auto, fp32 or bf16")
    lean_rollouts: bool = Field(True, description="sample rollouts with cai's lean decoder when it supports the "
                                "policy (a Llama, no LoRA); off: transformers' generate")

    @model_validator(mode="after")
    def _minibatches_fit(self) -> PPOOptions:
        if self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of mini_batch_size "
                             f"{self.mini_batch_size}")
        if self.micro_batch_size is not None and self.mini_batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} does not divide mini_batch_size "
                             f"{self.mini_batch_size}")
        return self

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.mini_batch_size


@dataclass
class _Run:
    """Everything one PPO run holds between steps."""

    options: PPOOptions
    out_dir: Path
    prompts: list[list[dict]]
    reward_fn: RewardFn
    tokenizer: Any
    ac: Any  # ppo_policy.ActorCritic
    optimizer: Any
    kl_ctl: Any
    eos_ids: set[int]
    sl_rows: list[dict] | None = None
    lean_rollouts: bool = False  # options.lean_rollouts, where the lean decoder supports the policy
    lean_prepack: bool = True  # the lean decoder's path that passed its self-check here (engine_check)
    history: dict[str, Any] = field(default_factory=lambda: {"first_len": None, "kl": []})
    phase: Any = None  # phase(text): shows what the current step is doing (set by the progress bar)

    def show(self, text: str) -> None:
        if self.phase is not None:
            self.phase(text)


def train_ppo(prompts: list, reward_model: str | Path | RewardFn, out_dir: str | Path,
              policy: str = "smollm2-135m", options: PPOOptions | None = None,
              sl_data: str | Path | None = None, *, device: str | None = None) -> Path:
    """Run PPO and return ``out_dir/policy``, a plain model directory ``cai.models.resolve`` accepts.

    ``prompts``: chat message lists (a plain string is one user turn). ``reward_model``: a reward model
    directory (``cai reward``), or a function ``(prompts, responses) -> tensor [n]`` of scores.
    Re-running with the same ``out_dir`` resumes from ``out_dir/checkpoint``. Writes ``metrics.jsonl``
    (one row per step), ``samples.jsonl`` (every rollout and its score) and ``cai.log``. Under a
    multi-process launcher ``batch_size`` is per process and the main process writes (``ppo_dist``).
    """
    from cai.distributed import is_main
    from cai.jsonl import append_records
    from cai.logs import log_to_run_dir
    from cai.models import default_device, resolve
    from cai.train import ppo_dist
    from cai.train.ppo_checkpoint import save_checkpoint

    options = options or PPOOptions()
    out_dir = Path(out_dir)
    device = device or default_device()
    prompts = _as_prompt_list(prompts)
    source = resolve(policy)  # a wrong policy or reward model fails before anything loads or is written
    options = _fit_memory(source, reward_model, prompts, options, device)
    reward_fn = _reward_function(reward_model, device)
    sl_rows = _read_sl_rows(sl_data, options)

    log_to_run_dir(out_dir)
    ppo_dist.setup()
    run, start = _setup(source, prompts, reward_fn, sl_rows, out_dir, options, device)
    log.info("PPO on %s: %d prompts, steps %d..%d, batch %d, %d new tokens", source.model_id, len(prompts),
             start, options.max_steps, options.batch_size, options.max_new_tokens)
    with _progress_bar(options.max_steps, start - 1) as (show, run.phase):
        for step in range(start, options.max_steps + 1):
            row, samples = ppo_step(run, step)
            samples = ppo_dist.gather(samples)
            if is_main():
                append_records(out_dir / "samples.jsonl", samples)
                append_records(out_dir / "metrics.jsonl", [row])
            show(row)
            log.info("step %d: reward %.3f  kl %.3f  beta %.4f  len %.1f  %.1fs", step, row["reward"],
                     row["kl"], row["kl_coef"], row["response_len"], row["time"])
            if is_main() and (step == options.max_steps or (options.save_every and step % options.save_every == 0)):
                save_checkpoint(out_dir, run.ac, run.optimizer, _run_state(run, step))
    return _save_policy(run, source, reward_model, out_dir)


def ppo_step(run: _Run, step: int) -> tuple[dict[str, Any], list[dict]]:
    """One PPO step (rollouts, scores, advantages, updates); returns its metrics row and samples."""
    import torch

    from cai.distributed import world_size
    from cai.train import ppo_dist
    from cai.train.ppo_data import batch_indices
    from cai.train.ppo_losses import gae, kl_k3, masked_mean, per_token_rewards
    from cai.train.ppo_policy import sample_responses, sample_responses_lean

    o, ac, t0, cpu0 = run.options, run.ac, time.time(), time.process_time()
    step_seed = o.seed * 1_000_003 + step
    torch.manual_seed(step_seed)  # each step's sampling depends on (seed, step) only

    # 1. a batch of prompts, and one sampled response to each
    run.show(f"step {step}: sampling {o.batch_size} rollouts")
    indices = batch_indices(len(run.prompts), o.batch_size * world_size(), step, o.seed)
    prompts = [run.prompts[i] for i in ppo_dist.my_share(indices)]
    sampling = {"max_new_tokens": o.max_new_tokens, "temperature": o.temperature, "top_p": o.top_p,
                "eos_ids": run.eos_ids}
    if run.lean_rollouts:
        rollout = sample_responses_lean(ac.rollout_model, run.tokenizer, prompts, **sampling, seed=step_seed,
                                        dtype=ac.rollout_dtype, prepack=run.lean_prepack)
    else:
        rollout = sample_responses(ac.rollout_model, run.tokenizer, prompts, **sampling)
    mask = rollout.mask

    # 2. the reward model's score of each response
    run.show(f"step {step}: scoring the rollouts")
    scores = torch.as_tensor(run.reward_fn(prompts, rollout.texts), dtype=torch.float32).to(mask.device)
    _check_finite(run, step, "reward model score", scores.mean().item())

    # 3. log-probs under the policy (the "old" policy of this step) and the reference, and values
    old = _score_rollout(run, rollout)
    t_rollout = time.time() - t0

    # 4. per-token reward: -beta * k1 on every token, the score on the last one
    beta = run.kl_ctl.value
    rewards, kl = per_token_rewards(scores, old["logp"], old["ref_logp"], mask, beta)
    kl_per_seq = kl.sum(1)
    mean_kl = ppo_dist.mean_over_processes(kl_per_seq.mean().item())
    _check_kl(run, step, mean_kl)

    # 5. advantages (GAE), whitened over the batch's response tokens
    advantages, returns = gae(rewards, old["values"], mask, o.gamma, o.lam)
    if o.whiten_advantages:
        advantages = ppo_dist.whiten(advantages, mask)

    # 6. ppo_epochs of clipped updates on shuffled minibatches
    stats = ppo_update(run, step, rollout, old, advantages, returns)
    ac.sync_rollout_model()

    # 7. adapt beta towards the target KL, and log
    run.kl_ctl.update(mean_kl, o.batch_size * world_size())
    lengths = mask.sum(1)
    row = {
        "step": step, "reward": scores.mean().item(),
        "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
        "kl": mean_kl, "kl_k3": (kl_k3(old["logp"], old["ref_logp"]) * mask).sum(1).mean().item(),
        "kl_coef": beta, "entropy": masked_mean(old["entropy"], mask).item(),
        "response_len": lengths.float().mean().item(),
        "truncated": 1.0 - rollout.ended.float().mean().item(), **stats,
    }
    row = ppo_dist.mean_row(row)
    row.update(_hacking_signals(run, row, rollout.texts))
    row.update(time=time.time() - t0, time_rollout=t_rollout, time_update=time.time() - t0 - t_rollout,
               cpu_time=time.process_time() - cpu0, max_rss_mb=peak_rss_bytes() / MIB)
    samples = [{"step": step, "prompt": p[-1]["content"], "response": r, "score": s}
               for p, r, s in zip(prompts, rollout.texts, scores.tolist(), strict=True)]
    return row, samples


def _score_rollout(run: _Run, rollout) -> dict[str, Any]:
    """Old log-probs, values and entropy from the policy and reference log-probs, in minibatch chunks.

    -> dict of logp, values, entropy, ref_logp, each [B, T].
    """
    import torch

    from cai.train.ppo_policy import forward_response

    ac, o = run.ac, run.options
    parts: dict[str, list] = {"logp": [], "values": [], "entropy": [], "ref_logp": []}
    with torch.no_grad(), ac.autocast():
        for rows in _chunks(rollout.input_ids.shape[0], o.micro):
            ids, attn = rollout.input_ids[rows], rollout.attention_mask[rows]
            out = forward_response(ac.causal_lm, ac.value_head, ids, attn, rollout.query_len, o.temperature,
                                   with_entropy=True)
            with ac.reference() as ref:
                ref_out = forward_response(ref, None, ids, attn, rollout.query_len, o.temperature)
            out["ref_logp"] = ref_out["logp"]
            for key in parts:
                parts[key].append(out[key])
    return {key: torch.cat(chunks) for key, chunks in parts.items()}


def ppo_update(run: _Run, step: int, rollout, old: dict, advantages, returns) -> dict[str, float]:
    """``ppo_epochs`` passes of clipped PPO (+ value loss, entropy bonus, SL term) over shuffled minibatches.

    advantages, returns [B, T]; returns the mean losses and diagnostics over all minibatches.
    """
    import torch

    from cai.train.ppo_dist import average_gradients

    o, ac = run.options, run.ac
    sums: dict[str, float] = {}
    generator = torch.Generator().manual_seed(o.seed * 1_000_003 + step)
    n_updates = 0
    per_epoch = -(-rollout.input_ids.shape[0] // o.mini_batch_size)
    for _ in range(o.ppo_epochs):
        order = torch.randperm(rollout.input_ids.shape[0], generator=generator)
        for rows in _chunks(len(order), o.mini_batch_size, order):
            run.show(f"step {step}: update {n_updates + 1}/{o.ppo_epochs * per_epoch}")
            run.optimizer.zero_grad(set_to_none=True)
            batch_stats = _accumulate_rl_gradients(run, step, rollout, old, advantages, returns, rows)
            if run.sl_rows:
                batch_stats["sl_loss"] = _accumulate_sl_gradients(run, _sl_rows_for(run, step, n_updates),
                                                                  rollout.mask.device)
            average_gradients(ac.trainable_parameters())
            batch_stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(ac.trainable_parameters(), o.max_grad_norm)
            run.optimizer.step()
            for key, value in batch_stats.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            n_updates += 1
    run.optimizer.zero_grad(set_to_none=True)  # no gradients held through the next step's rollouts
    stats = {key: value / n_updates for key, value in sums.items()}
    stats.setdefault("sl_loss", None)
    return stats


def _accumulate_rl_gradients(run: _Run, step: int, rollout, old: dict, advantages, returns, rows) -> dict:
    """Backpropagate one minibatch's clipped PPO loss (+ value loss, - entropy bonus) in passes of
    ``micro_batch_size`` rollouts. Each loss is a mean over the minibatch's response tokens, so a pass's loss
    is weighted by its share of those tokens: the summed gradients are the whole minibatch's. Returns the
    minibatch's losses and diagnostics (floats)."""
    import torch

    from cai.train.ppo_losses import masked_mean, policy_loss, value_loss
    from cai.train.ppo_policy import forward_response

    o, ac = run.options, run.ac
    total = rollout.mask[rows].sum().clamp(min=1.0)
    stats: dict[str, float] = {}
    for part in _chunks(len(rows), o.micro, rows):
        mask = rollout.mask[part]
        share = mask.sum() / total
        with ac.autocast():
            new = forward_response(ac.causal_lm, ac.value_head, rollout.input_ids[part],
                                   rollout.attention_mask[part], rollout.query_len, o.temperature,
                                   with_entropy=o.ent_coef > 0)
            pg_loss, clipfrac = policy_loss(new["logp"], old["logp"][part], advantages[part], mask, o.clip_range)
            vf_loss, vf_clipfrac = value_loss(new["values"], old["values"][part], returns[part], mask,
                                              o.clip_range_value)
            loss = pg_loss + o.vf_coef * vf_loss
            if o.ent_coef > 0:
                loss = loss - o.ent_coef * masked_mean(new["entropy"], mask)
        _check_finite(run, step, "loss", loss.item())
        (loss * share).backward()
        with torch.no_grad():
            approx_kl = 0.5 * masked_mean((new["logp"] - old["logp"][part]) ** 2, mask)
        for key, value in {"policy_loss": pg_loss, "value_loss": vf_loss, "clipfrac": clipfrac,
                           "vf_clipfrac": vf_clipfrac, "approx_kl": approx_kl}.items():
            stats[key] = stats.get(key, 0.0) + float(value.detach() * share)
    return stats


def _accumulate_sl_gradients(run: _Run, picked: list[dict], device) -> float:
    """Backpropagate ``sl_coef`` x the SL-CAI loss on ``picked`` in passes of ``micro_batch_size`` rows, each
    weighted by its share of the label tokens (the loss is their mean); returns the loss."""
    from cai.train.ppo_data import sl_batch, sl_loss

    o, ac = run.options, run.ac
    batches = [sl_batch(picked[i : i + o.micro], run.tokenizer, device) for i in range(0, len(picked), o.micro)]
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    total, value = max(sum(counts), 1), 0.0
    for batch, count in zip(batches, counts, strict=True):
        with ac.autocast():
            sl = sl_loss(ac.causal_lm, batch)
        (o.sl_coef * sl * (count / total)).backward()
        value += float(sl.detach()) * count / total
    return value


def _chunks(n: int, size: int, order=None):
    """Index tensors of consecutive slices of ``order`` (default 0..n-1), ``size`` at a time."""
    import torch

    order = torch.arange(n) if order is None else order
    return [order[i : i + size] for i in range(0, n, size)]


def _sl_rows_for(run: _Run, step: int, update: int) -> list[dict]:
    """The SL examples mixed into one update: the next ``mini_batch_size`` rows of a seeded shuffle."""
    from cai.train.ppo_data import batch_indices

    o = run.options
    per_step = o.ppo_epochs * (o.batch_size // o.mini_batch_size)
    k = (step - 1) * per_step + update  # this update's global index, so a resumed run picks the same rows
    return [run.sl_rows[i] for i in batch_indices(len(run.sl_rows), o.mini_batch_size, k + 1, o.seed + 1)]


# ---- divergence checks and reward-hacking signals ---------------------------------------------------


def _check_finite(run: _Run, step: int, what: str, value: float) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"PPO diverged at step {step}: the {what} is {value}", where=str(run.out_dir),
            fix="lower --lr or raise --kl-coef, and check that the reward model scores are finite; "
                f"the last checkpoint (if any) is in {run.out_dir / 'checkpoint'}",
        )


def _check_kl(run: _Run, step: int, kl: float) -> None:
    _check_finite(run, step, "KL to the reference", kl)
    if kl > run.options.max_kl:
        raise TrainingDiverged(
            f"PPO blew up at step {step}: mean KL to the reference is {kl:.2f} nats per response, above "
            f"max_kl={run.options.max_kl}", where=str(run.out_dir),
            fix="lower --lr, raise --kl-coef or use --adaptive-kl (or raise max_kl if this KL is expected)",
        )


def _hacking_signals(run: _Run, row: dict, texts: list[str]) -> dict[str, Any]:
    from cai.train.ppo_signals import boilerplate_share, kl_jump, length_drift

    history = run.history
    if history["first_len"] is None:
        history["first_len"] = row["response_len"]
    signals = {
        "boilerplate_share": boilerplate_share(texts),
        "length_drift": length_drift(row["response_len"], history["first_len"]),
        "kl_jump": kl_jump(row["kl"], history["kl"]),
    }
    if signals["kl_jump"]:
        log.warning("step %d: KL jumped to %.2f (from %.2f): look at samples.jsonl for reward hacking",
                    row["step"], row["kl"], history["kl"][-1])
    history["kl"].append(row["kl"])
    return signals


# ---- set-up, resume and the saved policy ---------------------------------------------------------


def _as_prompt_list(prompts: list) -> list[list[dict]]:
    from cai.train.ppo_data import as_messages

    rows = [as_messages(getattr(p, "prompt", p)) for p in prompts]
    if not rows:
        raise ConfigError("no prompts to train on", fix="pass a prompt file with at least one valid row")
    return rows


def _reward_function(reward_model: str | Path | RewardFn, device: str) -> RewardFn:
    if callable(reward_model):
        return reward_model
    from cai.train.reward import load_reward_model, score_responses

    model, tokenizer = load_reward_model(reward_model, device=device)
    return lambda prompts, responses: score_responses(model, tokenizer, prompts, responses)


def _read_sl_rows(sl_data: str | Path | None, options: PPOOptions) -> list[dict] | None:
    if sl_data is None:
        return None
    from cai.train.data import read_sft_data

    if options.sl_coef == 0:
        log.warning("SL data given with sl_coef=0: the SL term has no effect")
    return read_sft_data(sl_data).rows


def _fit_memory(source, reward_model, prompts: list[list[dict]], options: PPOOptions, device: str) -> PPOOptions:
    """``options`` with the micro-batch the memory guard chose (``cai.guard``), or a ``MemoryGuardError``
    before the policy or the reward model is loaded. The estimate counts the fp32 policy with its gradients and
    AdamW state, the frozen reference (none with LoRA: its adapters are switched off instead), the rollout
    weights (the lean decoder's snapshot, or the low-precision copy ``generate`` samples from) and the reward
    model in fp32."""
    from cai import guard
    from cai.models import load_tokenizer

    if device != "cpu":
        return options
    rollout_dtype, autocast_dtype = _dtypes(options, device)
    low = rollout_dtype.itemsize if rollout_dtype is not None else 4
    if options.lora:  # no reference copy, and rollouts sample from the policy itself
        reference, rollout = 0, 0
    else:  # a lean decoder's snapshot, or generate's copy where rollouts run in a lower precision
        reference, rollout = (autocast_dtype.itemsize if autocast_dtype else 4), (
            low if options.lean_rollouts or low < 4 else 0)
    reward = None if callable(reward_model) or not Path(reward_model, "config.json").is_file() else reward_model
    shape = guard.shape_of(source)
    extra = guard.rl_model_parts(shape, reference_bytes=reference, rollout_bytes=rollout,
                                 reward=reward)  # a missing reward model fails with its own error when loaded
    estimate = guard.fit_rl(
        "ppo", shape, load_tokenizer(source), prompts, batch_size=options.mini_batch_size,
        wanted=options.micro_batch_size, max_new_tokens=options.max_new_tokens, lora=options.lora,
        checkpointing=False, extra=extra,
        fix="set ppo.micro_batch_size to 1 (--micro-batch-size 1), a smaller ppo.max_new_tokens, or ppo.lora: "
            "true (no reference copy, adapters only)")
    return options.model_copy(update={"micro_batch_size": estimate.micro_batch})


def _dtypes(options: PPOOptions, device: str) -> tuple[Any, Any]:
    """(rollout dtype, autocast dtype or None) for the ``dtype`` option; trainable weights stay fp32.

    auto: where bf16 is fast (AVX512-BF16/AMX CPUs, bf16 GPUs) rollouts sample from a bf16 copy and
    the scoring and training passes run the trunk under bf16 autocast (heads in fp32), else fp32;
    bf16: that, whatever the hardware; fp32: fp32 everywhere (slowest, bit-for-bit reproducible).
    """
    import torch

    from cai.models import best_dtype

    if options.dtype == "fp32":
        return torch.float32, None
    if options.dtype == "bf16" or best_dtype(device) == torch.bfloat16:
        return torch.bfloat16, torch.bfloat16
    return best_dtype(device), None  # e.g. fp16 rollouts on an old GPU, fp32 training


def _setup(source, prompts, reward_fn, sl_rows, out_dir: Path, options: PPOOptions, device: str):
    """Load the policy and build the actor-critic, optimiser and KL controller; resume if a checkpoint
    exists. Returns (run, first step to do)."""
    import torch

    from cai.backends.engine import supports
    from cai.distributed import is_main
    from cai.models import load_causal_lm, load_tokenizer
    from cai.train.ppo_checkpoint import find_checkpoint, load_checkpoint, truncate_metrics
    from cai.train.ppo_losses import AdaptiveKLController, FixedKLController
    from cai.train.ppo_policy import build_actor_critic, eos_token_ids

    rollout_dtype, autocast_dtype = _dtypes(options, device)
    tokenizer = load_tokenizer(source)
    causal_lm = load_causal_lm(source, dtype=torch.float32, device=device)
    lean = options.lean_rollouts and not options.lora and supports(causal_lm)
    ac = build_actor_critic(causal_lm, lora=options.lora, lora_r=options.lora_r, rollout_dtype=rollout_dtype,
                            autocast_dtype=autocast_dtype, seed=options.seed, rollout_copy=not lean)
    optimizer = torch.optim.AdamW(ac.trainable_parameters(), lr=options.learning_rate, weight_decay=0.0)
    if options.adaptive_kl:
        kl_ctl = AdaptiveKLController(options.beta, options.target_kl, options.kl_horizon)
    else:
        kl_ctl = FixedKLController(options.beta)
    prepack = True
    if lean:  # the snapshot path that passes its self-check here; none: transformers generate on the policy
        from cai.train.ppo_policy import checked_rollout_engine

        engine = checked_rollout_engine(ac.rollout_model, tokenizer, ac.rollout_dtype)
        lean, prepack = engine is not None, engine is None or engine.prepacked
        del engine
    run = _Run(options, out_dir, prompts, reward_fn, tokenizer, ac, optimizer, kl_ctl,
               eos_token_ids(tokenizer, causal_lm), sl_rows, lean_rollouts=lean, lean_prepack=prepack)
    log.info("rollouts: %s", "cai's lean decoder" if run.lean_rollouts else "transformers generate")
    checkpoint = find_checkpoint(out_dir)
    main = is_main()
    if checkpoint is None:
        for name in ("metrics.jsonl", "samples.jsonl"):
            if main:
                (out_dir / name).unlink(missing_ok=True)  # a run that died before its first checkpoint
        return run, 1
    state = load_checkpoint(checkpoint, ac, optimizer)
    _warn_changed_options(state.get("options", {}), options)
    kl_ctl.value = state["kl_coef"]
    run.history = state["history"]
    for name in ("metrics.jsonl", "samples.jsonl"):
        dropped = truncate_metrics(out_dir / name, state["step"]) if main else 0
        if dropped:
            log.info("dropped %d rows of %s logged after the checkpoint", dropped, name)
    log.info("resuming from %s at step %d", checkpoint, state["step"] + 1)
    return run, state["step"] + 1


def _warn_changed_options(saved: dict, options: PPOOptions) -> None:
    from cai.train.artifacts import UNTRAINED_OPTIONS  # how a run is split or logged: no change to what it learns

    changed = {k: (saved[k], v) for k, v in options.model_dump().items()
               if k in saved and saved[k] != v and k != "steps" and k not in UNTRAINED_OPTIONS}
    if changed:
        log.warning("resuming with changed options: %s",
                    ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))


def _run_state(run: _Run, step: int) -> dict[str, Any]:
    return {"step": step, "kl_coef": run.kl_ctl.value, "kl_controller": run.kl_ctl.state(),
            "history": run.history, "options": run.options.model_dump()}


def _save_policy(run: _Run, source, reward_model, out_dir: Path) -> Path:
    """Write the trained policy (LoRA merged) as a plain model directory with its ``cai_model.json``."""
    import hashlib
    import json

    from cai.jsonl import read_records
    from cai.train import artifacts

    metrics = read_records(out_dir / "metrics.jsonl")
    model = artifacts.merged(run.ac.model)  # LoRA merged in place: the run is over
    reward_name = getattr(reward_model, "__name__", "a function") if callable(reward_model) else reward_model
    prompts_sha = hashlib.sha256(json.dumps(run.prompts, sort_keys=True).encode()).hexdigest()
    card = artifacts.ModelCard(
        model_id=artifacts.trained_model_id(source.model_id, "ppo", prompts_sha, run.options.model_dump()), stage="ppo",
        base=source.model_id, base_path=source.path,
        data=f"{len(run.prompts)} prompts, reward model {reward_name}", data_sha256=prompts_sha,
        rows=len(run.prompts), options=run.options.model_dump(),
        metrics={k: metrics[-1].get(k) for k in ("step", "reward", "kl")} if metrics else {},
        versions=artifacts.library_versions(),
    )
    dest = out_dir / "policy"
    with artifacts.staging_dir(dest) as stage:
        artifacts.save_model_dir(model, run.tokenizer, stage, card)
    log.info("policy written to %s", dest)
    return dest


def _progress_bar(total: int, done: int):
    """A rich progress bar showing the last reward and KL and what the step is doing:
    ``with _progress_bar(n, k) as (show, phase): phase("..."); show(row)``."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar():
        columns = (TextColumn("ppo"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                   TextColumn("{task.fields[phase]}"), TimeElapsedColumn())
        with Progress(*columns) as progress:
            task = progress.add_task("ppo", total=total, completed=done, stats="", phase="")
            yield (lambda row: progress.update(task, advance=1,
                                               stats=f"reward {row['reward']:.3f}  kl {row['kl']:.3f}"),
                   lambda text: progress.update(task, phase=text))

    return bar()
