"""The reward (preference) model: one scalar score per (prompt, response), trained on soft AI labels.

A reward model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` on a chosen base model.

Scoring convention, shared by training, ``score_responses`` and PPO (keep it exactly):
  text  = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
  ids   = tokenizer(text, add_special_tokens=False).input_ids, keeping the last ``max_length`` tokens
          (a too-long input loses the start of its prompt, never the response's end)
  score = model(ids).logits[:, 0]  (the head reads the last non-pad token; batches are right-padded)

Training minimises the soft Bradley-Terry loss: the cross-entropy of sigmoid(r_chosen - r_rejected)
against the labeller's P(chosen is better). TRL's ``RewardTrainer`` supplies tokenised batches, the
optimiser loop and its metrics; a small subclass adds the soft labels it lacks.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from pathlib import Path

from pydantic import BaseModel, Field

from cai.errors import ModelError
from cai.train.options import TrainOptions

log = logging.getLogger(__name__)


class RewardOptions(TrainOptions):
    """The reward model: the shared training options and the held-out share."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate of the optimiser (AdamW)")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description=(
        "share of the pairs held out (seeded) to measure accuracy; at least 1 pair once there are 4"))


class RewardReport(BaseModel):
    """What ``train_reward`` measured; also saved as ``out_dir/metrics.json``."""

    out_dir: str
    n_train: int
    n_eval: int
    eval_accuracy: float | None  # share of held-out pairs ranked as labelled; ties (p = 0.5) skipped
    eval_loss: float | None  # soft Bradley-Terry loss on the held-out pairs
    train_loss: float
    steps: int
    train_seconds: float  # the optimisation loop alone
    seconds: float  # everything: loading, training, held-out scoring


# ---- the loss ----------------------------------------------------------------------------------


def soft_bradley_terry_loss(r_chosen, r_rejected, p_chosen):
    """Cross-entropy of P_model(chosen > rejected) = sigmoid(r_c - r_r) against the soft target p.

    Args: r_chosen, r_rejected: [B] scores; p_chosen: [B] labels in [0, 1] (P(chosen is better)).
    Returns: a scalar, the mean over the batch of -(p log s(m) + (1 - p) log s(-m)), m = r_c - r_r.
    p = 1 gives TRL's hard-label loss -logsigmoid(m); p = 0.5 is symmetric and has zero gradient at m = 0.
    """
    import torch.nn.functional as F

    margin = r_chosen - r_rejected
    p = p_chosen.to(margin.dtype)
    return -(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin)).mean()


# ---- scoring (shared with PPO) -----------------------------------------------------------------


def reward_input_ids(tokenizer, prompt: list[dict], response: str, max_length: int = 1024) -> list[int]:
    """Token ids the reward model scores for ``response`` to ``prompt`` (see the module docstring)."""
    conversation = prompt + [{"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


def score_responses(model, tokenizer, prompts: list[list[dict]], responses: list[str], *,
                    batch_size: int = 8, max_length: int = 1024):
    """Scores of ``responses[i]`` to ``prompts[i]``: a float32 tensor of shape [n] on the CPU, without grad.

    ``model`` should be in eval mode (``load_reward_model`` returns it so).
    """
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    scores = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            pairs = zip(prompts[start:start + batch_size], responses[start:start + batch_size], strict=True)
            batch = [reward_input_ids(tokenizer, p, r, max_length) for p, r in pairs]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in batch], device=device)
            attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch],
                                          device=device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            scores.append(logits[:, 0].float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def load_reward_model(path: str | Path, *, device: str | None = None, dtype=None):
    """``(model, tokenizer)`` of a reward model saved by ``train_reward``, in eval mode on ``device``.

    ``dtype``: a torch dtype or a name ("fp32", "bf16", "auto"); default fp32 on CPU, the fastest
    accurate dtype on a GPU.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from cai.models import ModelSource, best_dtype, default_device, load_tokenizer, parse_dtype

    path = Path(path).expanduser()
    fix = "train one with `cai reward PAIRS --out DIR` and pass that DIR"
    if not path.is_dir():
        raise ModelError(f"reward model {path} does not exist", fix=fix)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json, so it is not a saved model (unfinished run?)", fix=fix)
    config = AutoConfig.from_pretrained(path)
    kinds = config.architectures or ["an unknown architecture"]
    if not any(k.endswith("ForSequenceClassification") for k in kinds) or config.num_labels != 1:
        raise ModelError(f"{path} is not a reward model (it is {kinds[0]} with {config.num_labels} labels)",
                         fix=f"pass a reward model directory, not a policy or SFT model; {fix}")
    device = device or default_device()
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype, device)
    dtype = dtype or (torch.float32 if device == "cpu" else best_dtype(device))
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = load_tokenizer(ModelSource(str(path), str(path), str(path)))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ---- training ----------------------------------------------------------------------------------


def split_pairs(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded (train, held-out) split; the held-out part has at least 1 pair when there are >= 4."""
    n = len(rows)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 4:
        n_eval = max(n_eval, 1)
    n_eval = min(n_eval, n - 1)  # keep at least one pair to train on
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def evaluate_pairs(model, tokenizer, rows: list[dict], *, batch_size: int = 8,
                   max_length: int = 1024) -> dict[str, float | None]:
    """Held-out pairwise accuracy and soft Bradley-Terry loss of ``model`` on preference ``rows``."""
    import torch

    if not rows:
        return {"accuracy": None, "loss": None}
    prompts = [r["prompt"] for r in rows]
    chosen = score_responses(model, tokenizer, prompts, [r["chosen"][0]["content"] for r in rows],
                             batch_size=batch_size, max_length=max_length)
    rejected = score_responses(model, tokenizer, prompts, [r["rejected"][0]["content"] for r in rows],
                               batch_size=batch_size, max_length=max_length)
    p = torch.tensor([r["p_chosen"] for r in rows], dtype=torch.float32)
    decided = p != 0.5  # a pair the labeller could not decide has no right answer
    right = (chosen > rejected) == (p > 0.5)
    accuracy = right[decided].float().mean().item() if decided.any() else None
    return {"accuracy": accuracy, "loss": soft_bradley_terry_loss(chosen, rejected, p).item()}


def build_reward_trainer(model, tokenizer, rows: list[dict], output_dir: Path, options: RewardOptions,
                         peft_config=None):
    """A soft-label ``RewardTrainer`` over preference ``rows``, tokenised with the scoring convention."""
    from datasets import Dataset
    from trl import RewardConfig

    from cai.train.options import trainer_args

    trainer_cls, collator_cls = _soft_label_classes()
    def encode(prompt, answer):
        return reward_input_ids(tokenizer, prompt, answer[0]["content"], options.max_length)

    tokenised = [
        {"chosen_ids": encode(r["prompt"], r["chosen"]), "rejected_ids": encode(r["prompt"], r["rejected"]),
         "p_chosen": r["p_chosen"]}
        for r in rows
    ]
    # Tokenised and truncated here, as scoring does (TRL would drop pairs over max_length): max_length=None.
    config = RewardConfig(**trainer_args(options, output_dir), max_length=None)
    return trainer_cls(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(tokenised),
        processing_class=tokenizer,
        data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id),
        peft_config=peft_config,
    )


@functools.cache
def _soft_label_classes():
    """The soft-label trainer and collator (built on first use, so that importing cai stays light)."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class SoftLabelCollator(DataCollatorForPreference):
        """TRL's preference collator (chosen rows, then rejected rows) plus a [B] ``p_chosen`` tensor."""

        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch["p_chosen"] = torch.tensor([e["p_chosen"] for e in examples], dtype=torch.float32)
            return batch

    class SoftLabelRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer has only hard labels (-logsigmoid(r_c - r_r), optionally minus a margin).
        CAI's AI labels are probabilities, so this keeps the ``p_chosen`` column and swaps in the soft loss;
        TRL still does the forward pass and logs its reward/accuracy/margin metrics."""

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "p_chosen" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "p_chosen"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p_chosen = inputs.pop("p_chosen")
            _, outputs = super().compute_loss(model, inputs, return_outputs=True)
            r_chosen, r_rejected = outputs.logits.squeeze(-1).float().chunk(2)
            loss = soft_bradley_terry_loss(r_chosen, r_rejected, p_chosen.to(r_chosen.device))
            return (loss, outputs) if return_outputs else loss

    return SoftLabelRewardTrainer, SoftLabelCollator


def load_reward_base(source, tokenizer, dtype, seed: int = 0):
    """A fresh reward model on ``source``: its body, plus a new 1-output score head (seeded init)."""
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    set_seed(seed)
    try:
        with suppress_seqcls_warning():  # the new head and the unused LM head are expected, not problems
            model = AutoModelForSequenceClassification.from_pretrained(source.path, num_labels=1, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot build a reward model on {source.spec}: {e}",
                         fix="pass a causal LM or reward model directory, a .gguf file or a Hub id") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def train_reward(pairs: str | Path, out_dir: str | Path, model: str = "smollm2-135m",
                 options: RewardOptions | None = None) -> RewardReport:
    """Train a reward model on preference pairs; saves it (and metrics.json) in ``out_dir``."""
    from cai.distributed import is_main
    from cai.guard import fit_training
    from cai.logs import log_to_run_dir
    from cai.models import load_tokenizer, resolve
    from cai.train.artifacts import (
        SCRATCH,
        ModelCard,
        library_versions,
        save_model_dir,
        staging_dir,
        trained_model,
        trained_model_id,
    )
    from cai.train.data import read_preference_pairs
    from cai.train.options import lora_config, weights_dtype
    from cai.train.progress import show_progress

    options = options or RewardOptions()
    data = read_preference_pairs(pairs)  # fails fast, before any model is loaded or anything written
    out_dir = Path(out_dir)
    log_to_run_dir(out_dir)
    source = resolve(model)
    tokenizer = load_tokenizer(source)
    train_rows, eval_rows = split_pairs(data.rows, options.eval_fraction, options.seed)
    log.info("reward model on %s: %d train / %d held-out pairs from %s",
             source.model_id, len(train_rows), len(eval_rows), data.path)
    options = fit_training("reward", source, tokenizer, options,  # the memory guard: micro-batch, or stop here
                           [r["prompt"] + r[k] for r in train_rows for k in ("chosen", "rejected")], seqs_per_row=2)
    started = time.monotonic()
    with staging_dir(out_dir) as stage:
        rm = load_reward_base(source, tokenizer, weights_dtype(options), options.seed)
        peft = lora_config(options, "SEQ_CLS") if options.lora else None
        trainer = build_reward_trainer(rm, tokenizer, train_rows, stage / SCRATCH, options, peft_config=peft)
        result = show_progress(trainer, "reward model").train()
        final, state_dict = trained_model(trainer)
        final.eval()
        held_out = evaluate_pairs(final, tokenizer, eval_rows, batch_size=options.batch_size,
                                  max_length=options.max_length)
        report = RewardReport(
            out_dir=str(out_dir), n_train=len(train_rows), n_eval=len(eval_rows),
            eval_accuracy=held_out["accuracy"], eval_loss=held_out["loss"], train_loss=result.training_loss,
            steps=result.global_step, train_seconds=round(result.metrics["train_runtime"], 1),
            seconds=round(time.monotonic() - started, 1),
        )
        card = ModelCard(
            model_id=trained_model_id(source.model_id, "reward", data.sha256, options.model_dump()), stage="reward",
            base=source.model_id, base_path=source.path, constitution=data.constitution,
            data=str(data.path.resolve()), data_sha256=data.sha256, rows=len(data.rows),
            options=options.model_dump(), versions=library_versions(),
            metrics=report.model_dump(exclude={"out_dir"}),
        )
        save_model_dir(final, tokenizer, stage, card, state_dict)
        if is_main():
            (stage / "metrics.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    log.info("reward model done: %s", json.dumps(report.model_dump()))
    return report
