"""Shared fixtures: the tiny debug config and a per-test output directory (shared functions: helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import DEBUG_CONFIG
from perceiver_mt.config import RunConfig, load_config


@pytest.fixture(autouse=True)
def restore_environment():
    """Undo environment changes of in-process runs (MASTER_PORT of a gloo group, Lightning's PL_* variables):
    a later subprocess would inherit them and try to listen on a port that is still taken."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def debug_config(tmp_path: Path) -> RunConfig:
    return load_config(DEBUG_CONFIG, [f"output_dir={tmp_path / 'run'}", "logger.kind=csv"])
