"""The ``cai`` command line. Each command group lives in its own module with a ``register(app)``.

Errors a user can fix (``CaiError``) are printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="cai",
    help="Constitutional AI toolkit: constitutions, SL-CAI critique-revision, RLAIF, red-teaming, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts print "[default: N]" literally
)

# command modules, in the order of the pipeline; each has register(app)
COMMAND_MODULES = ["env", "constitution", "critique", "sft", "label", "reward", "ppo", "dpo", "refusals", "redteam",
                   "report", "run", "compare", "study"]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cai.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"cai.cli.{name}":
                continue  # not built yet
            raise
        module.register(app)


_register_all()


def main() -> None:
    """The ``cai`` entry point: run the command, then exit (see ``_exit``)."""
    _collect_less_often()
    _exit(_run())


def _collect_less_often() -> None:
    """Run Python's cycle collector on 10,000 new objects instead of 700, and its older generations
    correspondingly less often. Importing torch creates ~1M long-lived objects, and with the default
    thresholds the collector rescanned them all three times in a labelling run's first seconds: ~0.2 s of
    collector time per command (gc.callbacks), ~0.05 s after this. Cycles are still collected; the command
    line only, the Python API leaves the interpreter's settings alone."""
    import gc

    gc.set_threshold(10_000, 50, 50)


def _run() -> int:
    """Run the command line; return the exit status (unexpected errors propagate with their traceback)."""
    from cai.errors import CaiError

    try:
        result = app(standalone_mode=False)
    except CaiError as e:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(e.render())}", highlight=False)
        return 2
    except (typer.Exit, SystemExit) as e:
        return _status(getattr(e, "exit_code", getattr(e, "code", 0)))
    except typer.Abort:
        return 130
    except Exception as e:
        if isinstance(e, _usage_errors()):  # unknown command, missing argument, bad option value
            e.show()
            return e.exit_code
        raise
    return result if isinstance(result, int) else 0  # click returns an Exit's code in this mode


def _usage_errors() -> tuple[type, ...]:
    """Click's exception class for usage errors: typer >= 0.22 raises its own vendored copy's."""
    classes = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            classes.append(importlib.import_module(module).ClickException)
        except ImportError:
            continue
    return tuple(classes)


def _status(code) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _exit(code: int) -> None:
    """Exit without tearing the interpreter down. With torch loaded, Python's own shutdown (module
    finalisation, freeing every object one by one) takes ~0.4 s on a laptop CPU, more than some
    commands' work. Exit handlers still run (``logging`` flushes its files there), and the outputs were
    written and closed by the command; only the teardown of memory the OS reclaims anyway is skipped."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
