"""Shared fixtures: the tiny debug config and a per-test output directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perceiver_mt.config import RunConfig, load_config

REPO = Path(__file__).resolve().parent.parent
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"


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


def make_distribution(root: Path, name: str, entry_points: dict[str, dict[str, str]],
                      files: dict[str, str] | None = None) -> Path:
    """A real installed distribution (a `*.dist-info` with METADATA and entry_points.txt) under `root`.

    Putting `root` on sys.path (or PYTHONPATH) makes importlib.metadata find it exactly as it finds a
    pip-installed package.
    """
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    sections = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(sections))
    for relative, text in (files or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root
