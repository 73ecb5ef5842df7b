"""``cai reward``: train the soft-label reward (preference) model on pairs from ``cai label``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("reward")(reward)


def reward(
    pairs: Path = typer.Argument(..., help="pairs.jsonl from `cai label`"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to write the reward model into"),
    model: str = typer.Option("smollm2-135m", help="base model: embedded name, local dir, .gguf or Hub id"),
    epochs: float = typer.Option(None, help="passes over the data [default: 1]"),
    max_steps: int = typer.Option(None, "--max-steps", help="stop after this many optimiser steps"),
    lr: float = typer.Option(None, "--lr", help="learning rate [default: 1e-5]"),
    batch_size: int = typer.Option(None, "--batch-size", help="pairs per device step [default: 4]"),
    grad_accum: int = typer.Option(None, "--grad-accum", help="steps to accumulate per update [default: 1]"),
    max_length: int = typer.Option(None, "--max-length", help="keep the last this many tokens of each input"),
    eval_fraction: float = typer.Option(None, "--eval-fraction", help="held-out share [default: 0.1]"),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters (+ the score head), merged on save"),
    lora_r: int = typer.Option(None, "--lora-r", help="LoRA rank [default: 16]"),
    dtype: str = typer.Option(None, help="auto (fp32 + bf16 autocast on GPUs) | fp32 | bf16"),
    seed: int = typer.Option(None, help="random seed (also picks the held-out pairs) [default: 0]"),
) -> None:
    """Train a reward model on soft AI preference labels; prints held-out pairwise accuracy."""
    from cai.logs import setup_console
    from cai.train.options import options_from_cli
    from cai.train.reward import RewardOptions, train_reward

    setup_console()
    options = options_from_cli(
        RewardOptions, epochs=epochs, max_steps=max_steps, learning_rate=lr, batch_size=batch_size,
        grad_accum=grad_accum, max_length=max_length, eval_fraction=eval_fraction, lora=lora, lora_r=lora_r,
        dtype=dtype, seed=seed,
    )
    report = train_reward(pairs, out, model=model, options=options)
    from cai.report.results import SMALL_EVAL

    accuracy = "n/a (no held-out pairs)" if report.eval_accuracy is None else f"{report.eval_accuracy:.3f}" + (
        f" (on only {report.n_eval} pairs: one pair moves it by {1 / report.n_eval:.2f}; label more prompts for a "
        "reliable figure)" if report.n_eval < SMALL_EVAL else f" (n={report.n_eval})")
    typer.echo(f"reward model written to {report.out_dir}: {report.n_train} train / {report.n_eval} held-out "
               f"pairs, held-out accuracy {accuracy}, train loss {report.train_loss:.4f}")
