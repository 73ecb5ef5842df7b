"""The lean-training options the training commands share (cai sft, cai dpo; see cai.train.options)."""

from __future__ import annotations

import typer

MICRO_BATCH = typer.Option(None, "--micro-batch-size", help=(
    "rows per forward/backward pass (divides the batch size) [default: the largest that fits in memory, "
    "at most 4]"))
CHECKPOINTING = typer.Option(None, "--checkpointing/--no-checkpointing", help=(
    "activation checkpointing: recompute activations in the backward pass (less memory, slower) [default: on]"))
