"""``python -m pyinit.image URL DEVICE``: pyinit's writer on the host (benchmarks, debugging)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import requests

from pyinit.errors import PyinitError
from pyinit.image.diskio import IO_THREADS
from pyinit.image.write import WriteRequest, write_image


def main(argv: list[str] | None = None) -> int:
    from pyinit import log as pyinit_log
    from pyinit.action import parse_checksum

    parser = argparse.ArgumentParser(
        prog="python -m pyinit.image",
        description="Write the image at URL onto DEVICE with pyinit's writer (benchmarks, "
                    "debugging). Logs go to stderr; stdout gets one JSON line: the WriteResult, "
                    "or {\"error\": ..., \"type\": ...} with exit status 1.")
    parser.add_argument("url", metavar="URL", help="http(s) URL of the image (raw, gzip, zstd, "
                        "xz or bzip2: recognised by its magic bytes)")
    parser.add_argument("device", metavar="DEVICE", help="the block device to overwrite")
    parser.add_argument("--checksum", metavar="ALGO:HEX", help="sha256:<hex> or sha512:<hex>")
    parser.add_argument("--checksum-url", metavar="URL", help="a SHA256SUMS-style file")
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help="the raw image's size (refused up front if the disk is smaller)")
    parser.add_argument("--verify", action="store_true",
                        help="read the written range back (O_DIRECT) and compare")
    parser.add_argument("--preserve-on-error", action="store_true",
                        help="after a failure, leave the disk as it is (no wipe)")
    parser.add_argument("--keyring", metavar="FILE",
                        help="OpenPGP keyring: the image must then be signed (URL.sig, or "
                             "--signature-url; a --checksum-url by its .gpg)")
    parser.add_argument("--signature-url", metavar="URL",
                        help="the image's detached signature (default with --keyring: URL.sig)")
    parser.add_argument("--allow-file", action="store_true",
                        help="allow a regular file as DEVICE (tests)")
    parser.add_argument("--direct", action=argparse.BooleanOptionalAction, default=None,
                        help="O_DIRECT writes to block devices (default: on)")
    parser.add_argument("--read-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="no byte for this long: the connection stalled, resume (default 30)")
    parser.add_argument("--io-threads", type=int, default=IO_THREADS, metavar="N",
                        help=f"disk operations in flight (default {IO_THREADS})")
    args = parser.parse_args(argv)
    pyinit_log.configure(console=sys.stderr)
    try:
        req = WriteRequest(url=args.url, device=args.device,
                           checksum=parse_checksum(args.checksum) if args.checksum else None,
                           checksum_url=args.checksum_url, size=args.size, verify=args.verify,
                           preserve_on_error=args.preserve_on_error, keyring=args.keyring,
                           signature_url=args.signature_url)
        with requests.Session() as session:
            result = write_image(req, session=session, allow_regular_file=args.allow_file,
                                 direct=args.direct, read_timeout=args.read_timeout,
                                 io_threads=max(1, args.io_threads))
    except PyinitError as exc:
        print(f"pyinit.image: {exc}", file=sys.stderr)
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}), flush=True)
        return 1
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
