"""RLAIF with TRL's online trainers (GRPO, RLOO), the constitution as the reward.

The policy samples ``num_generations`` completions per prompt; each is scored by a ``cai`` scorer (a
reward model from ``cai reward``, or the constitution's pointwise judge, ``cai.feedback.rewards``) through TRL's
``reward_funcs`` signature; TRL's ``GRPOTrainer`` (group-normalised advantages, clipped objective, KL
to the reference weighted by ``beta``) or ``RLOOTrainer`` (leave-one-out baseline) does the rest. So
TRL's own scale-out applies unchanged: ``accelerate launch`` with DDP, DeepSpeed or FSDP, and vLLM
generation (``use_vllm``, colocated or on a ``trl vllm-serve`` server).

Writes the policy (a plain model directory, LoRA merged) and ``metrics.jsonl``: one row per logged step
with the mean reward of its completions, the KL, the loss and the completions' mean length. With
``save_every`` the trainer checkpoints into ``out_dir/checkpoints`` and a re-run resumes from the last one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cai.errors import ConfigError
from cai.train.options import TrainOptions

log = logging.getLogger(__name__)

METRIC_KEYS = {"reward": "reward", "reward_std": "reward_std", "kl": "kl", "loss": "loss",
               "completions/mean_length": "response_len", "entropy": "entropy"}


class OnlineRLOptions(TrainOptions):
    """TRL GRPO/RLOO settings on top of the shared ones. ``batch_size`` counts completions per device step
    (``num_generations`` of them per prompt); ``max_steps`` (default 8) counts optimiser steps."""

    algorithm: Literal["grpo", "rloo"] = Field("grpo", description=(
        "grpo (group-relative advantages) or rloo (leave-one-out baseline), TRL's trainers"))
    reward: Literal["reward_model", "judge"] = Field(
        "reward_model", description="score with a reward model (the run's, in the pipeline) or with the judge "
                                    "under the constitution")
    learning_rate: float = Field(1e-6, gt=0, description="peak learning rate of the optimiser (AdamW)")
    max_steps: int | None = Field(8, gt=0, description="optimiser steps to train for")
    num_generations: int = Field(4, ge=2, description="completions per prompt (the group)")
    max_new_tokens: int = Field(48, ge=1, description="token budget of each completion")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold")
    beta: float = Field(0.04, ge=0, description="weight of the KL to the reference policy (0: no reference)")
    judge_principles: Literal["single", "ensemble"] = Field("ensemble", description=(
        "with reward: judge, one sampled principle or the mean over several"))
    use_vllm: bool = Field(False, description="generate with vLLM (TRL's vllm extra; GPUs)")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description=(
        "with use_vllm: colocate (vLLM in the training process) or server (trl vllm-serve)"))
    save_every: int = Field(0, ge=0, description="checkpoint every N steps for resuming (0: only the end)")

    @model_validator(mode="after")
    def _groups_fit(self) -> OnlineRLOptions:
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise ValueError(f"batch_size x grad_accum ({self.batch_size} x {self.grad_accum}) must be a multiple "
                             f"of num_generations ({self.num_generations}): each prompt's completions form a group")
        return self


def online_config(options: OnlineRLOptions, output_dir: Path):
    """TRL's ``GRPOConfig`` or ``RLOOConfig`` for ``options``."""
    from cai.train.options import trainer_args

    args = trainer_args(options, output_dir)
    if options.save_every:
        args.update(save_strategy="steps", save_steps=options.save_every)
    common = dict(num_generations=options.num_generations, max_completion_length=options.max_new_tokens,
                  temperature=options.temperature, top_p=options.top_p, beta=options.beta,
                  use_vllm=options.use_vllm, log_completions=False)
    if options.algorithm == "grpo":
        from trl import GRPOConfig

        return GRPOConfig(**args, **common, vllm_mode=options.vllm_mode)
    from trl import RLOOConfig

    return RLOOConfig(**args, **common, vllm_mode=options.vllm_mode)


def build_online_trainer(model, tokenizer, prompts: list[list[dict]], reward_fn, output_dir: Path,
                         options: OnlineRLOptions, peft_config=None):
    """A ``GRPOTrainer`` / ``RLOOTrainer`` over conversational ``prompts`` with ``reward_fn`` as the reward."""
    from datasets import Dataset

    if options.algorithm == "grpo":
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOTrainer as Trainer
    return Trainer(model=model, reward_funcs=[reward_fn], args=online_config(options, output_dir),
                   train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), processing_class=tokenizer,
                   peft_config=peft_config)


def metric_rows(log_history: list[dict]) -> list[dict]:
    """The per-step rows of a TRL log history (the entries with a ``reward``), with cai's column names."""
    rows = []
    for entry in log_history:
        if "reward" not in entry:
            continue
        row = {"step": entry.get("step")}
        row.update({ours: entry[theirs] for theirs, ours in METRIC_KEYS.items() if theirs in entry})
        rows.append(row)
    return rows


def train_online(prompts: list, out_dir: str | Path, reward: str | Path, *, policy: str = "smollm2-135m",
                 options: OnlineRLOptions | None = None, constitution: str = "general") -> Path:
    """Optimise ``policy`` with GRPO/RLOO against ``reward`` (a reward model directory, or a judge model spec
    judging under ``constitution``); returns ``out_dir/policy``."""
    import json

    from cai.distributed import is_main
    from cai.feedback.rewards import load_scorer, trl_reward_function
    from cai.jsonl import write_atomic
    from cai.logs import log_to_run_dir
    from cai.models import load_causal_lm, load_tokenizer, resolve
    from cai.train import artifacts
    from cai.train.options import lora_config, weights_dtype
    from cai.train.ppo_data import as_messages

    options = options or OnlineRLOptions()
    rows = [as_messages(getattr(p, "prompt", p)) for p in prompts]
    if not rows:
        raise ConfigError("no prompts to train on", fix="pass a prompt file with at least one valid row")
    out_dir = Path(out_dir)
    source = resolve(policy)  # a wrong policy fails before the reward loads or anything is written
    options = _fit_memory(source, rows, reward, options)
    scorer = load_scorer(reward, kind=options.reward, constitution=constitution, principles=options.judge_principles,
                         seed=options.seed)
    log_to_run_dir(out_dir)
    log.info("%s on %s: %d prompts, reward %s, %d completions per prompt", options.algorithm.upper(),
             source.model_id, len(rows), scorer.model_id, options.num_generations)
    tokenizer = load_tokenizer(source)
    started = time.monotonic()
    checkpoints = out_dir / "checkpoints"
    with artifacts.staging_dir(out_dir / "policy") as stage:
        model = load_causal_lm(source, dtype=weights_dtype(options))
        peft = lora_config(options, "CAUSAL_LM") if options.lora else None
        trainer = build_online_trainer(model, tokenizer, rows, trl_reward_function(scorer), checkpoints, options,
                                       peft_config=peft)
        result = trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoints))
        steps = metric_rows(trainer.state.log_history)
        if is_main():
            write_atomic(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in steps))
        prompts_sha = _sha256(rows)
        card = artifacts.ModelCard(
            model_id=artifacts.trained_model_id(source.model_id, options.algorithm, prompts_sha,
                                                 options.model_dump()),
            stage=options.algorithm, base=source.model_id, base_path=source.path,
            data=f"{len(rows)} prompts, reward {scorer.model_id}", data_sha256=prompts_sha, rows=len(rows),
            options=options.model_dump(), versions=artifacts.library_versions(),
            metrics={"steps": result.global_step, "first_reward": steps[0]["reward"] if steps else None,
                     "final_reward": steps[-1]["reward"] if steps else None,
                     "final_kl": steps[-1].get("kl") if steps else None,
                     "train_seconds": round(result.metrics["train_runtime"], 1),
                     "seconds": round(time.monotonic() - started, 1)},
        )
        model, state_dict = artifacts.trained_model(trainer)
        artifacts.save_model_dir(model, tokenizer, stage, card, state_dict)
    log.info("%s done: %s (%s)", options.algorithm.upper(), out_dir / "policy", card.metrics)
    return out_dir / "policy"


def _fit_memory(source, prompts: list[list[dict]], reward: str | Path, options: OnlineRLOptions) -> OnlineRLOptions:
    """``options`` with the micro-batch (completions a pass) the memory guard chose, or a ``MemoryGuardError``
    before anything is loaded. Counts TRL's reference copy (made when ``beta`` > 0 without LoRA, in the policy's
    dtype) and the scorer: a reward model in fp32, or a local judge with its caches (a served one: nothing)."""
    from cai import guard
    from cai.feedback.reward_judge import is_reward_model_dir
    from cai.models import is_served_spec, load_tokenizer
    from cai.models import resolve as resolve_model
    from cai.train.options import has_cuda, weights_dtype

    if has_cuda():
        return options
    shape = guard.shape_of(source)
    extra = guard.rl_model_parts(
        shape, reference_bytes=weights_dtype(options).itemsize if options.beta > 0 and not options.lora else 0,
        rollout_bytes=0, reward=Path(reward) if is_reward_model_dir(reward) else None)
    if options.reward == "judge" and not is_served_spec(str(reward)):
        judge = guard.generation_estimate("judge", guard.shape_of(resolve_model(str(reward))), weight_bytes=4)
        extra["judge"] = judge.total - judge.parts["runtime"]  # its weights and caches: this process's runtime
    estimate = guard.fit_rl(
        options.algorithm, shape, load_tokenizer(source), prompts, batch_size=options.batch_size,
        wanted=options.micro_batch_size, max_new_tokens=options.max_new_tokens, lora=options.lora,
        checkpointing=options.gradient_checkpointing, extra=extra,
        fix=f"set {options.algorithm}.micro_batch_size to 1, a smaller {options.algorithm}.max_new_tokens, or "
            f"{options.algorithm}.lora: true (no reference copy, adapters only)")
    return options.model_copy(update={"micro_batch_size": estimate.micro_batch})


def _last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(folder))
    if found:
        log.info("resuming from %s", found)
    return found


def _sha256(rows: list) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
