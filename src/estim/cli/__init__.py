"""The ``estim`` command. Subcommands load on first use, so ``estim --help`` stays fast."""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> (module, function, one-line help shown by ``estim --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": ("estim.cli.simulate", "simulate", "Serve a simulated unit on a pty or TCP."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="estim")
def cli() -> None:
    """estim: timed electrical-stimulation sessions (electrical dry needling, PENS).

    Every session's dwell is 1 to 10 minutes, enforced here and by the unit itself.
    """


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="estim", auto_envvar_prefix="ESTIM")
