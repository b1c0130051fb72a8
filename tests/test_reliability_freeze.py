"""A host frozen mid-session (issue 10, item 5): ``estim run`` in a subprocess gets
SIGSTOP for 4 s, then SIGCONT. The unit's watchdog stops output within its period;
the record must then tell that story with the unit's own delivered time, not "link
lost, delivered unknown" as it did on main.

Real time on a real pty: the freeze is real. The test waits on the simulator's own
log lines, and lets the 4 s pass while reading them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .procs import SimProcess

UNIT_FAULT = 4


@pytest.mark.skipif(sys.platform != "linux", reason="needs POSIX signals and ptys")
def test_a_host_frozen_for_4_s_records_the_unit_watchdog_stop(tmp_path: Path) -> None:
    env = {**os.environ, "ESTIM_HOME": str(tmp_path / "home")}
    for name in ("ESTIM_PORT", "ESTIM_DB", "ESTIM_CONFIG"):
        env.pop(name, None)
    with SimProcess("--pty", "--json") as sim:
        host = subprocess.Popen(
            [
                *(sys.executable, "-m", "estim", "run", "--port", sim.port, "--dwell", "1m"),
                *(
                    "-c",
                    "1:2:250:5",
                    "--ramp",
                    "2",
                    "--yes",
                    "--json",
                    "--db",
                    str(tmp_path / "j.db"),
                ),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            sim.wait_for(lambda e: e["kind"] == "state" and e["state"] == "RUNNING", timeout=60)
            host.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            fault = sim.wait_for(lambda e: e["kind"] == "fault", timeout=10)
            off = sim.wait_for(lambda e: e["kind"] == "output_off", timeout=10)
            while time.monotonic() - frozen_at < 4.0:  # the host stays frozen for 4 s
                sim.readline(4.0 - (time.monotonic() - frozen_at))
            host.send_signal(signal.SIGCONT)
            out, err = host.communicate(timeout=30)
        finally:
            if host.poll() is None:
                host.kill()
                host.communicate()
    assert fault["fault"] == "WATCHDOG"
    record = json.loads(out.strip().splitlines()[-1])["record"]
    story = [(e["t"], e["kind"], e["data"]) for e in record["events"][1:]]
    assert host.returncode == UNIT_FAULT, (record["outcome"], record["stop_reason"], story, err)
    assert record["outcome"] == "faulted"
    assert "WATCHDOG" in record["stop_reason"]
    assert "stalled" in record["stop_reason"]
    assert record["delivered_s"] == off["delivered_ms"] / 1000  # the unit's own figure
    assert "host_stalled" in [e["kind"] for e in record["events"]]
