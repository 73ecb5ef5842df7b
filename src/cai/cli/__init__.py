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
COMMAND_MODULES = ["env", "constitution", "critique", "sft", "label", "reward", "ppo", "dpo", "refusals", "run"]


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
    from cai.errors import CaiError

    try:
        app(standalone_mode=False)
    except CaiError as e:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(e.render())}", highlight=False)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)))
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
