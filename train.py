"""Train one shared Perceiver IO on several tasks at once.

    python train.py [--config configs/default.yaml] [dotted.key=value ...]
"""

from __future__ import annotations

import argparse
import sys

from perceiver_mt.config import DEFAULT_CONFIG, ConfigError, load_config
from perceiver_mt.init_from import InitFromError
from perceiver_mt.packaged_data import MissingData
from perceiver_mt.registry import RegistryError
from perceiver_mt.run import train
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
