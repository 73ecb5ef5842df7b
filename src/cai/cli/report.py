"""``cai report``: an evaluation report (Markdown, JSON, plots) from the result files of earlier commands."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    paths: list[Path] = typer.Argument(..., help="run directories (searched recursively) or result files"),
    out: Path = typer.Option(..., "--out", "-o", help="where report.md, report.html, report.json and the plots go"),
) -> None:
    """Refusal trade-off, jailbreak success, training curves and judge figures, side by side."""
    from cai.logs import log_to_run_dir, setup_console
    from cai.report import build_report

    setup_console()
    figures = build_report(paths, out)
    log_to_run_dir(out)
    found = ", ".join(f"{len(v)} {k}" for k, v in figures["sources"].items())
    typer.echo(f"report on {found or 'studies'} written to {out / 'report.md'} and {out / 'report.html'} "
               f"({len(figures['plots'])} plots)")
