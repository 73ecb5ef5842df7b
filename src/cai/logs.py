"""Logging and progress: rich on the terminal, and a plain log file in the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

_FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_console(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    if any(isinstance(h, RichHandler) for h in root.handlers):
        return
    handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_to_run_dir(out_dir: Path, name: str = "cai.log") -> Path:
    """Also write every log line of this process to ``out_dir/name`` (appending across resumes). Under a
    multi-process launcher only the main process writes it (``cai.distributed``)."""
    from cai.distributed import is_main

    out_dir = Path(out_dir)
    if not is_main():
        return (out_dir / name).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = (out_dir / name).resolve()
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FMT))
        handler.setLevel(logging.INFO)
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    return path


def progress(total: int, desc: str):
    """A rich progress bar context: ``with progress(n, "x") as advance: advance(k)``."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def _bar():
        cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*cols, transient=False) as bar:
            task = bar.add_task(desc, total=total)
            yield lambda k=1: bar.advance(task, k)

    return _bar()
