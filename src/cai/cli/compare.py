"""``cai compare``: two or more constitutions on the same prompts, model and seed (``cai.evaluation.compare``)."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.study import DTYPE, HARMFUL, LIMIT, MODEL, OUT, SAFE, SEED, TEMPERATURE, TOKENS


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def compare(
    constitutions: list[str] = typer.Argument(..., help="two or more constitution files or shipped names"),
    out: Path = OUT,
    model: str = MODEL,
    harmful: str = HARMFUL,
    safe: str = SAFE,
    limit: int = LIMIT,
    rounds: int = typer.Option(2, help="critique-revision rounds"),
    max_new_tokens: int = TOKENS,
    temperature: float = TEMPERATURE,
    seed: int = SEED,
    dtype: str = DTYPE,
) -> None:
    """Revisions, refusal and over-refusal rates and round curves side by side, with the constitutions' diff."""
    from cai.cli.study import critique_options, finish, loader, prompt_pairs, start
    from cai.constitution import load_constitution
    from cai.errors import ConfigError
    from cai.evaluation.compare import compare as run

    if len(constitutions) < 2:
        raise ConfigError("give at least two constitutions", fix="e.g. cai compare general customer-service --out DIR")
    loaded = [load_constitution(c) for c in constitutions]
    options = critique_options(rounds=rounds, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature)
    sets = {"harmful": prompt_pairs(harmful, limit), "safe": prompt_pairs(safe, limit)}
    start(out, "compare", {"model": model, "constitutions": [c.ref().model_dump() for c in loaded],
                           "harmful": harmful, "safe": safe, "limit": limit, "options": options.model_dump()})
    finish(out, "compare", run(loaded, sets, out, backend=loader(dtype)(model), options=options))
