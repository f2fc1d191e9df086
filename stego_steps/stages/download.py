"""Stage `download`: fetch one checksum-verified file into `resources/` and optionally unpack it.

`python -m stego_steps.stages.download --url U [--sha256 S | --md5 M] [--size N] --out P [--extract-to DIR]`
(see `stego_steps.download` for how partial and mismatching downloads are handled).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stego_steps.cli import setup_logging
from stego_steps.download import download, extract
from stego_steps.errors import UserError, cli

log = logging.getLogger(__name__)

def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="where to download from (http, https, ftp or file URL)")
    parser.add_argument("--sha256")
    parser.add_argument("--md5")
    parser.add_argument("--size", type=int, help="expected size in bytes")
    parser.add_argument("--out", type=Path, required=True, help="the file to write")
    parser.add_argument("--extract-to", type=Path, help="unpack the (downloaded or present) archive into DIR")
    parser.add_argument("--instructions", help="data that cannot be downloaded: say this when --out is missing")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not args.out.exists():
        if args.instructions:
            raise UserError(f"{args.out} is missing and cannot be downloaded automatically.\n{args.instructions}")
        if not args.url:
            raise UserError(f"{args.out} is missing and no --url says where to download it from")
        download(args.url, args.out, sha256=args.sha256, md5=args.md5, size=args.size, timeout=args.timeout)
    else:
        log.info("%s is present; not downloading it", args.out)
    if args.extract_to:
        extract(args.out, args.extract_to)


if __name__ == "__main__":
    cli(main)
