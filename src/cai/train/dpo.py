"""RLAIF by direct preference optimisation: TRL's ``DPOTrainer`` on AI-labelled preference pairs.

DPO takes hard labels, so each pair is oriented by its soft label (a pair with p_chosen < 0.5 is flipped)
and pairs the labeller was too unsure about (max(p, 1 - p) < ``min_confidence``; a pair at p = 0.5 has no
direction at all) are dropped. What the soft labels say about the kept pairs is not thrown away: TRL's
per-batch losses take no per-pair label, so their mean uncertainty, 1 - mean(max(p, 1 - p)), becomes the
flip probability epsilon of conservative DPO (the sigmoid loss against the soft target 1 - epsilon; Mitchell
2023; ``loss: robust`` for TRL's robust DPO instead), unless ``label_smoothing`` is given; hard labels
(contrastive pairs) give epsilon 0, the plain sigmoid loss. Only prompt/chosen/rejected reach the trainer.
The reference is the starting model: in one process, its log-probs of every pair the run will see are computed
once before training (TRL's ``precompute_ref_log_probs``, with the policy itself before its first update), so no second
model is held in memory (under a launcher, a frozen copy as before); with LoRA, TRL reads them with the
adapters disabled. A ``max_steps`` run reads the pairs in order (balanced, or a seeded shuffle) and sees only
the first ones, so only those are kept (and their reference log-probs computed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from cai.errors import ConfigError
from cai.train.options import TrainOptions

log = logging.getLogger(__name__)


class DPOOptions(TrainOptions):
    """DPO on labelled pairs: the shared training options, which pairs are kept and in what order they are read."""

    learning_rate: float = Field(1e-6, gt=0, description="peak learning rate of the optimiser (AdamW)")
    beta: float = Field(0.1, gt=0, description="strength of the implicit KL penalty towards the reference model")
    min_confidence: float = Field(0.55, ge=0.5, le=1, description=(
        "drop pairs whose label is less sure than this: max(p, 1 - p) below it"))
    label_smoothing: float | None = Field(None, ge=0, lt=0.5, description=(
        "the labels' flip probability (epsilon); default: the kept pairs' mean label uncertainty, "
        "1 - mean(max(p, 1 - p)) (0 for hard labels, such as contrastive pairs)"))
    loss: Literal["conservative", "robust"] = Field("conservative", description=(
        "how label_smoothing enters the loss: conservative DPO (the sigmoid loss against the soft target "
        "1 - epsilon; its optimum matches the label, its gradient vanishes there) or robust DPO (Chowdhury et al. "
        "2024: an unbiased estimate of the clean loss, unbounded below)"))
    balance: bool = Field(True, description=(
        "every stretch of the data holds each label source (a pair's `judge`: the judge, revision over "
        "answer, answer over refusal) in proportion, in an order the seed fixes; false: TRL's random order. "
        "A short run sees only some pairs, and which kind it sees decides what it learns"))
    sft_weight: float = Field(0.0, ge=0, description=(
        "weight of an SFT term added to the DPO loss: the mean negative log-likelihood of the chosen answers' "
        "tokens (RPO, Pang et al. 2024). DPO alone can lower the chosen answers' likelihood along with the "
        "rejected ones (only their difference is trained), so greedy decoding drifts to neither; the SFT term "
        "keeps the chosen answers likely. 0: plain DPO"))
    equal_shares: bool = Field(False, description=(
        "with balance: each label source takes the same share of every stretch, until the smaller ones run "
        "out (their surplus comes last), instead of a share in proportion to its size, so a short run learns "
        "as much from the smaller source as from the larger"))


def balanced_order(groups: list, seed: int = 0, equal: bool = False) -> list[int]:
    """Row indices ordered so that every stretch holds each group in proportion (stratified): each group
    shuffled by ``seed`` and spread evenly over the whole order, with a little jitter. With ``equal``, every
    group in equal numbers (round-robin) until the smaller groups run out."""
    import random

    rng = random.Random(seed)
    members: dict = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    keyed = []
    for indices in members.values():
        rng.shuffle(indices)
        keyed += [((k + rng.random()) / (1 if equal else len(indices)), i) for k, i in enumerate(indices)]
    return [i for _, i in sorted(keyed)]


def batches_note(sources: int, balanced: bool, equal: bool) -> str:
    """How the batches are made, for the log: "random batches" or the label sources they balance."""
    if not balanced:
        return "random batches"
    return f"{sources} label sources in balanced batches" + (" (equal shares)" if equal else "")


def hard_label_pairs(rows: list[dict], min_confidence: float = 0.5) -> list[dict]:
    """Rows of prompt/chosen/rejected for DPO: flipped where p_chosen < 0.5, unsure ones dropped."""
    out = []
    for r in rows:
        p = r["p_chosen"]
        if max(p, 1 - p) < min_confidence:
            continue
        chosen, rejected = (r["chosen"], r["rejected"]) if p >= 0.5 else (r["rejected"], r["chosen"])
        out.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected})
    return out


def label_noise(rows: list[dict], min_confidence: float = 0.5) -> float:
    """1 - mean(max(p, 1 - p)) over the pairs ``hard_label_pairs`` keeps: how often their labels are
    expected to be wrong (0 for hard labels)."""
    kept = [max(r["p_chosen"], 1 - r["p_chosen"]) for r in rows
            if max(r["p_chosen"], 1 - r["p_chosen"]) >= min_confidence]
    return 1 - sum(kept) / len(kept) if kept else 0.0


def build_dpo_trainer(model, tokenizer, rows: list[dict], output_dir: Path, options: DPOOptions,
                      ref_model=None, peft_config=None, label_smoothing: float = 0.0, in_order: bool = False,
                      precompute: bool = True):
    """A ``DPOTrainer`` over conversational prompt/chosen/rejected ``rows``; with ``label_smoothing`` > 0,
    the loss ``options.loss`` names with that flip probability (``dpo_loss_args``); ``in_order``: batches
    follow the rows' order; ``precompute``: without ``ref_model``, the reference log-probs are computed once
    before training."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from cai.train.options import micro_batch, trainer_args

    loss = dpo_loss_args(options.loss, label_smoothing, options.sft_weight)
    config = DPOConfig(**trainer_args(options, output_dir), beta=options.beta, max_length=options.max_length,
                       train_sampling_strategy="sequential" if in_order else "random",
                       precompute_ref_log_probs=ref_model is None and precompute,
                       precompute_ref_batch_size=micro_batch(options), **loss)
    return DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def dpo_loss_args(loss: str, epsilon: float, sft_weight: float = 0.0) -> dict:
    """DPOConfig's loss arguments for labels flipped with probability ``epsilon``, plus TRL's ``sft`` loss (the
    chosen answers' token NLL) weighted ``sft_weight`` when it is above 0.

    Conservative DPO (Mitchell 2023), -(1 - e) log s(x) - e log s(-x) with x = beta * (chosen - rejected log
    ratio), is what TRL 1.16 lacks: its sigmoid loss ignores ``label_smoothing``. It is written here as a
    weighted sum of two losses TRL has, sigmoid (-log s(x)) and robust ((-(1 - e) log s(x) + e log s(-x)) /
    (1 - 2e)): 2(1 - e) * sigmoid - (1 - 2e) * robust is exactly the conservative loss, so TRL's trainer,
    metrics and reference handling are used unchanged (``tests/test_dpo.py`` checks the algebra)."""
    if epsilon <= 0:
        types, weights, extra = ["sigmoid"], [1.0], {}
    elif loss == "robust":
        types, weights, extra = ["robust"], [1.0], {"label_smoothing": epsilon}
    else:
        types, weights = ["sigmoid", "robust"], [2 * (1 - epsilon), -(1 - 2 * epsilon)]
        extra = {"label_smoothing": epsilon}
    if sft_weight > 0:
        types, weights = [*types, "sft"], [*weights, sft_weight]
    if types == ["sigmoid"]:
        return extra  # TRL's default loss
    return {"loss_type": types, **({"loss_weights": weights} if weights != [1.0] else {}), **extra}


def conservative_dpo_loss(margin, epsilon: float):
    """The conservative DPO loss per pair for ``margin`` = beta * (chosen - rejected log ratio), shape (B,):
    the cross-entropy of sigmoid(margin) against the soft target 1 - ``epsilon``. The plain reference that
    ``dpo_loss_args``'s weighted sum is checked against."""
    import torch.nn.functional as F

    return -(1 - epsilon) * F.logsigmoid(margin) - epsilon * F.logsigmoid(-margin)


def reading_order(groups: list, options: DPOOptions) -> list[int]:
    """The order the run reads the pairs in: balanced (``balanced_order``) when there is more than one label
    source to balance; else, for a ``max_steps`` run, a seeded shuffle read in sequence (TRL's random sampler
    would draw from every pair, so every pair's reference log-probs would be computed for the few it uses);
    else the file's order, which TRL's random sampler shuffles."""
    import random

    if options.balance and len(set(groups)) > 1:
        return balanced_order(groups, options.seed, options.equal_shares)
    order = list(range(len(groups)))
    if options.max_steps is not None:
        random.Random(options.seed).shuffle(order)
    return order


def pairs_to_see(rows: list[dict], options: DPOOptions, in_order: bool, processes: int = 1) -> list[dict]:
    """The rows a run reads: with ``max_steps`` and batches in order, only the first steps' worth (each step
    takes ``batch_size * grad_accum`` rows in every process)."""
    if not in_order or options.max_steps is None:
        return rows
    return rows[: options.max_steps * options.batch_size * options.grad_accum * processes]


def train_dpo(pairs: str | Path, out_dir: str | Path, model: str = "smollm2-135m",
              options: DPOOptions | None = None) -> Path:
    """DPO-train ``model`` (usually the SFT model) on preference pairs; returns ``out_dir``, a model dir."""
    from cai.distributed import world_size
    from cai.guard import fit_training
    from cai.logs import log_to_run_dir
    from cai.models import load_causal_lm, load_tokenizer, resolve
    from cai.train.artifacts import (
        SCRATCH,
        ModelCard,
        last_logged,
        library_versions,
        save_model_dir,
        saved_weights,
        staging_dir,
        trained_model_id,
    )
    from cai.train.data import read_preference_pairs
    from cai.train.lean_head import lean_lm_head
    from cai.train.options import (
        adapters_as_autocast_runs,
        lora_config,
        quiet_checkpointing_warning,
        weights_dtype,
    )
    from cai.train.progress import show_progress

    options = options or DPOOptions()
    data = read_preference_pairs(pairs)  # fails fast, before any model is loaded or anything written
    groups = data.kinds or [None] * len(data.rows)
    balanced = options.balance and len(set(groups)) > 1
    order = reading_order(groups, options)
    in_order = balanced or options.max_steps is not None
    rows = hard_label_pairs([data.rows[i] for i in order], options.min_confidence)
    kept = len(rows)
    if not rows:
        raise ConfigError(f"no pair has a label confidence of at least {options.min_confidence}",
                          where=str(data.path), fix="lower min_confidence (--min-confidence)")
    smoothing = options.label_smoothing
    if smoothing is None:
        smoothing = min(label_noise(data.rows, options.min_confidence), 0.49)
    rows = pairs_to_see(rows, options, in_order, world_size())
    out_dir = Path(out_dir)
    log_to_run_dir(out_dir)
    source = resolve(model)
    log.info("DPO of %s on %d of %d pairs from %s (%d kept; beta %s, %s loss, label smoothing %.3f, %s)",
             source.model_id, len(rows), len(data.rows), data.path, kept, options.beta, options.loss, smoothing,
             batches_note(len(set(groups)), balanced, options.equal_shares))
    tokenizer = load_tokenizer(source)
    options = fit_training("dpo", source, tokenizer, options,
                           [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")], seqs_per_row=2,
                           frozen_base=True)
    started = time.monotonic()
    with staging_dir(out_dir) as stage:
        policy = load_causal_lm(source, dtype=weights_dtype(options, frozen_base=True))
        peft = lora_config(options, "CAUSAL_LM") if options.lora else None
        # TRL 1.16 precomputes in a datasets cache file that only one process of a launcher can open, so several
        # processes keep a reference model (LoRA: the policy with its adapters off) as before
        single = world_size() == 1
        reference = None if options.lora or single else load_causal_lm(source, dtype=weights_dtype(options))
        with lean_lm_head(), quiet_checkpointing_warning():  # the reference log-probs are computed in the build
            trainer = build_dpo_trainer(policy, tokenizer, rows, stage / SCRATCH, options, peft_config=peft,
                                        ref_model=reference, label_smoothing=smoothing, in_order=in_order,
                                        precompute=single)
            del policy  # the trainer holds it alone (saved_weights releases it)
            with adapters_as_autocast_runs(trainer.model, options):
                result = show_progress(trainer, "dpo").train()
        metrics = {
            "train_loss": result.training_loss,
            "final_loss": last_logged(trainer, "loss"),
            "final_reward_accuracy": last_logged(trainer, "rewards/accuracies"),
            "final_reward_margin": last_logged(trainer, "rewards/margins"),
            "pairs_used": kept,
            "pairs_seen": min(len(rows), result.global_step * options.batch_size * options.grad_accum
                              * world_size()),  # a max_steps run stops before the end of its pairs
            "label_smoothing": round(smoothing, 4),
            "steps": result.global_step,
            "train_seconds": round(result.metrics["train_runtime"], 1),
            "seconds": round(time.monotonic() - started, 1),
        }
        card = ModelCard(
            model_id=trained_model_id(source.model_id, "dpo", data.sha256, options.model_dump()), stage="dpo",
            base=source.model_id, base_path=source.path, constitution=data.constitution,
            data=str(data.path.resolve()), data_sha256=data.sha256, rows=len(data.rows),
            options=options.model_dump(), metrics=metrics, versions=library_versions(),
        )
        model, state_dict = saved_weights(trainer, source, options)
        save_model_dir(model, tokenizer, stage, card, state_dict)
    log.info("DPO done: %s (%s)", out_dir, card.metrics)
    return out_dir

