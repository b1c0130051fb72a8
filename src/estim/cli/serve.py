"""``estim serve``: the clinic service (``estim.serve``), one process for every room."""

from __future__ import annotations

import sys

import click

from estim.cli.common import JOURNAL, UNREACHABLE, USAGE, error_line, fail, need_journal_directory


@click.command()
@click.option(
    "--room",
    "rooms",
    multiple=True,
    metavar="ROOM=URL",
    help="A room and its unit's port (repeat; replaces the config file's [rooms]).",
)
@click.option("--demo", is_flag=True, help="Three rooms on simulated units (sim://).")
@click.option(
    "--bind",
    metavar="HOST:PORT",
    help="Where to listen (default 127.0.0.1:8470; any other address needs clinicians' "
    "tokens in the config file).",
)
@click.option(
    "--db",
    envvar="ESTIM_DB",
    metavar="PATH",
    help="The journal (default: $ESTIM_DB, else estim.db in the app directory).",
)
@click.option(
    "--new-token",
    metavar="NAME",
    help="Print a new token for clinician NAME and the config line that holds its hash; "
    "serve nothing.",
)
def serve(
    rooms: tuple[str, ...], demo: bool, bind: str | None, db: str | None, new_token: str | None
) -> int:
    """Serve every treatment room's unit: an HTTP API under /api/v1, a live event
    stream and a web console at http://127.0.0.1:8470/.

    Rooms come from the clinic config's [rooms.ID] sections (port, name, limits that
    narrow the clinic's), or --room ROOM=URL, or --demo. A unit that is missing or
    unplugged shows as such and is tried again; the other rooms go on. Ctrl-C or
    SIGTERM stops every session (recorded) and closes every unit.
    """
    if new_token is not None:
        from estim.serve.settings import new_token as make_token

        name = " ".join(new_token.split())
        if not name or '"' in name or "\\" in name:
            fail(f"--new-token {new_token!r}: give the clinician's name, without quotes")
        token, digest = make_token()
        click.echo(f"token for {name} (give it to them; it is not stored anywhere):")
        click.echo(f"  {token}")
        click.echo("add to the clinic config file, under [serve.clinicians]:")
        click.echo(f'  "{name}" = "{digest}"')
        return 0
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        fail(
            "estim serve needs the serve extra (FastAPI, uvicorn); from estim's clone: "
            f"python3 -m pip --python {sys.executable} install '.[serve]' ({err})"
        )
    from estim.cli.run import load_clinic_config
    from estim.config import ConfigError
    from estim.errors import JournalError
    from estim.journal import NotAJournal
    from estim.serve import settings as serve_settings
    from estim.serve.service import Service, serve_forever

    config = load_clinic_config()
    try:
        parsed = tuple(serve_settings.room_option(r) for r in rooms)
        settings = serve_settings.load(
            config.path, config.limits, rooms=parsed, demo=demo, bind=bind
        )
    except ConfigError as err:
        fail(str(err))
    problems = settings.problems()
    if problems:
        fail(problems[0], USAGE)
    need_journal_directory(db)
    try:
        service = Service(settings, journal_path=db, presets=config.presets, fhir=config.fhir)
    except JournalError as err:  # a wrong --db is bad usage; a journal that fails, exit 6
        fail(str(err), USAGE if isinstance(err, NotAJournal) else JOURNAL)
    where = f"http://{settings.host}:{settings.port}/"
    click.echo(f"estim serve: {len(settings.rooms)} room(s) at {where}  (Ctrl-C stops)")
    for room in settings.rooms:
        click.echo(f"  {room.id:<12} {room.name:<20} {room.port}")
    if service.interrupted:
        click.echo(
            "recorded as interrupted (the service had stopped unexpectedly): "
            + ", ".join(service.interrupted)
        )
    try:
        serve_forever(service)
    except OSError as err:  # the address is in use, or not this machine's
        error_line(f"cannot listen on {settings.host}:{settings.port}: {err}")
        return UNREACHABLE
    stopped = service.stopped_at_close
    click.echo(
        "estim serve: stopped; "
        + (
            "sessions stopped and recorded: "
            + ", ".join(f"{sid} in {room}" for room, sid in stopped)
            if stopped
            else "no session was running"
        )
    )
    return 0
