"""Every sequence of vectors/sequences.json, back to back on one C reference unit:
what the unit sends after each step must be exactly the step's ``expect``."""

from __future__ import annotations

from estim.conformance.matching import matches
from tests.cbuild import Build
from tests.vectors import load

from .refunit import FENCE_SEQ, RefUnit

SEQUENCES = load("sequences")


def test_fence_seq_is_unused() -> None:
    for sequence in SEQUENCES:
        for step in sequence["steps"]:
            assert step.get("message", {}).get("seq") != FENCE_SEQ


def test_every_sequence_back_to_back(cunit: Build) -> None:
    with RefUnit(cunit.unit) as unit:
        for sequence in SEQUENCES:
            for number, step in enumerate(sequence["steps"]):
                got = unit.exchange(bytes.fromhex(step["hex"]))
                where = f"{sequence['name']}, step {number}"
                assert len(got) == len(step["expect"]), (where, step["expect"], got)
                for expected, actual in zip(step["expect"], got, strict=True):
                    assert matches(expected, actual), (where, expected, actual)
