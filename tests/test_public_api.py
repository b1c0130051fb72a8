"""Everything public is importable from ``estim``, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import estim


def test_every_exported_name_resolves() -> None:
    for name in estim.__all__:
        assert getattr(estim, name) is not None, name


def test_import_estim_is_light() -> None:
    code = "import sys, estim; print([m for m in ('serial', 'pydantic', 'click', 'sqlite3') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="does_not_exist"):
        estim.does_not_exist  # type: ignore[attr-defined]  # noqa: B018
