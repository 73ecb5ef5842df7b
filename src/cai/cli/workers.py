"""The fan-out options the generating commands share (critique, label, refusals, redteam; see cai.fanout)."""

from __future__ import annotations

import typer

WORKERS = typer.Option(0, "--workers", help="generate on N Ray workers, each holding its own copy of the model "
                       "(0: in this process); needs the ray extra: pip install 'cai[ray]'")
RAY = typer.Option(None, "--ray", help="address of a running Ray cluster for --workers (default: start a local "
                   "one for this run)")
