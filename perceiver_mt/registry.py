"""Plugin registry: task plugins and DataModules found through Python entry points.

Built-in plugins register exactly as a third-party package does, through entry points in their
package metadata (`pyproject.toml`), so the core never imports a specific task or DataModule.

    [project.entry-points."perceiver_mt.tasks"]
    my_task = "my_package.my_task:MyTask"
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

TASK_GROUP = "perceiver_mt.tasks"
DATAMODULE_GROUP = "perceiver_mt.datamodules"


class RegistryError(ValueError):
    """A plugin name that is unknown, registered twice, or fails to load."""


def registered(group: str) -> dict[str, EntryPoint]:
    """All entry points of `group` by name; a name registered by two distributions is an error."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        previous = found.get(ep.name)
        if previous is not None and previous.value != ep.value:
            raise RegistryError(
                f"{group} plugin {ep.name!r} is registered twice: {previous.value!r} and {ep.value!r}; "
                "uninstall one or rename it"
            )
        found[ep.name] = ep
    return found


def load(group: str, name: str) -> type:
    """The class registered as `name` in `group`, or a RegistryError listing the known names."""
    plugins = registered(group)
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none (is the package installed? try `pip install -e .`)"
        raise RegistryError(f"unknown {group} plugin {name!r}; registered: {known}")
    try:
        return plugins[name].load()
    except Exception as error:  # import errors inside a plugin must name the plugin
        raise RegistryError(f"{group} plugin {name!r} ({plugins[name].value}) failed to load: {error}") from error


def load_task(name: str) -> type:
    return load(TASK_GROUP, name)


def load_datamodule(name: str) -> type:
    return load(DATAMODULE_GROUP, name)
