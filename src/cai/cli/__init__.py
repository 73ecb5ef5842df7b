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
# (generate: cai generate, chat; benchmark: cai eval)
COMMAND_MODULES = ["env", "constitution", "generate", "critique", "sft", "label", "reward", "ppo", "grpo", "dpo",
                   "refusals", "redteam", "benchmark", "report", "run", "serve", "compare", "study"]


@app.callback()
def _options(
    threads: str = typer.Option("auto", "--threads", envvar="CAI_THREADS",
                                help="CPU threads for torch: a number, or auto (the cores not already busy "
                                     "with other work, sampled at start-up; see cai/threads.py)"),
) -> None:
    """Constitutional AI toolkit: constitutions, SL-CAI critique-revision, RLAIF, red-teaming, evaluation."""
    from cai.threads import apply_threads, parse_threads

    apply_threads(parse_threads(threads))


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
    from cai.distributed import relaunch_for_accelerate_cpu

    _collect_less_often()
    _interrupt_on_sigint()
    relaunched = relaunch_for_accelerate_cpu(sys.argv)
    _exit(_run() if relaunched is None else relaunched)


def _interrupt_on_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt even when the shell started cai with SIGINT ignored (a job put in
    the background by a non-interactive script inherits it ignored, and Python then keeps it so): a
    `kill -INT` ends the command as Ctrl-C does, with what it finished written and a word on resuming."""
    import signal

    def interrupt(signum, frame):
        _INTERRUPTED.append(signum)  # typer turns the KeyboardInterrupt into a plain exit status 130
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


_INTERRUPTED: list[int] = []


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

        _to_run_log(f"error: {e.render()}")
        Console(stderr=True).print(f"[bold red]error:[/] {escape(e.render())}", highlight=False)
        return 2
    except (typer.Exit, SystemExit) as e:
        return _interrupted() if _INTERRUPTED else _status(getattr(e, "exit_code", getattr(e, "code", 0)))
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except Exception as e:
        if isinstance(e, _usage_errors()):  # unknown command, missing argument, bad option value
            e.show()
            return e.exit_code
        import traceback

        _to_run_log("unexpected error:\n" + traceback.format_exc())
        raise
    if _INTERRUPTED:
        return _interrupted()
    return result if isinstance(result, int) else 0  # click returns an Exit's code in this mode


def _interrupted() -> int:
    """Ctrl-C (SIGINT): what was finished is on disk (stages append whole records), so say how to go on."""
    _to_run_log("interrupted (Ctrl-C)")
    print("\ninterrupted; run the same command again to resume", file=sys.stderr)
    return 130


def _to_run_log(message: str) -> None:
    """Write how a command ended to the run directory's ``cai.log`` (the file handlers of the root logger:
    a command that has a run directory added one); the terminal gets its own message."""
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("cai", logging.ERROR, __file__, 0, message, None, None))
            handler.flush()


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
