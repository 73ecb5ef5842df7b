"""``cai constitution``: validate, show, compare, import and list constitutions."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Validate, show, compare and import constitutions.", no_args_is_help=True)

    @group.command("validate")
    def validate(file: str = typer.Argument(..., help="A constitution YAML file or a shipped name.")) -> None:
        """Check a constitution; print its name, version, size and content hash."""
        from rich.console import Console
        from rich.markup import escape

        from cai.constitution import load_constitution

        c = load_constitution(file)
        Console(soft_wrap=True, highlight=False).print(
            f"[green]ok[/] {escape(c.name)} v{escape(c.version)}: {len(c.principles)} principles, "
            f"{len(c.few_shot)} few-shot examples, hash {c.hash}")

    @group.command("show")
    def show(file_or_name: str = typer.Argument(..., help="A YAML file or a shipped name.")) -> None:
        """Print a constitution's principles as a table."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from cai.constitution import load_constitution

        c = load_constitution(file_or_name)
        table = Table(title=Text(f"{c.name} v{c.version}  ({c.hash[:12]})"),
                      caption=Text(c.description) if c.description else None, show_lines=True)
        # two columns, the texts one under another: five narrow text columns broke words at 80 columns
        table.add_column("id", no_wrap=True)
        table.add_column("principle", overflow="fold", ratio=1)
        for p in c.principles:
            body = Text()
            fields = (("tags", ", ".join(p.tags)), ("weight", f"{p.weight:g}"), ("critique", p.critique),
                      ("revision", p.revision), ("preference", p.preference or ""))
            for n, (name, value) in enumerate(fields):
                body.append(f"{name}: ", style="bold")
                body.append(value + ("\n" if n < len(fields) - 1 else ""))
            table.add_row(Text(p.id), body)
        Console().print(table)

    @group.command("diff")
    def diff_cmd(a: str = typer.Argument(..., help="The old constitution (file or shipped name)."),
                 b: str = typer.Argument(..., help="The new constitution (file or shipped name).")) -> None:
        """Show principles added (+), removed (-) and changed (~) from A to B."""
        from rich.console import Console
        from rich.markup import escape

        from cai.constitution import diff, load_constitution

        old, new = load_constitution(a), load_constitution(b)
        console = Console()
        console.print(f"{old.name} v{old.version} ({old.hash[:12]}) -> {new.name} v{new.version} "
                      f"({new.hash[:12]})", highlight=False, markup=False)
        colours = {"+": "green", "-": "red", "~": "yellow"}
        for line in diff(old, new).lines():
            colour = colours.get(line[:1], "bold")
            console.print(f"[{colour}]{escape(line)}[/]", highlight=False)

    @group.command("import")
    def import_cmd(file: Path = typer.Argument(..., help="Anthropic CAI prompts or HF CAI recipe JSON."),
                   out: Path = typer.Option(None, "--out", "-o", help="Where to write the YAML "
                                            "(default: FILE with a .yaml suffix)."),
                   name: str = typer.Option(None, "--name", help="Constitution name (default: from FILE)."),
                   force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists.")) -> None:
        """Convert another project's constitution file into a cai YAML constitution."""
        from rich.console import Console

        from cai.constitution import dump_yaml, import_constitution
        from cai.errors import ConfigError
        from cai.jsonl import write_atomic

        c = import_constitution(file, name=name)
        out = out or file.with_suffix(".yaml")
        if out.exists() and not force:
            raise ConfigError("the output file already exists", where=str(out),
                              fix="pass --force to overwrite it, or --out to write elsewhere")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, dump_yaml(c))
        Console(soft_wrap=True, highlight=False, markup=False).print(
            f"wrote {out}: {c.name} v{c.version}, {len(c.principles)} principles, "
            f"{len(c.few_shot)} few-shot examples, hash {c.hash}")

    @group.command("list")
    def list_cmd() -> None:
        """List the shipped constitutions with their content hashes."""
        from rich.console import Console

        from cai.constitution import SHIPPED, load_constitution

        console = Console(soft_wrap=True, highlight=False, markup=False)
        for shipped in SHIPPED:
            c = load_constitution(shipped)
            console.print(f"{shipped:<17} v{c.version:<4} {len(c.principles):>3} principles  {c.hash}")

    app.add_typer(group, name="constitution")
