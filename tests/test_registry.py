"""Entry-point registry: built-ins found like any plugin, unknown and duplicate names explained."""

from __future__ import annotations

import sys

import pytest

from perceiver_mt import registry
from perceiver_mt.registry import DATAMODULE_GROUP, TASK_GROUP, RegistryError
from perceiver_mt.task import Task

from helpers import make_distribution


def test_built_in_tasks_and_datamodules_are_registered():
    assert {"digits", "byte_mlm"} <= set(registry.registered(TASK_GROUP))
    assert {"digits", "pydoc_text"} <= set(registry.registered(DATAMODULE_GROUP))
    assert issubclass(registry.load_task("digits"), Task)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(RegistryError, match=r"unknown perceiver_mt.tasks plugin 'nope'; registered: .*byte_mlm.*digits"):
        registry.load_task("nope")


def test_duplicate_name_is_an_error(tmp_path, monkeypatch):
    for package in ("twin_a", "twin_b"):  # two installed distributions claim the same task name
        make_distribution(tmp_path / package, package, {TASK_GROUP: {"twin": f"{package}.mod:Task"}})
        monkeypatch.syspath_prepend(str(tmp_path / package))
    with pytest.raises(RegistryError, match="'twin' is registered twice"):
        registry.registered(TASK_GROUP)


def test_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    make_distribution(tmp_path, "broken_plugin", {TASK_GROUP: {"broken": "broken_plugin_mod:Task"}},
                      {"broken_plugin_mod.py": "raise ImportError('needs a library that is not installed')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match="plugin 'broken' .* failed to load: needs a library"):
        registry.load_task("broken")
    assert "broken_plugin_mod" not in sys.modules
