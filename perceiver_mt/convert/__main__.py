"""Pretrained folders in and out.

    python -m perceiver_mt.convert hf SRC --out DIR            a transformers Perceiver (folder or hub name)
    python -m perceiver_mt.convert checkpoint CKPT --out DIR   a training checkpoint of this project
    python -m perceiver_mt.convert push DIR --repo USER/NAME   upload a pretrained folder to the Hugging Face hub
"""

from __future__ import annotations

import argparse
import sys

from perceiver_mt.config import from_dict
from perceiver_mt.convert import ConversionError, convert_hf
from perceiver_mt.errors import ConfigError
from perceiver_mt.model.multitask import MultiTaskPerceiver
from perceiver_mt.plugins import build_tasks
from perceiver_mt.pretrained import load_strictly, push_to_hub, save_pretrained
from perceiver_mt.registry import RegistryError


def write_converted(source: str, out: str, image_size: tuple[int, int] | None = None) -> str:
    converted = convert_hf(source, image_size)
    config = from_dict(converted.config)
    model = MultiTaskPerceiver(config.model, build_tasks(config))
    load_strictly(model, converted.state, f"the conversion of {source!r}")
    save_pretrained(model, config, out)
    tasks = ", ".join(f"{name} ({task.plugin})" for name, task in config.tasks.items()) or "none (encoder only)"
    return f"converted {converted.architecture} from {source} to {out}: shared encoder + tasks: {tasks}"


def write_exported(checkpoint: str, out: str) -> str:
    from perceiver_mt.inference import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    predictor.save_pretrained(out)
    return f"exported {checkpoint} to {out}: tasks {', '.join(predictor.tasks)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perceiver_mt.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    hf = commands.add_parser("hf", help="a Hugging Face transformers Perceiver -> a pretrained folder")
    hf.add_argument("source", help="folder written by save_pretrained, or a hub name")
    hf.add_argument("--out", required=True, help="pretrained folder to write")
    hf.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                    help="input size of an image classifier (default 224 224; the learned variant's is fixed)")
    export = commands.add_parser("checkpoint", help="a training checkpoint (file or sharded folder) -> a pretrained folder")
    export.add_argument("checkpoint")
    export.add_argument("--out", required=True, help="pretrained folder to write")
    push = commands.add_parser("push", help="upload a pretrained folder to the hub (needs HF_TOKEN or a login)")
    push.add_argument("folder")
    push.add_argument("--repo", required=True, help="hub repository, e.g. user/my-perceiver")
    push.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "hf":
            print(write_converted(args.source, args.out, tuple(args.image_size) if args.image_size else None))
        elif args.command == "checkpoint":
            print(write_exported(args.checkpoint, args.out))
        else:
            print(f"uploaded {args.folder} to {push_to_hub(args.folder, args.repo, args.private)}")
    except (ConversionError, ConfigError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
