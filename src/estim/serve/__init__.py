"""``estim serve``: the clinic service. One process owns the units of a clinic's
treatment rooms and serves a versioned HTTP API (``/api/v1``), a live event stream
and a web console (``/``) on top of the same library every other front uses.

Nothing about current is decided here: every start and every amplitude change goes
to a room's ``Device`` (its ``limits`` judge it, as for the CLI and the library).
Each unit keeps its own threaded runner, so its heartbeats come from its own I/O
thread and never wait on the web server; the web server runs on uvicorn's asyncio
loop and reaches a device only through worker threads (``estim.serve.rooms``).

The modules, one idea each:

- ``settings``: rooms, clinicians' token hashes and the bind address, from the
  clinic's config file and the command line;
- ``actions``: the journal's action log (who did what, from where; schema version 3);
- ``rooms``: one room = one unit, its connection kept alive and retried, its session;
- ``feed``: the journal's events and the rooms' state, to every event stream;
- ``guard``: Host and Origin checks, tokens and session cookies, a rate limit;
- ``api``: the FastAPI application (routes, problem+json errors, the console files);
- ``service``: starting and ending all of it under uvicorn.

This package's ``__init__`` imports nothing heavy: ``estim.journal`` imports
``estim.serve.actions`` for its migration, without FastAPI installed.
"""
