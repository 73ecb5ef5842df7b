"""``cai run``: the whole pipeline from a recipe."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    recipe: Path = typer.Argument(..., help="recipe YAML (see recipes/)"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory [default: runs/<recipe name>]"),
    stages: str = typer.Option(None, help="comma-separated stages to run instead of the recipe's (on an existing "
                                          "run: adds stages; finished ones are skipped)"),
    redo: str = typer.Option(None, help="comma-separated finished stages to run again (the stages after them "
                                        "follow), e.g. --redo sft"),
    seeds: str = typer.Option(None, help="comma-separated seeds, e.g. 0,1,2: the RL stages run once per seed "
                                         "(the recipe's `seeds`)"),
) -> None:
    """Run the pipeline a recipe describes (critique -> sft -> label -> reward -> ppo), resumable."""
    from cai.config import STAGES, load_config
    from cai.errors import ConfigError
    from cai.logs import setup_console
    from cai.pipeline import run_pipeline
    from cai.rounds import run_rounds

    setup_console()
    config = load_config(recipe)
    if stages:
        chosen = _stage_list(stages, "--stages", STAGES)
        config = config.model_copy(update={"stages": [s for s in STAGES if s in chosen]})
    if seeds:
        config = config.model_copy(update={"seeds": _seed_list(seeds)})
    again = _stage_list(redo, "--redo", STAGES) if redo else []
    missing = [s for s in again if s not in config.stages]
    if missing:
        raise ConfigError(f"--redo {','.join(missing)}: not among the stages to run {config.stages}",
                          fix="add them to --stages (or to the recipe's stages)")
    run = run_rounds if config.in_rounds else run_pipeline
    manifest = run(config, out or Path("runs") / config.name, redo=tuple(again))
    for name, info in manifest.get("units", {}).items():
        typer.echo(f"{name:<20} {info['seconds']!s:>7}s  model={info['model']}")
    for name, info in manifest["stages"].items():
        typer.echo(f"{name:<9} {info.get('seconds', '-')!s:>7}s  " +
                   ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("done", "seconds", "settings"))[:160])
    typer.echo(f"final model: {manifest['final_model']}")


def _stage_list(text: str, option: str, known: tuple[str, ...]) -> list[str]:
    from cai.errors import ConfigError
    from cai.models import did_you_mean_among

    chosen = [s.strip() for s in text.split(",") if s.strip()]
    for s in chosen:
        if s not in known:
            near = did_you_mean_among(s, known)
            raise ConfigError(f"{option}: unknown stage {s!r}" + (f" (did you mean {near!r}?)" if near else ""),
                              fix=f"pick from {', '.join(known)}")
    return chosen


def _seed_list(text: str) -> list[int]:
    from cai.errors import ConfigError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: not a comma-separated list of integers",
                          fix="e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give distinct seeds", fix="e.g. --seeds 0,1,2")
    return seeds
