"""The ``--grader`` / ``--grader-model`` options shared by ``cai refusals``, ``cai redteam`` and ``cai eval``."""

from __future__ import annotations

from typing import Any

import typer

GRADER = typer.Option("keyword", "--grader", help="what reads the replies: keyword (offline default), llama-guard, "
                      "qwen3guard, shieldgemma (guard models), strongreject, harmbench, xstest (rubric judges); "
                      "see docs/guides/evaluation.md")
GRADER_MODEL = typer.Option(None, "--grader-model", help="the grader's model: a Hub id, local path or served spec "
                            "openai:MODEL@URL (default: the guard's Hub id; for a rubric judge the embedded model, "
                            "which is far too small to trust)")


def grader_with_agreement(name: str, model: str | None) -> tuple[Any, dict[str, Any]]:
    """The grader and its measured agreement with the shipped labelled replies (printed, and saved with the
    figures it grades)."""
    from cai.evaluation.graders import agreement, agreement_line, make_grader

    grader = make_grader(name, model)
    measured = agreement(grader)
    typer.echo(agreement_line(measured))
    return grader, measured
