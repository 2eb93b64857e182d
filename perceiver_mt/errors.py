"""The error every run-time mistake becomes: one line naming what was wrong and what is allowed.

It lives at the bottom of the import graph, so any module (config schema, parallel layer, checks, data)
can raise it without importing the modules above it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration or input mistake, explained in one line; `train.py` prints it and exits with 2."""
