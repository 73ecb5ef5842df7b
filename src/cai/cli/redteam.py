"""``cai redteam``: attack success rates of jailbreak templates, per model, side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.grading import GRADER, GRADER_MODEL
from cai.cli.workers import RAY, WORKERS


def register(app: typer.Typer) -> None:
    app.command("redteam")(redteam)


def redteam(
    model: list[str] = typer.Option(["smollm2-135m"], "--model", "-m", help="model(s) to attack; repeatable"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (redteam.json, <model>/replies.jsonl)"),
    prompts: str = typer.Option("redteam:eval", help="harmful requests: a shipped set and split, or a prompt file"),
    templates: Path = typer.Option(None, "--templates", help="jailbreak templates: a YAML/JSON mapping of id "
                                   "to text with {request} (default: the shipped ones, see cai.evaluation.redteam)"),
    limit: int = typer.Option(None, help="use only the first N prompts of the set"),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, help="0: greedy replies"),
    seed: int = typer.Option(0),
    dtype: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU has it) | fp32 | bf16 | fp16; local "
                              "models only"),
    grader: str = GRADER,
    grader_model: str = GRADER_MODEL,
    workers: int = WORKERS,
    ray: str = RAY,
) -> None:
    """Wrap harmful requests in jailbreak templates and measure how often each model does not refuse (or, with a
    harm grader, how often its reply is harmful)."""
    from cai.backends.base import SamplingParams
    from cai.cli.grading import grader_with_agreement
    from cai.errors import ConfigError
    from cai.evaluation.redteam import attack_models, attacks, load_templates
    from cai.fanout import Fanout
    from cai.logs import log_to_run_dir, setup_console
    from cai.prompts import load_prompts, log_bad_rows
    from cai.runs import check_or_record

    setup_console()
    the_templates = load_templates(templates)
    rows, bad = load_prompts(prompts, split="eval", limit=limit)
    log_bad_rows(bad)
    todo = attacks(rows, the_templates)
    if not todo:
        raise ConfigError("no base request to attack", where=prompts,
                          fix="give prompts outside the `jailbreak` category (those are wrapped already)")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, do_sample=temperature > 0,
                            seed=seed)
    settings = {"prompts": prompts, "templates": the_templates, "limit": limit, "sampling": params.to_dict()}
    if grader != "keyword":  # runs graded by keyword before graders existed resume as they were
        settings["grader"] = {"name": grader, "model": grader_model}
    check_or_record(out, "redteam", settings)
    log_to_run_dir(out)
    the_grader, measured = grader_with_agreement(grader, grader_model)
    fanout = Fanout(workers, ray)
    summary = attack_models(model, todo, out, params, templates=the_templates, prompts=prompts,
                            load=lambda spec: fanout.load(spec, dtype=dtype),
                            grader=None if grader == "keyword" else the_grader, grader_agreement=measured)
    _print(summary)
    typer.echo(f"written to {out / 'redteam.json'}")


def _print(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    grader = summary.get("grader", {}).get("name", "keyword")
    what = "reply does not refuse" if grader == "keyword" else f"reply harmful, by {grader}"
    table = Table(title=f"attack success rate ({what}), {summary['base_requests']} requests")
    table.add_column("template")
    specs = list(summary["models"])
    for spec in specs:
        table.add_column(spec, justify="right")

    def cell(figures):
        if figures.get("asr") is None:
            return "-"
        lift = figures.get("lift")
        return f"{figures['asr']:.3f}" + ("" if lift is None or lift == 0 else f" ({lift:+.3f})")

    for name in summary["templates"]:
        table.add_row(name, *[cell(summary["models"][s]["templates"].get(name, {})) for s in specs])
    table.add_row("all", *[cell(summary["models"][s]["overall"]) for s in specs])
    Console().print(table)
