"""python -m perceiver_mt.convert hf SRC --out DIR   (SRC: a transformers save_pretrained folder or hub name)"""

from __future__ import annotations

import argparse
import sys

from perceiver_mt.config import from_dict
from perceiver_mt.convert import ConversionError, convert_hf
from perceiver_mt.errors import ConfigError
from perceiver_mt.model.multitask import MultiTaskPerceiver
from perceiver_mt.plugins import build_tasks
from perceiver_mt.pretrained import load_strictly, save_pretrained
from perceiver_mt.registry import RegistryError


def write_converted(source: str, out: str, image_size: tuple[int, int] | None = None) -> str:
    converted = convert_hf(source, image_size)
    config = from_dict(converted.config)
    model = MultiTaskPerceiver(config.model, build_tasks(config))
    load_strictly(model, converted.state, f"the conversion of {source!r}")
    save_pretrained(model, config, out)
    tasks = ", ".join(f"{name} ({task.plugin})" for name, task in config.tasks.items()) or "none (encoder only)"
    return f"converted {converted.architecture} from {source} to {out}: shared encoder + tasks: {tasks}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perceiver_mt.convert", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    hf = commands.add_parser("hf", help="a Hugging Face transformers Perceiver -> a pretrained folder")
    hf.add_argument("source", help="folder written by save_pretrained, or a hub name")
    hf.add_argument("--out", required=True, help="pretrained folder to write")
    hf.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                    help="input size of an image classifier (default 224 224; the learned variant's is fixed)")
    args = parser.parse_args(argv)
    try:
        print(write_converted(args.source, args.out, tuple(args.image_size) if args.image_size else None))
    except (ConversionError, ConfigError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
