"""A third task from a package outside this repository trains beside `digits`, with no edit to the core.

The example package in examples/iris_plugin is laid out as an installed distribution in a temporary
directory (its code plus a `*.dist-info` whose entry points come from the example's own pyproject.toml),
which is exactly what `pip install` leaves in site-packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO, make_distribution

EXAMPLE = REPO / "examples" / "iris_plugin"


def install_example(site: Path) -> Path:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    make_distribution(site, "iris_plugin", project["entry-points"])
    shutil.copytree(EXAMPLE / "iris_plugin", site / "iris_plugin")
    return site


def test_third_party_task_trains_alongside_digits(tmp_path):
    site = install_example(tmp_path / "site")
    config = tmp_path / "two_tasks.yaml"
    config.write_text((REPO / "configs" / "debug.yaml").read_text().split("tasks:")[0] + """
tasks:
  digits:
    plugin: digits
    options: {num_bands: 4, query_channels: 16}
    data: {batch_size: 16}
  iris:
    plugin: iris
    data: {batch_size: 16}
trainer:
  max_steps: 80
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
""")
    output = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(config), f"output_dir={output}", "logger.kind=csv"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == {"digits", "iris"}
    assert metrics["iris"]["test/acc"] > 0.6  # three classes: chance is 1/3
    assert "iris_plugin" not in "".join(p.read_text() for p in (REPO / "perceiver_mt").rglob("*.py"))


def test_unknown_task_plugin_lists_the_installed_ones(tmp_path):
    site = install_example(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "debug.yaml"),
         "tasks.extra.plugin=irsi", f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    prefix = "error: unknown perceiver_mt.tasks plugin 'irsi'; registered: "
    assert line.startswith(prefix)
    registered = line[len(prefix):].split(", ")
    # Every built-in and the example; other installed plugins may join the list.
    assert {"av_autoencoding", "byte_mlm", "digits", "iris", "optical_flow"} <= set(registered)
    assert registered == sorted(registered)
