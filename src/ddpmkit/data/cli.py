"""``python -m ddpmkit.data list | fetch NAME | show NAME`` (``ddpmkit data`` delegates here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DdpmkitError


def _parser() -> argparse.ArgumentParser:
    from ..cli_args import OneLineParser

    parser = OneLineParser(prog="ddpmkit data", description="Named data sets: list, fetch, show.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the named data sets and where they come from")
    fetch = sub.add_parser("fetch", help="download (pinned sha256) and convert once into the cache")
    fetch.add_argument("name", nargs="+")
    show = sub.add_parser("show", help="write a grid PNG of real images")
    show.add_argument("name", help="a named set, folder:PATH or cifar10:PATH")
    show.add_argument("--out", type=Path, default=None, help="PNG path (default data_<name>.png)")
    show.add_argument("--split", default="train", choices=["train", "test"])
    show.add_argument("--image-size", type=int, default=None)
    show.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from . import fetch, list_datasets, load_dataset

    try:
        if args.command == "list":
            from .named import cached_path

            for info in list_datasets():
                cached = "cached" if cached_path(info.name).exists() else "not fetched"
                print(f"{info.name:14s} {info.size:52s} {info.source}  [{cached}]")
                print(f"{'':14s} {info.description}")
            print("also: folder:PATH (any image folder), cifar10:PATH (cifar-10-python.tar.gz or its folder)")
        elif args.command == "fetch":
            for name in args.name:
                print(fetch(name))
        else:
            import numpy as np

            from ..atomic import check_writable
            from ..viz import image_format, save_grid

            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in args.name.split("/")[-1])
            out = check_writable(args.out or Path(f"data_{safe}.png"), "file", "--out")
            image_format(out, "--out")
            if args.num < 1:
                raise DdpmkitError(f"--num must be at least 1, got {args.num}")
            data = load_dataset(args.name, split=args.split, image_size=args.image_size)
            pick = np.linspace(0, len(data) - 1, num=min(args.num, len(data))).round().astype(int)
            print(save_grid(data.images[pick], out))
            print(f"{data.name}: {len(data)} images {data.images.shape[1:]}, "
                  f"{data.num_classes} classes {data.class_names[:10]}")
    except DdpmkitError as exc:
        print(f"ddpmkit data: error: {exc}", file=sys.stderr)
        return 2
    return 0
