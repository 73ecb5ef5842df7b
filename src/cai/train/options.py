"""Options every training stage shares (SFT, reward model, DPO), and how they map onto TRL's configs.

Each stage subclasses ``TrainOptions`` with its own fields; unknown keys are errors (``extra="forbid"``).

Precision (``dtype``):
  - ``auto`` (default): fp32 master weights, with bf16 autocast where bf16 is both correct and fast: a CUDA
    GPU with bf16, or a CPU whose bf16 matmuls pass ``cai.precision``'s check at start-up (finite and close to
    fp32 on the model's shapes, and measured faster than fp32); plain fp32 elsewhere (a CPU without native bf16
    runs it hundreds of times slower than fp32).
  - ``fp32``: plain fp32 everywhere.
  - ``bf16``: bf16 weights without autocast: half the memory, but small updates round away (trains worse).

Lean by default: ``batch_size`` is the effective batch of one optimiser step, computed as
``batch_size / micro_batch_size`` forward/backward passes whose gradients are accumulated (the memory guard
picks the micro-batch when it is not set, ``cai.guard``); activation checkpointing is on (TRL's default), so a
pass keeps one hidden state per layer instead of every intermediate activation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Precision = Literal["auto", "fp32", "bf16"]


class TrainOptions(BaseModel):
    """Hyperparameters common to every training stage. ``max_steps`` (if set) overrides ``epochs``."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(1.0, gt=0, description="passes over the training data (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="optimiser steps to train for; overrides epochs when set")
    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate of the optimiser (AdamW)")
    batch_size: int = Field(4, ge=1, description="rows per optimiser step (per process, times grad_accum)")
    micro_batch_size: int | None = Field(None, ge=1, description=(
        "rows per forward/backward pass; batch_size / micro_batch_size passes make one step (it must divide "
        "batch_size). Unset: the memory guard picks the largest that fits, at most MICRO_BATCH_CAP"))
    grad_accum: int = Field(1, ge=1, description=(
        "optimiser steps' worth of batches whose gradients are summed before each update"))
    max_length: int = Field(1024, ge=8, description="tokens per row (prompt and response); longer rows are truncated")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description=(
        "share of the steps over which the learning rate rises from 0"))
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lora: bool = Field(False, description="train LoRA adapters instead of every weight (merged into the saved model)")
    lora_r: int = Field(16, ge=1, description="rank of the LoRA adapters")
    lora_alpha: int = Field(32, ge=1, description=(
        "LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)"))
    lora_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "dropout on the LoRA adapters' input; 0 by default: on a CPU, peft's dropout (a masked copy of every "
        "adapted layer's input) made an SFT step of SmolLM2-135M 1.3x slower and no run here needed it"))
    seed: int = Field(0, description="seed of data order, sampling and initialisation")
    dtype: Precision = Field("auto", description=(
        "precision: auto (bf16 autocast where it is correct and fast here, else fp32), fp32 or bf16"))
    gradient_checkpointing: bool = Field(True, description=(
        "recompute each layer's activations in the backward pass instead of keeping them (TRL's default)"))
    logging_steps: int = Field(1, ge=1, description="log the training figures every this many steps")

    @model_validator(mode="after")
    def _micro_divides_batch(self):
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} does not divide batch_size "
                             f"{self.batch_size}: use a divisor of it (or leave it unset)")
        return self


MICRO_BATCH_CAP = 4  # the guard's largest micro-batch: on a 2-core CPU, SFT of SmolLM2-135M (LoRA without dropout,
                     # no checkpointing) ran 3.2 s a step of 8 at 4 rows a pass against 4.2 at 2, for ~0.6 GB more


def micro_batch(options: TrainOptions) -> int:
    """The rows of one forward/backward pass: the option, or the whole batch when it is unset (the guard sets
    it before a stage trains, ``cai.guard.fit_micro_batch``)."""
    return options.micro_batch_size or options.batch_size


def options_from_cli(cls: type[TrainOptions], **values: Any) -> TrainOptions:
    """Build ``cls`` from command-line values (``None`` = the stage's default); bad values -> ConfigError."""
    from pydantic import ValidationError

    from cai.errors import ConfigError

    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "options"
        raise ConfigError(f"option {name}: {first['msg']} (got {first.get('input')!r})", where="command line",
                          fix=f"pass a valid value for {name} (see --help)") from None


def weights_dtype(options: TrainOptions, *, frozen_base: bool = False):
    """The dtype the trained weights are loaded in (see the module docstring). ``frozen_base``: a causal LM
    whose base weights LoRA leaves frozen; under bf16 autocast they are loaded in bf16, which autocast would
    cast them to at every pass anyway: half their memory, and no bf16 copy of each weight made per pass and
    kept for the backward (SFT of SmolLM2-135M, 4 rows a pass: peak 2.07 GB against 2.56, the same time). The
    adapters stay fp32 (peft upcasts them) and are merged into fp32 weights (``bf16_frozen_base``)."""
    import torch

    if options.dtype == "bf16" or (frozen_base and bf16_frozen_base(options)):
        return torch.bfloat16
    return torch.float32


def bf16_frozen_base(options: TrainOptions) -> bool:
    """Whether LoRA trains under bf16 autocast, so that its frozen base is loaded in bf16 by
    ``weights_dtype(frozen_base=True)`` and not because ``dtype: bf16`` asked for it (autocast only runs with
    ``dtype: auto``): the adapters are then merged into the base's own fp32 weights
    (``artifacts.merged_into_fp32_base``), so the saved model is fp32 and neither the base nor the adapters'
    small updates are rounded to bf16."""
    return options.lora and uses_bf16_autocast(options)


def uses_bf16_autocast(options: TrainOptions) -> bool:
    import torch

    from cai.precision import cpu_bf16_verdict

    if options.dtype != "auto":
        return False
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_verdict().use


def trainer_args(options: TrainOptions, output_dir: Path) -> dict[str, Any]:
    """Keyword arguments shared by ``SFTConfig``, ``RewardConfig`` and ``DPOConfig``.

    Checkpoints are off (a run is short and writes its model once, at the end); nothing is reported to
    external trackers; activation checkpointing follows the option (on by default, as in TRL). Each pass takes
    ``micro_batch(options)`` rows and ``batch_size / micro`` passes make a step.
    """
    micro = micro_batch(options)
    bf16 = uses_bf16_autocast(options)
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        learning_rate=options.learning_rate,
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=options.grad_accum * (options.batch_size // micro),
        warmup_steps=options.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of all steps
        weight_decay=options.weight_decay,
        seed=options.seed,
        data_seed=options.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=bf16 and not has_cuda(),  # transformers allows CPU autocast only with use_cpu
        **_checkpointing_arg(options.gradient_checkpointing),
        logging_steps=options.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=has_cuda(),
    )


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _checkpointing_arg(enabled: bool) -> dict[str, bool]:
    """transformers 5.x renamed ``gradient_checkpointing`` to ``activation_checkpointing``; TRL's configs
    still default the old name to True, so the new name (when it exists) is what turns it off."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: enabled}


def lora_config(options: TrainOptions, task_type: str):
    """A peft ``LoraConfig`` on every linear layer (``task_type``: ``CAUSAL_LM`` or ``SEQ_CLS``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules="all-linear",
        task_type=task_type,
    )


@contextmanager
def adapters_as_autocast_runs(model, options: TrainOptions) -> Iterator[None]:
    """While training LoRA under bf16 autocast: peft's adapters take their input as it comes.

    peft casts each adapter's input to the adapter's dtype (fp32) and autocast casts it straight back to bf16 for
    the matmul, so every adapted layer made two copies of its input per pass, one of them kept for the backward
    (7 per transformer block; the base layer's own bf16 input is another). Turned off (peft's
    ``disable_input_dtype_casting``), the adapters read the base layer's bf16 input, which the backward keeps
    once. Without autocast (fp32, or bf16 weights) peft's casting stays: there the dtypes must match."""
    if not bf16_frozen_base(options):
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield


@contextmanager
def quiet_checkpointing_warning() -> Iterator[None]:
    """TRL 1.16's trainers read ``model.is_gradient_checkpointing``, which transformers 5 deprecates
    (``is_activation_checkpointing``); the call is TRL's, so only that one warning is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
