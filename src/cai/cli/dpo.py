"""``cai dpo``: RLAIF by direct preference optimisation on pairs from ``cai label``."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.lean import CHECKPOINTING, MICRO_BATCH


def register(app: typer.Typer) -> None:
    app.command("dpo")(dpo)


def dpo(
    pairs: Path = typer.Argument(..., help="pairs.jsonl from `cai label`"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to write the trained policy into"),
    model: str = typer.Option("smollm2-135m", help="starting policy (usually the SFT model's directory)"),
    beta: float = typer.Option(None, help="KL strength towards the starting model [default: 0.1]"),
    epochs: float = typer.Option(None, help="passes over the data [default: 1]"),
    max_steps: int = typer.Option(None, "--max-steps", help="stop after this many optimiser steps"),
    lr: float = typer.Option(None, "--lr", help="learning rate [default: 1e-6]"),
    batch_size: int = typer.Option(None, "--batch-size", help="pairs per device step [default: 4]"),
    grad_accum: int = typer.Option(None, "--grad-accum", help="steps to accumulate per update [default: 1]"),
    micro_batch_size: int = MICRO_BATCH,
    checkpointing: bool = CHECKPOINTING,
    max_length: int = typer.Option(None, "--max-length", help="truncate prompt + answer to this many tokens"),
    min_confidence: float = typer.Option(
        None, "--min-confidence", help="drop pairs whose label max(p, 1-p) is below this [default: 0.5]"
    ),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters, merged into the saved model"),
    lora_r: int = typer.Option(None, "--lora-r", help="LoRA rank [default: 16]"),
    dtype: str = typer.Option(None, help="auto (fp32 + bf16 autocast on GPUs) | fp32 | bf16"),
    seed: int = typer.Option(None, help="random seed [default: 0]"),
    balance: bool = typer.Option(True, "--balance/--random-order",
                                 help="batches hold each label source in proportion (default), or TRL's random order"),
    equal_shares: bool = typer.Option(False, "--equal-shares",
                                      help="balanced batches hold every label source in equal numbers"),
    sft_weight: float = typer.Option(None, "--sft-weight",
                                     help="weight of an SFT term on the chosen answers (RPO) [default: 0]"),
) -> None:
    """Train a policy with DPO on AI-labelled preference pairs."""
    from cai.logs import setup_console
    from cai.train.dpo import DPOOptions, train_dpo
    from cai.train.options import options_from_cli

    setup_console()
    options = options_from_cli(
        DPOOptions, beta=beta, epochs=epochs, max_steps=max_steps, learning_rate=lr, batch_size=batch_size,
        grad_accum=grad_accum, micro_batch_size=micro_batch_size, gradient_checkpointing=checkpointing,
        max_length=max_length, min_confidence=min_confidence, lora=lora, lora_r=lora_r,
        dtype=dtype, seed=seed, balance=balance, equal_shares=equal_shares, sft_weight=sft_weight,
    )
    out_dir = train_dpo(pairs, out, model=model, options=options)
    typer.echo(f"DPO policy written to {out_dir} (use it with --model {out_dir})")
