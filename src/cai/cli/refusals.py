"""``cai refusals``: how often a model declines harmful prompts, and safe ones (over-refusal)."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.grading import GRADER, GRADER_MODEL
from cai.cli.workers import RAY, WORKERS


def register(app: typer.Typer) -> None:
    app.command("refusals")(refusals)


def refusals(
    model: list[str] = typer.Option(["smollm2-135m"], "--model", "-m", help="model(s) to compare; repeatable"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for refusals.json"),
    harmful: str = typer.Option("redteam:eval", help="harmful prompt set (shipped set and split, or a file)"),
    safe: str = typer.Option("helpful:eval", help="safe prompt set (shipped set and split, or a file)"),
    limit: int = typer.Option(None, help="use only the first N prompts of each set"),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens"),
    seed: int = typer.Option(0),
    dtype: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU has it) | fp32 | bf16 | fp16; local "
                              "models only"),
    grader: str = GRADER,
    grader_model: str = GRADER_MODEL,
    workers: int = WORKERS,
    ray: str = RAY,
) -> None:
    """Refusal rate on harmful and on safe prompts, per model, side by side (by default a keyword check; --grader
    picks a guard model or rubric judge, whose agreement with labelled replies is printed and saved)."""
    import json

    from cai.cli.grading import grader_with_agreement
    from cai.evaluation.refusal_rates import refusal_comparison
    from cai.fanout import Fanout
    from cai.jsonl import write_atomic
    from cai.logs import log_to_run_dir, setup_console
    from cai.prompts import load_prompts, log_bad_rows

    setup_console()
    sets = {}
    for name, spec in (("harmful", harmful), ("safe", safe)):
        rows, bad = load_prompts(spec, split="eval", limit=limit)
        log_bad_rows(bad)
        sets[name] = [r.prompt for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    the_grader, measured = grader_with_agreement(grader, grader_model)
    fanout = Fanout(workers, ray)
    reports = refusal_comparison(((spec, fanout.load(spec, dtype=dtype)) for spec in model), sets,
                                 max_new_tokens=max_new_tokens, seed=seed, grader=the_grader)
    write_atomic(out / "refusals.json", json.dumps({"harmful": harmful, "safe": safe, "grader": measured,
                                                    "models": reports}, indent=2) + "\n")
    for r in reports:
        h, s = r["sets"]["harmful"], r["sets"]["safe"]
        typer.echo(f"{r['model_spec']}: harmful prompts ({h['n']}): {_figures(h)}; safe prompts ({s['n']}): "
                   f"{_figures(s)}")
    typer.echo(f"written to {out / 'refusals.json'}")


def _figures(figures: dict) -> str:
    """The rates a grader gave for one prompt set, as text ("refused 0.250, harmful 0.125")."""
    said = [f"{label} {figures[key]:.3f}" for key, label in (("refusal_rate", "refused"), ("harmful_rate", "harmful"))
            if figures.get(key) is not None]
    if figures.get("unparseable"):
        said.append(f"{figures['unparseable']} unparseable")
    return ", ".join(said) or "no reading"
