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

import pytest

from helpers import REPO, make_distribution
from perceiver_mt.registry import TASK_GROUP, registered

EXAMPLE = REPO / "examples" / "iris_plugin"


def install_example(site: Path) -> Path:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    make_distribution(site, "iris_plugin", project["entry-points"])
    shutil.copytree(EXAMPLE / "iris_plugin", site / "iris_plugin")
    return site


@pytest.mark.slow
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


@pytest.mark.slow
def test_unknown_task_plugin_lists_the_installed_ones(tmp_path):
    site = install_example(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "debug.yaml"),
         "tasks.extra.plugin=irsi", f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    # Whatever else is installed in this environment is listed too; the example joins it.
    installed = sorted({*registered(TASK_GROUP), "iris"})
    assert {"av_autoencoding", "byte_mlm", "digits", "optical_flow"} <= set(installed)
    assert result.stderr.strip().splitlines() == [
        f"error: unknown perceiver_mt.tasks plugin 'irsi'; registered: {', '.join(installed)}"
    ]

def test_example_splits_by_species_and_standardises_with_training_statistics_only(tmp_path, monkeypatch):
    """An example is copied: its data handling must be right, not only its plugin wiring."""
    import numpy as np
    from sklearn.datasets import load_iris

    monkeypatch.syspath_prepend(str(install_example(tmp_path / "site")))
    from iris_plugin.iris_task import IrisDataModule

    datamodule = IrisDataModule()
    datamodule.setup()
    iris = load_iris()
    splits = {name: dataset.ids.numpy() for name, dataset in datamodule.datasets.items()}
    assert [len(splits[name]) for name in ("train", "val", "test")] == [100, 25, 25]
    assert len(set(np.concatenate(list(splits.values())))) == 150
    for name, ids in splits.items():  # each species in its overall share (a third), give or take one sample
        counts = np.bincount(iris.target[ids], minlength=3)
        assert counts.max() - counts.min() <= 1, (name, counts)
    train = datamodule.datasets["train"].features.numpy()
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
    test = datamodule.datasets["test"].features.numpy()
    raw = iris.data[splits["train"]]
    np.testing.assert_allclose(test, (iris.data[splits["test"]] - raw.mean(0)) / raw.std(0), atol=1e-5)
