"""``cai eval``: a model (or several) on a safety benchmark by name, scored in the benchmark's own metric."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.grading import GRADER, GRADER_MODEL


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate_benchmark)


def evaluate_benchmark(
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="harmbench, jailbreakbench, strongreject, xstest, "
                                  "simplesafetytests or advbench"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for eval.json"),
    data: Path = typer.Option(None, "--data", help="a local file in the benchmark's own format (offline); default: "
                              "its Hugging Face id or canonical URL"),
    model: list[str] = typer.Option(["smollm2-135m"], "--model", "-m", help="model(s) to evaluate; repeatable"),
    grader: str = GRADER,
    grader_model: str = GRADER_MODEL,
    limit: int = typer.Option(None, help="use only the first N prompts of each set (harmful, safe)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    seed: int = typer.Option(0),
    dtype: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16; local models only"),
) -> None:
    """Run a named safety benchmark: attack success rate (HarmBench, AdvBench, SimpleSafetyTests, JailbreakBench),
    StrongREJECT score, XSTest refusal rates; 95% bootstrap intervals, the grader's agreement beside them."""
    from cai.cli.grading import grader_with_agreement
    from cai.cli.study import loader
    from cai.evaluation.benchmarks import benchmark as known
    from cai.evaluation.benchmarks import run_benchmark
    from cai.logs import log_to_run_dir, setup_console
    from cai.report.benchmarks import summary_lines

    setup_console()
    bench = known(benchmark)
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    if grader != bench.recommended_grader:
        typer.echo(f"note: {bench.title}'s own figures use the {bench.recommended_grader} grader; this run uses "
                   f"{grader}")
    the_grader, measured = grader_with_agreement(grader, grader_model)
    result = run_benchmark(benchmark, model, out, load=loader(dtype), grader=the_grader, grader_agreement=measured,
                           data=data, limit=limit, max_new_tokens=max_new_tokens, seed=seed)
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"written to {out / 'eval.json'}")
