"""``cai refusals``: how often a model declines harmful prompts, and safe ones (over-refusal)."""

from __future__ import annotations

from pathlib import Path

import typer

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
    workers: int = WORKERS,
    ray: str = RAY,
) -> None:
    """Refusal rate on harmful and on safe prompts, per model, side by side (a keyword check)."""
    import json

    from cai.evaluation.refusals import refusal_comparison
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
    fanout = Fanout(workers, ray)
    reports = refusal_comparison(((spec, fanout.load(spec, dtype=dtype)) for spec in model), sets,
                                 max_new_tokens=max_new_tokens, seed=seed)
    write_atomic(out / "refusals.json", json.dumps({"harmful": harmful, "safe": safe, "models": reports},
                                                   indent=2) + "\n")
    for r in reports:
        h, s = r["sets"]["harmful"], r["sets"]["safe"]
        typer.echo(f"{r['model_spec']}: refuses {h['refusal_rate']:.3f} of {h['n']} harmful prompts, "
                   f"{s['refusal_rate']:.3f} of {s['n']} safe prompts")
    typer.echo(f"written to {out / 'refusals.json'}")
