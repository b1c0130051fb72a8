"""The asyncio runner's equivalent of ``estim run --port PORT --dwell 1m -c 1:2:250:5
--yes --db DB``, for figure 5: one session on ``estim.aio``, one line per event on
stdout, Ctrl-C/SIGTERM stop it (``request_stop``), exit 0 if the dwell completed,
3 if it was stopped.

    python bench/aio_run.py --port /dev/pts/N --db /tmp/x.db [--dwell 60]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import estim.aio
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import StopReason


async def main(port: str, db: str, dwell: float) -> int:
    plan = SessionPlan(
        dwell=dwell,
        channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
    )
    loop = asyncio.get_running_loop()
    with Journal(db) as journal:
        async with estim.aio.connect(port) as unit:
            session = await unit.start(plan, journal=journal)
            for sig, why in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
                loop.add_signal_handler(sig, session.request_stop, StopReason.OPERATOR, why)
            async for event in session.events():
                print(f"{event.utc[11:19]}  {event.kind} {event.data or ''}", flush=True)
            record = await session.wait()
    print(f"{record.outcome.upper()}: delivered {record.delivered_s} s. {record.stop_reason}")
    return 0 if record.outcome == "completed" else 3


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--dwell", type=float, default=60.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.port, args.db, args.dwell)))
