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
        description="Serve ROOT over HTTP until Ctrl-C: GET / is a live dashboard of every "
                    "machine (phase, progress, rate, ETA, last error, log), GET /{mac} and "
                    "/{mac}.bty return the "
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
    tls = p.add_argument_group(
        "HTTPS", "With --tls-cert and --tls-key the server also listens for HTTPS on "
                 "--tls-port, and BOOTYURL= in iPXE scripts points there. The plain --port "
                 "listener stays for iPXE (QEMU's and most NIC ROMs' iPXE cannot do HTTPS): it "
                 "serves scripts, /boot/ and reads, and refuses writes (events, uploads) with "
                 "403, so the token never crosses the wire in clear. Machines verify the "
                 "certificate against pyinit.ca= or a CA baked in with `pyinit initramfs --ca` "
                 "(docs/tls.md).")
    tls.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                     help="PEM certificate (chain) of this server")
    tls.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                     help="PEM private key of --tls-cert (unencrypted)")
    tls.add_argument("--tls-port", type=int, default=8443,
                     help="HTTPS port, 0 for any free port (default: %(default)s)")
    tls.add_argument("--public-tls-url", default=None, metavar="URL",
                     help="this server's HTTPS URL as machines see it, for BOOTYURL= (default: "
                          "the host of --public-url or of the request, with --tls-port)")
    tls.add_argument("--no-plain-http", action="store_true",
                     help="with TLS: no plain HTTP listener at all (an iPXE that does HTTPS, "
                          "or no iPXE)")
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
    if (args.tls_cert is None) != (args.tls_key is None):
        print("pyinit serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_cert is None and (args.no_plain_http or args.public_tls_url):
        print("pyinit serve: --no-plain-http and --public-tls-url need --tls-cert/--tls-key",
              file=sys.stderr)
        return 2
    if not (root / "machines").is_dir() and not (root / "images").is_dir():
        print(f"pyinit serve: warning: {root} has neither machines/ nor images/",
              file=sys.stderr)
    try:
        server = ProvisioningServer(root, host=args.host,
                                    port=None if args.no_plain_http else args.port,
                                    max_upload=args.max_upload, boot_dir=args.boot_dir,
                                    public_url=args.public_url, kernel_args=args.kernel_args,
                                    token=_token(args), tls_cert=args.tls_cert,
                                    tls_key=args.tls_key, tls_port=args.tls_port,
                                    public_tls_url=args.public_tls_url)
    except ValueError as exc:
        print(f"pyinit serve: {exc}", file=sys.stderr)
        return 2
    try:
        server.start()
    except OSError as exc:
        ports = f"{args.port}" + (f" / {args.tls_port}" if args.tls_cert else "")
        print(f"pyinit serve: cannot listen on {args.host}:{ports}: {exc}", file=sys.stderr)
        return 1
    plain = f", plain HTTP for iPXE on {server.http_url}" \
        if args.tls_cert and server.http_url else ""
    print(f"pyinit serve: {root.resolve()} on {server.url}{plain} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
