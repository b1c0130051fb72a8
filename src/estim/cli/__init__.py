"""The ``estim`` command. Subcommands load on first use, so ``estim --help`` stays fast."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import click

from estim.cli.common import EXIT_CODES_HELP, INTERNAL, Failure, error_line

# name -> (module, function, one-line help shown by ``estim --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("estim.cli.run", "run", "Run a timed session on a unit."),
    "stop": ("estim.cli.units", "stop", "Stop any output on a unit now."),
    "info": ("estim.cli.units", "info", "Show a unit's identity and limits."),
    "ports": ("estim.cli.units", "ports", "List serial ports, marking estim units."),
    "clear-fault": ("estim.cli.units", "clear_fault", "Clear a fault latched on a unit."),
    "presets": ("estim.cli.units", "presets", "List session presets."),
    "history": ("estim.cli.records", "history", "List recorded sessions."),
    "show": ("estim.cli.records", "show", "Show one recorded session."),
    "export": (
        "estim.cli.records",
        "export",
        "Export sessions: JSON, CSV, FHIR or an HTML report.",
    ),
    "push": ("estim.cli.push", "push", "Send finished sessions to the clinic's FHIR server."),
    "serve": ("estim.cli.serve", "serve", "Serve every room's unit: HTTP API and web console."),
    "simulate": ("estim.cli.simulate", "simulate", "Serve a simulated unit on a pty or TCP."),
    "conformance": (
        "estim.cli.conformance",
        "conformance",
        "Check a unit against the protocol spec, clause by clause.",
    ),
}


class LazyGroup(click.Group):
    """Loads subcommands on first use, and turns every error into one line on stderr
    and a documented exit code (also under click's CliRunner)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        import sys

        extra.setdefault("auto_envvar_prefix", "ESTIM")
        import os

        argv = list(sys.argv[1:] if args is None else args)
        completing = os.environ.get(complete_var or "_ESTIM_COMPLETE")
        if not argv and not completing:
            click.echo(self.get_help(click.Context(self, info_name=prog_name or "estim")))
            sys.exit(0)
        try:
            result = super().main(
                args=argv,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except Failure as err:
            error_line(err.format_message())
            sys.exit(err.code)
        except click.UsageError as err:
            name = err.ctx.command.name if err.ctx is not None else None
            hint = f" (see: estim {name} --help)" if name and err.ctx and err.ctx.parent else ""
            error_line(f"{err.format_message()}{hint}")
            sys.exit(2)
        except click.ClickException as err:
            error_line(err.format_message())
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            error_line("aborted; nothing was started")
            sys.exit(1)
        except click.exceptions.Exit as err:
            sys.exit(err.exit_code)
        except Exception as err:  # a bug: the device's with block has stopped output
            import logging

            logging.getLogger("estim.cli").debug("internal error", exc_info=True)
            error_line(
                f"internal error in estim: {err!r}; any output was stopped; please report this "
                "(the journal keeps the session's record)"
            )
            sys.exit(INTERNAL)
        sys.exit(result if isinstance(result, int) else 0)

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


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP
    + "estim conformance: 1 the clauses that drive current were skipped, 4 the unit failed "
    "a clause (see estim conformance --help).\n"
    + "\nEnvironment: ESTIM_PORT (the unit), ESTIM_DB (the journal), ESTIM_CONFIG (the "
    "clinic config file), ESTIM_HOME (where estim keeps its files).\n\nShell completion: "
    'eval "$(_ESTIM_COMPLETE=bash_source estim)" in ~/.bashrc (zsh_source, fish_source likewise).',
)
@click.version_option(package_name="estim")
def cli() -> None:
    """estim: timed electrical-stimulation sessions (electrical dry needling, PENS).

    Every session's dwell is 1 to 10 minutes, enforced here and by the unit itself.
    """


def main(argv: list[str] | None = None) -> Any:
    """The ``estim`` command (console script entry point)."""
    return cli.main(args=argv, prog_name="estim")
