"""``pyinit serve``: run the provisioning server in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pyinit import units
from pyinit_server.server import DEFAULT_MAX_UPLOAD, ProvisioningServer

parse_size = units.size_arg  # --max-upload sizes (64MiB, 500G)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="serve machine actions, images and events over HTTP",
        description="Serve ROOT over HTTP until Ctrl-C: GET /{mac} and /{mac}.bty return "
                    "ROOT/machines/{mac}.json (MAC lower-case with dashes; "
                    "ROOT/machines/default.json for unknown machines), GET /images/PATH serves "
                    "ROOT/images/PATH with Range support, POST /events/{mac} records an event, "
                    "POST /image (multipart, field BootyImage: BOOTy's readImage) and "
                    "PUT /images/NAME store an upload as ROOT/images/NAME with NAME.sha256 "
                    "beside it. "
                    "A QEMU guest (pyinit vm) reaches the host's 127.0.0.1 at 10.0.2.2.",
        epilog="example: pyinit serve --root demo/ --port 8080 & "
               "pyinit vm --server http://127.0.0.1:8080")
    p.add_argument("--root", type=Path, default=Path("."),
                   help="directory holding machines/ and images/ (default: current directory)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080,
                   help="port to listen on, 0 for any free port (default: %(default)s)")
    p.add_argument("--max-upload", type=parse_size, default=DEFAULT_MAX_UPLOAD, metavar="SIZE",
                   help="largest upload accepted, e.g. 500G (binary units; default: 1T); "
                        "larger ones are refused with 413")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    root: Path = args.root
    if not (root / "machines").is_dir() and not (root / "images").is_dir():
        print(f"pyinit serve: warning: {root} has neither machines/ nor images/",
              file=sys.stderr)
    server = ProvisioningServer(root, host=args.host, port=args.port,
                                max_upload=args.max_upload)
    try:
        server.start()
    except OSError as exc:
        print(f"pyinit serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"pyinit serve: {root.resolve()} on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
