"""``cai sft``: SL-CAI supervised fine-tuning on the final revisions written by ``cai critique``."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.lean import CHECKPOINTING, MICRO_BATCH


def register(app: typer.Typer) -> None:
    app.command("sft")(sft)


def sft(
    data: Path = typer.Argument(..., help="sft.jsonl from `cai critique` (messages rows)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to write the fine-tuned model into"),
    model: str = typer.Option("smollm2-135m", help="base model: embedded name, local dir, .gguf or Hub id"),
    epochs: float = typer.Option(None, help="passes over the data [default: 1]"),
    max_steps: int = typer.Option(None, "--max-steps", help="stop after this many optimiser steps"),
    lr: float = typer.Option(None, "--lr", help="learning rate [default: 2e-5]"),
    batch_size: int = typer.Option(None, "--batch-size", help="examples per device step [default: 4]"),
    grad_accum: int = typer.Option(None, "--grad-accum", help="steps to accumulate per update [default: 1]"),
    micro_batch_size: int = MICRO_BATCH,
    checkpointing: bool = CHECKPOINTING,
    max_length: int = typer.Option(None, "--max-length", help="truncate examples to this many tokens"),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters, merged into the saved model"),
    lora_r: int = typer.Option(None, "--lora-r", help="LoRA rank [default: 16]"),
    dtype: str = typer.Option(None, help="auto (fp32 + bf16 autocast on GPUs) | fp32 | bf16"),
    seed: int = typer.Option(None, help="random seed [default: 0]"),
    helpful_weight: float = typer.Option(None, "--helpful-weight",
                                         help="copies of each plain helpful answer in the data [default: 1]"),
    max_same_opening: int = typer.Option(None, "--max-same-opening",
                                         help="at most this many revisions opening with the same sentence"),
) -> None:
    """Fine-tune a model on SL-CAI revisions (loss on the response tokens only)."""
    from cai.logs import setup_console
    from cai.train.options import options_from_cli
    from cai.train.sft import SFTOptions, train_sft

    setup_console()
    options = options_from_cli(
        SFTOptions, epochs=epochs, max_steps=max_steps, learning_rate=lr, batch_size=batch_size,
        grad_accum=grad_accum, micro_batch_size=micro_batch_size, gradient_checkpointing=checkpointing,
        max_length=max_length, lora=lora, lora_r=lora_r, dtype=dtype, seed=seed,
        helpful_weight=helpful_weight, max_same_opening=max_same_opening,
    )
    out_dir = train_sft(data, out, model=model, options=options)
    typer.echo(f"SFT model written to {out_dir} (use it with --model {out_dir})")
