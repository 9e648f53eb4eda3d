"""``convssl shards SRC OUT``: write an image source as webdataset tar shards.

Examples::

    convssl shards photos/ shards/photos --resize 256 --workers 4
    convssl shards imagenet/train shards/in1k-train --labeled --maxcount 2000
    convssl shards fashion-mnist:train shards/fmnist-train
"""

from __future__ import annotations

import argparse
import time
import warnings

from convssl.data.sources import open_source
from convssl.data.writer import write_shards

_LISTED = 10  # skipped files named on the terminal; the manifest lists all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``convssl shards`` options on ``parser``."""
    parser.description = "Write images as webdataset tar shards plus manifest.json."
    parser.add_argument("src", metavar="SRC",
                        help="a folder of images (an ImageFolder tree ROOT/<class>/<images> with --labeled), "
                             "or fashion-mnist:train|test, mnist:train|test")
    parser.add_argument("out", metavar="OUT", help="output folder for shard-NNNNNN.tar and manifest.json")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labeled", action="store_true",
                        help="read a folder as an ImageFolder tree and store each sample's class")
    labels.add_argument("--unlabeled", action="store_true",
                        help="drop the labels of a labeled source (IDX datasets are labeled by default)")
    parser.add_argument("--maxcount", type=int, default=1000, metavar="N", help="most samples per shard (1000)")
    parser.add_argument("--maxsize", type=int, default=256 * 2**20, metavar="BYTES",
                        help="most bytes per shard (256 MiB)")
    parser.add_argument("--resize", type=int, default=None, metavar="N",
                        help="shrink images so their shorter side is N pixels (never enlarges)")
    parser.add_argument("--reencode", choices=("png", "jpg", "webp"), default=None, metavar="FMT",
                        help="re-encode every image as png, jpg (quality 95) or webp; default keeps original bytes")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="parallel writer processes (1)")
    parser.add_argument("--start", type=int, default=0, metavar="I", help="first sample index to write (0)")
    parser.add_argument("--stop", type=int, default=None, metavar="I", help="stop before this sample index (end)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT that is not an earlier convssl output")


def run(args: argparse.Namespace) -> int:
    """Write the shards and print a one-paragraph summary; returns the exit status."""
    started = time.perf_counter()
    source = open_source(args.src, labeled=args.labeled)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipped .* unreadable files")  # printed below
        manifest = write_shards(
            source, args.out,
            maxcount=args.maxcount, maxsize=args.maxsize, resize=args.resize, reencode=args.reencode,
            workers=args.workers, labeled=False if args.unlabeled else None,
            start=args.start, stop=args.stop, overwrite=args.overwrite,
        )
    seconds = time.perf_counter() - started
    classes = f"{len(manifest.classes)} classes" if manifest.labeled else "unlabeled"
    print(f"wrote {len(manifest.shards)} shards, {manifest.count} samples ({classes}), "
          f"{manifest.bytes / 2**20:.1f} MiB to {args.out} in {seconds:.1f} s")
    if manifest.skipped:
        print(f"skipped {manifest.skipped} unreadable files (listed with reasons in manifest.json):")
        for skipped in manifest.skipped_files[:_LISTED]:
            print(f"  {skipped.file}: {skipped.reason}")
        if manifest.skipped > _LISTED:
            print(f"  ... and {manifest.skipped - _LISTED} more")
    return 0
