"""The `headscope` click group: usage errors as one line, commands built on first use."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from headscope import __version__
from headscope.cli.plumbing import one_line


class OneLineErrors(click.Group):
    """click, except that a usage error is one stderr line: `Error: MESSAGE Try 'headscope
    inspect --help' for help.` (click prints the usage, the hint and the message on three).

    A lazy group too: a command registered with `add_lazy_command` is built by its factory on
    first use (running it, its --help, or the group's --help), so the modules its flags'
    defaults come from (guard.Policy, api.ConfirmOptions) are imported only then: `inspect`
    never imports them. --help lists the commands by name, as click does; `defined` gives them
    in the order they are defined (the order of a workflow)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy: dict[str, Callable[[], click.Command]] = {}
        self._order: list[str] = list(self.commands)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        name = name or cmd.name
        if name is not None and name not in self._order:
            self._order.append(name)

    def add_lazy_command(self, name: str, factory: Callable[[], click.Command]) -> None:
        self._lazy[name] = factory
        self._order.append(name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._order)

    def defined(self) -> list[str]:
        return list(self._order)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        factory = self._lazy.pop(cmd_name, None)
        if factory is not None:
            self.add_command(factory(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `headscope`: the help
            assert exc.ctx is not None
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            message = one_line(exc.format_message())
            if not message.endswith((".", "?", "!")):
                message += "."
            if exc.ctx is not None:
                option = max(exc.ctx.help_option_names, key=len)  # --help, not -h
                message += f" Try '{exc.ctx.command_path} {option}' for help."
            click.echo(f"Error: {message}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                # A signal while click parsed, before any command ran: the entry point says so
                # with the signal's code (click would print "Aborted!" and exit 1).
                raise exc.__cause__ from None
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="headscope")
def main() -> None:
    """Diagnose and calibrate the MLM head of a pretrained encoder before SPLADE training."""


def commands() -> dict[str, click.Command]:
    """Every command of the group by name, in the order they are defined (the lazy ones built):
    what the documentation and the tests walk."""
    return {name: main.get_command(None, name)  # type: ignore[arg-type,misc]
            for name in main.defined()}  # type: ignore[attr-defined]


def lazy_command(name: str) -> Callable[[Callable[[], click.Command]], Callable]:
    """Register `factory` (which builds and returns the command NAME) with the group, to be
    called on the command's first use."""

    def register(factory: Callable[[], click.Command]) -> Callable[[], click.Command]:
        main.add_lazy_command(name, factory)  # type: ignore[attr-defined]
        return factory

    return register

