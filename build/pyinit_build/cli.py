"""The host-side `pyinit` command: initramfs, image, push, iso, serve, status, vm and demo
subcommands.

Each subcommand lives with its package and registers itself here; the frozen ``/init`` is the
runtime's entry point (``pyinit.init:main``), not this CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pyinit import __version__
from pyinit.errors import PyinitError


def build_parser() -> argparse.ArgumentParser:
    from pyinit_build import demo, initramfs, iso, ocipush
    from pyinit_build.golden import cli as image_cli
    from pyinit_qemu import cli as vm_cli
    from pyinit_server import cli as serve_cli
    from pyinit_server import dnsmasq as dnsmasq_cli
    from pyinit_server import export as export_cli
    from pyinit_server import status_cli

    parser = argparse.ArgumentParser(
        prog="pyinit",
        description="pyinit: provision bare metal from a Python initramfs. Build the "
                    "initramfs, serve actions and images, and boot QEMU machines against them.")
    parser.add_argument("--version", action="version", version=f"pyinit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    initramfs.register(sub)
    image_cli.register(sub)
    iso.register(sub)
    ocipush.register(sub)
    serve_cli.register(sub)
    dnsmasq_cli.register(sub)
    export_cli.register(sub)
    status_cli.register(sub)
    status_cli.register_redeploy(sub)
    vm_cli.register(sub)
    demo.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except PyinitError as exc:
        print(f"pyinit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
