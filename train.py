"""Train one shared Perceiver IO on several tasks at once.

    python train.py [--config configs/default.yaml] [dotted.key=value ...]

Exit status: 0 done; 2 a mistake in the command, config or data, explained in one line; 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from perceiver_mt.config import DEFAULT_CONFIG, ConfigError, load_config
from perceiver_mt.init_from import InitFromError
from perceiver_mt.packaged_data import MissingData
from perceiver_mt.registry import RegistryError
from perceiver_mt.run import Stopped, train
from perceiver_mt.shutdown import SIGTERM_EXIT_STATUS
from perceiver_mt.task import TaskInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="OmegaConf YAML file (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. trainer.max_steps=100")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        train(config)
    except (ConfigError, RegistryError, TaskInputError, InitFromError, MissingData) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Stopped as stopped:
        print(stopped, file=sys.stderr)
        return SIGTERM_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
