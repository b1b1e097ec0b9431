"""``pyinit serve``: run the provisioning server in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pyinit import units
from pyinit_server.server import DEFAULT_KERNEL_ARGS, DEFAULT_MAX_UPLOAD, ProvisioningServer

parse_size = units.size_arg  # --max-upload sizes (64MiB, 500G)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="serve machine actions, images and events over HTTP",
        description="Serve ROOT over HTTP until Ctrl-C: GET /{mac} and /{mac}.bty return the "
                    "action of ROOT/machines/{mac}.yaml|.yml|.json as JSON (MAC with dashes or "
                    "colons, any case; ROOT/machines/default.* for unknown machines; files are "
                    "re-read when they change), GET /{mac}.ipxe an iPXE script that boots "
                    "BOOT_DIR/vmlinuz and BOOT_DIR/initramfs.cpio.zst with BOOTYURL= set to "
                    "this server, GET /boot.ipxe a script that chains to it by MAC, "
                    "GET /images/PATH and /boot/PATH serve files with Range support, "
                    "POST /events/{mac} records an event (GET /api/machines[/{mac}]: status "
                    "and history, see pyinit status), POST /image (multipart, field "
                    "BootyImage: BOOTy's readImage) and PUT /images/NAME store an upload as "
                    "ROOT/images/NAME with NAME.sha256 beside it. "
                    "A QEMU guest (pyinit vm) reaches the host's 127.0.0.1 at 10.0.2.2.",
        epilog="example: pyinit serve --root demo/ --boot-dir out/ --port 8080 & "
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
    p.add_argument("--boot-dir", type=Path, default=None, metavar="DIR",
                   help="directory served at /boot/ for iPXE: vmlinuz and initramfs.cpio.zst "
                        "(default: ROOT/boot; `--boot-dir out` serves what pyinit initramfs "
                        "built)")
    p.add_argument("--public-url", default=None, metavar="URL",
                   help="this server's URL as machines see it, for iPXE scripts and BOOTYURL= "
                        "(default: http:// and the Host header of each request)")
    p.add_argument("--kernel-args", default=DEFAULT_KERNEL_ARGS, metavar="ARGS",
                   help="kernel command line of every iPXE script, before BOOTYURL=, BOOTIF= "
                        "and the machine file's pxe.cmdline (default: %(default)s)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", default=None,
                     help="require 'Authorization: Bearer TOKEN' on POST /events, POST /image "
                          "and PUT /images (machines get it as pyinit.token= on their kernel "
                          "command line); reads stay open. Visible in ps: prefer --token-file")
    tok.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                     help="read the token from FILE (its first line)")
    p.set_defaults(func=run)
    return p


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        token: str | None = args.token
        return token
    try:
        lines = args.token_file.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"--token-file {args.token_file}: {exc.strerror or exc}") from exc
    if not lines or not lines[0].strip():
        raise ValueError(f"--token-file {args.token_file}: empty")
    first: str = lines[0].strip()
    return first


def run(args: argparse.Namespace) -> int:
    root: Path = args.root
    if not (root / "machines").is_dir() and not (root / "images").is_dir():
        print(f"pyinit serve: warning: {root} has neither machines/ nor images/",
              file=sys.stderr)
    try:
        server = ProvisioningServer(root, host=args.host, port=args.port,
                                    max_upload=args.max_upload, boot_dir=args.boot_dir,
                                    public_url=args.public_url, kernel_args=args.kernel_args,
                                    token=_token(args))
    except ValueError as exc:
        print(f"pyinit serve: {exc}", file=sys.stderr)
        return 2
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
