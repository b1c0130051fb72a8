"""The C fuzz driver (firmware_protocol/reference/fuzz.c), built with the sanitizers:
one million bad frames, none accepted or answered, then random valid requests with
the unit's invariants checked after each."""

from __future__ import annotations

import subprocess

from tests.cbuild import Build


def test_a_million_bad_frames_and_none_accepted(cunit: Build) -> None:
    done = subprocess.run(
        [str(cunit.fuzz), "1000000", "1"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.stderr == ""  # a failure or a sanitizer report
    assert done.returncode == 0
    part1, part2 = done.stdout.splitlines()
    assert part1.startswith("part1 frames=1000000 accepted=0 ")
    assert part2.startswith("part2 requests=200000 ")
