"""SL-CAI supervised fine-tuning: train the model on its own constitution-guided final revisions.

Each row becomes a conversational prompt/completion example (prompt = every message before the last
assistant turn, completion = that turn). With that format TRL's ``SFTTrainer`` puts -100 in ``labels``
for every prompt token, so the loss is the SL-CAI loss: cross-entropy on response tokens only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import Field

from cai.train.options import TrainOptions

log = logging.getLogger(__name__)


class SFTOptions(TrainOptions):
    """SL-CAI supervised fine-tuning: the shared training options, and what goes into the data."""

    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate of the optimiser (AdamW)")
    helpful_weight: float = Field(1.0, ge=0, description=(
        "copies of each plain answer to a harmless prompt (rows of kind 'helpful') in the training data; a "
        "fraction adds that share of them once more, chosen by the seed. More weight means fewer needless "
        "refusals of harmless prompts"))
    max_same_opening: int | None = Field(None, ge=1, description=(
        "keep at most this many revision rows whose answer opens with the same sentence (the first ones in "
        "file order); helpful rows are never dropped. A small model's revisions can collapse onto one stock "
        "refusal, and training on every copy teaches that sentence as an opener for any request"))


def opening(text: str) -> str:
    """The first sentence of ``text``, lower-cased and with its spacing normalised."""
    import re

    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return " ".join(first.lower().split())


def capped_openings(rows: list[dict], kinds: list[str | None] | None,
                    cap: int | None) -> tuple[list[dict], list[str | None]]:
    """The rows kept, and their kinds, when at most ``cap`` non-helpful rows may share an opening sentence."""
    from collections import Counter

    seen: Counter[str] = Counter()
    kept_rows, kept_kinds = [], []
    for row, kind in zip(rows, kinds or [None] * len(rows), strict=True):
        if cap is not None and kind != "helpful":
            key = opening(row["completion"][-1]["content"])
            seen[key] += 1
            if seen[key] > cap:
                continue
        kept_rows.append(row)
        kept_kinds.append(kind)
    return kept_rows, kept_kinds


def weighted_rows(rows: list[dict], kinds: list[str | None] | None, weight: float, seed: int = 0) -> list[dict]:
    """``rows`` with every helpful row repeated ``weight`` times (floor, plus a seeded share for the fraction);
    other rows once. The order is the trainer's to shuffle."""
    import math
    import random

    kinds = kinds or [None] * len(rows)
    helpful = [row for row, kind in zip(rows, kinds, strict=True) if kind == "helpful"]
    others = [row for row, kind in zip(rows, kinds, strict=True) if kind != "helpful"]
    whole, part = math.floor(weight), weight - math.floor(weight)
    extra = random.Random(seed).sample(helpful, round(part * len(helpful))) if helpful else []
    return others + helpful * whole + extra


def build_sft_trainer(model, tokenizer, rows: list[dict], output_dir: Path, options: SFTOptions,
                      peft_config=None):
    """An ``SFTTrainer`` over prompt/completion ``rows``; its ``train_dataset`` holds the built labels."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from cai.train.options import trainer_args

    config = SFTConfig(
        **trainer_args(options, output_dir),
        max_length=options.max_length,
        completion_only_loss=True,  # the SL-CAI loss: prompt tokens get label -100
    )
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def train_sft(data: str | Path, out_dir: str | Path, model: str = "smollm2-135m",
              options: SFTOptions | None = None) -> Path:
    """Fine-tune ``model`` on SL-CAI data; returns ``out_dir``, a plain model directory with a model card."""
    from cai.guard import fit_training
    from cai.logs import log_to_run_dir
    from cai.models import load_causal_lm, load_tokenizer, resolve
    from cai.train.artifacts import (
        SCRATCH,
        ModelCard,
        first_logged,
        last_logged,
        library_versions,
        save_model_dir,
        saved_weights,
        staging_dir,
        trained_model_id,
    )
    from cai.train.data import read_sft_data
    from cai.train.lean_head import lean_lm_head
    from cai.train.options import (
        adapters_as_autocast_runs,
        lora_config,
        quiet_checkpointing_warning,
        weights_dtype,
    )
    from cai.train.progress import show_progress

    options = options or SFTOptions()
    dataset = read_sft_data(data)  # fails fast, before any model is loaded or anything written
    out_dir = Path(out_dir)
    log_to_run_dir(out_dir)
    source = resolve(model)
    kept, kinds = capped_openings(dataset.rows, dataset.kinds, options.max_same_opening)
    if len(kept) < len(dataset.rows):
        log.info("dropped %d revision rows past %d with the same opening sentence (max_same_opening)",
                 len(dataset.rows) - len(kept), options.max_same_opening)
    rows = weighted_rows(kept, kinds, options.helpful_weight, options.seed)
    log.info("SFT of %s on %d rows from %s (%d helpful rows weighted %g)", source.model_id, len(rows),
             dataset.path, kinds.count("helpful"), options.helpful_weight)
    tokenizer = load_tokenizer(source)
    options = fit_training("sft", source, tokenizer, options, [r["prompt"] + r["completion"] for r in rows],
                           frozen_base=True)
    started = time.monotonic()
    with staging_dir(out_dir) as stage:
        peft = lora_config(options, "CAUSAL_LM") if options.lora else None
        with lean_lm_head(), quiet_checkpointing_warning():
            lm = load_causal_lm(source, dtype=weights_dtype(options, frozen_base=True))  # the trainer holds it alone
            trainer = build_sft_trainer(lm, tokenizer, rows, stage / SCRATCH, options, peft_config=peft)
            del lm
            with adapters_as_autocast_runs(trainer.model, options):
                result = show_progress(trainer, "sft").train()
        metrics = {
            "train_loss": result.training_loss,
            "first_loss": first_logged(trainer, "loss"),
            "final_loss": last_logged(trainer, "loss"),
            "steps": result.global_step,
            "train_seconds": round(result.metrics["train_runtime"], 1),
            "seconds": round(time.monotonic() - started, 1),
        }
        card = ModelCard(
            model_id=trained_model_id(source.model_id, "sft", dataset.sha256, options.model_dump()), stage="sft",
            base=source.model_id, base_path=source.path, constitution=dataset.constitution,
            data=str(dataset.path.resolve()), data_sha256=dataset.sha256, rows=len(rows),
            options=options.model_dump(), metrics=metrics, versions=library_versions(),
        )
        model, state_dict = saved_weights(trainer, source, options)
        save_model_dir(model, tokenizer, stage, card, state_dict)
    log.info("SFT done: %s (%s)", out_dir, card.metrics)
    return out_dir

