"""Where estim keeps its files: ``$ESTIM_HOME``, else the per-user application
directory; in it ``estim.db`` (unless ``$ESTIM_DB``), ``config.toml`` (unless
``$ESTIM_CONFIG``) and ``run/`` (which process holds which port)."""

from __future__ import annotations

import os
from pathlib import Path


def app_dir() -> Path:
    env = os.environ.get("ESTIM_HOME")
    if env:
        return Path(env).expanduser()
    import click

    return Path(click.get_app_dir("estim"))


def db_path() -> Path:
    env = os.environ.get("ESTIM_DB")
    return Path(env).expanduser() if env else app_dir() / "estim.db"


def config_path() -> Path:
    env = os.environ.get("ESTIM_CONFIG")
    return Path(env).expanduser() if env else app_dir() / "config.toml"
