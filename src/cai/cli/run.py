"""``cai run``: the whole pipeline from a recipe."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    recipe: Path = typer.Argument(..., help="recipe YAML (see recipes/)"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory [default: runs/<recipe name>]"),
    stages: str = typer.Option(None, help="comma-separated subset of the recipe's stages to run"),
) -> None:
    """Run the pipeline a recipe describes (critique -> sft -> label -> reward -> ppo), resumable."""
    from cai.config import load_config
    from cai.errors import ConfigError
    from cai.logs import setup_console
    from cai.pipeline import run_pipeline

    setup_console()
    config = load_config(recipe)
    if stages:
        chosen = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in config.stages]
        if unknown:
            raise ConfigError(f"stages {unknown} are not in the recipe's stages {config.stages}",
                              fix="pick from the recipe's stages")
        config = config.model_copy(update={"stages": chosen})
    manifest = run_pipeline(config, out or Path("runs") / config.name)
    for name, info in manifest["stages"].items():
        typer.echo(f"{name:<9} {info.get('seconds', '-')!s:>7}s  " +
                   ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("done", "seconds"))[:160])
    typer.echo(f"final model: {manifest['final_model']}")
