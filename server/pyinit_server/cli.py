"""``pyinit serve``: run the provisioning server in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from pyinit import syscalls, units
from pyinit_server import auth, uploads
from pyinit_server.server import (
    DEFAULT_BACKLOG,
    DEFAULT_GRACE,
    DEFAULT_KERNEL_ARGS,
    DEFAULT_MAX_UPLOAD,
    DEFAULT_MIN_UPLOAD_RATE,
    DEFAULT_UPLOAD_TIMEOUT,
    ProvisioningServer,
)
from pyinit_server.status import MAX_EVENTS
from pyinit_server.store import DEFAULT_MAX_BYTES, DEFAULT_MAX_MACHINES, StoreError, open_store

parse_size = units.size_arg  # --max-upload sizes (64MiB, 500G)


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


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
                   help="largest upload accepted, e.g. 500G (binary units; default: 64G); "
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
    sec = p.add_argument_group(
        "writes", "Writes (events, uploads) need a token (docs/security.md). Each machine's "
                  "iPXE script carries that machine's own token (derived from the secret in "
                  "ROOT/.pyinit/secret, made on first start): good for its events and its "
                  "captures (images/<mac>.*) only. The operator token covers every write: "
                  "--token-file, else ROOT/.pyinit/operator-token (made on first start).")
    tok = sec.add_mutually_exclusive_group()
    tok.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                     help="the operator token: the first line of FILE")
    tok.add_argument("--token", default=None,
                     help="the operator token itself (visible in ps: prefer --token-file)")
    tok.add_argument("--allow-unauthenticated-writes", action="store_true",
                     help="take writes without any token: anyone who reaches the server can "
                          "post events and replace images")
    store = p.add_argument_group("state", "Machine status and event history (docs/server.md)")
    store.add_argument("--db", default=None, metavar="URL",
                       help="the event store: default SQLite in ROOT/.pyinit/state.sqlite3; "
                            "postgresql://user@host/db for several replicas serving one fleet")
    store.add_argument("--max-events", type=positive, default=MAX_EVENTS, metavar="N",
                       help="events kept per machine, oldest dropped first (default: "
                            "%(default)s)")
    store.add_argument("--max-machines", type=positive, default=DEFAULT_MAX_MACHINES,
                       metavar="N",
                       help="machines kept: past N, the machines heard from longest ago are "
                            "forgotten first, with their history, and counted "
                            "(store.machines_dropped in /api/machines; default: %(default)s)")
    store.add_argument("--max-event-bytes", type=parse_size, default=DEFAULT_MAX_BYTES,
                       metavar="SIZE", help="event history kept in total, oldest dropped first "
                                            "(default: 512MiB)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, metavar="N",
                     help="listen queue: connections waiting to be accepted (default: "
                          "%(default)s; the kernel caps it at net.core.somaxconn)")
    lim.add_argument("--upload-timeout", type=float, default=DEFAULT_UPLOAD_TIMEOUT,
                     metavar="SECONDS", help="an upload that sends nothing for this long is "
                                             "cut off (default: %(default)g)")
    lim.add_argument("--min-upload-rate", type=parse_size, default=DEFAULT_MIN_UPLOAD_RATE,
                     metavar="SIZE", help="an upload slower than SIZE per second over a minute "
                                          "is cut off (default: 1KiB; 0: no minimum)")
    lim.add_argument("--symlinks", choices=("inside", "any"), default="inside",
                     help="symlinks under images/ and the boot dir: served only when they "
                          "stay inside it (default), or followed anywhere, as nginx does")
    lim.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                     help="serve from N processes on the same port(s) (SO_REUSEPORT: the kernel "
                          "spreads connections), each with its own event loop and store "
                          "connection; auto: one per CPU. Default: %(default)s")
    lim.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                     help="on SIGTERM: stop accepting, give requests in flight this long "
                          "(default: %(default)g), then exit 0")
    p.set_defaults(func=run)
    return p


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        token: str | None = args.token
        return token
    return auth.read_token_file(args.token_file)


def _workers(text: str) -> int:
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("between 1 and 64")
    return n


def _server(args: argparse.Namespace, *, port: int | None, tls_port: int, reuse_port: bool,
            worker: bool, token: str | None) -> ProvisioningServer:
    return ProvisioningServer(
        args.root, host=args.host, port=None if args.no_plain_http else port,
        max_upload=args.max_upload, boot_dir=args.boot_dir, public_url=args.public_url,
        kernel_args=args.kernel_args, token=token,
        open_writes=args.allow_unauthenticated_writes, db=args.db,
        max_events=args.max_events, max_event_bytes=args.max_event_bytes,
        max_machines=args.max_machines,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_port=tls_port,
        public_tls_url=args.public_tls_url, symlinks=args.symlinks, backlog=args.backlog,
        upload_timeout=args.upload_timeout, min_upload_rate=args.min_upload_rate,
        grace=args.grace, reuse_port=reuse_port, worker=worker)


def _reserve(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound with SO_REUSEPORT to ``port`` (0: a free one), not listening: it holds
    the port for the workers, which bind it too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


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
    workers: int = args.workers
    port, tls_port = args.port, args.tls_port
    held: list[socket.socket] = []
    try:
        token = _token(args)
        if workers > 1:
            # before any fork: the secret, the operator token and the store's schema exist
            # once; stale uploads are removed once; the ports are fixed for every worker
            auth.load_secret(root)
            if token is None:
                token, _path = auth.load_operator_token(root)
            open_store(args.db, root, max_events=args.max_events,
                       max_bytes=args.max_event_bytes, max_machines=args.max_machines).close()
            uploads.remove_stale(root / "images")
            if not args.no_plain_http:
                sock, port = _reserve(args.host, args.port)
                held.append(sock)
            if args.tls_cert is not None:
                sock, tls_port = _reserve(args.host, args.tls_port)
                held.append(sock)
        server = _server(args, port=port, tls_port=tls_port, reuse_port=workers > 1,
                         worker=False, token=token)
    except OSError as exc:
        ports = f"{args.port}" + (f" / {args.tls_port}" if args.tls_cert else "")
        print(f"pyinit serve: cannot listen on {args.host}:{ports}: {exc}", file=sys.stderr)
        return 1
    except (StoreError, auth.AuthError) as exc:
        print(f"pyinit serve: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"pyinit serve: {exc}", file=sys.stderr)
        return 2
    children = [pid for pid in (_fork_worker(args, port, tls_port, token, i)
                                for i in range(1, workers)) if pid]
    try:
        server.start()
    except OSError as exc:
        ports = f"{port}" + (f" / {tls_port}" if args.tls_cert else "")
        print(f"pyinit serve: cannot listen on {args.host}:{ports}: {exc}", file=sys.stderr)
        _stop_workers(children)
        return 1
    except (StoreError, auth.AuthError) as exc:
        print(f"pyinit serve: {exc}", file=sys.stderr)
        _stop_workers(children)
        return 1
    finally:
        for sock in held:
            sock.close()
    plain = f", plain HTTP for iPXE on {server.http_url}" \
        if args.tls_cert and server.http_url else ""
    many = f", {workers} worker processes" if workers > 1 else ""
    print(f"pyinit serve: {root.resolve()} on {server.url}{plain}{many} "
          "(Ctrl-C or SIGTERM to stop)", flush=True)
    if server.token_file is not None:
        print(f"pyinit serve: operator token in {server.token_file}", flush=True)
    stop = _stop_on_signals(args.grace, announce=True)
    server.serve_forever(stop)
    failed = _stop_workers(children)
    print("pyinit serve: stopped", flush=True)
    return 1 if failed else 0


def _stop_on_signals(grace: float, *, announce: bool) -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            return
        if announce:
            print(f"pyinit serve: {signal.Signals(signum).name}: stopping (in-flight requests "
                  f"get {grace:g} s)", flush=True)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop


def _fork_worker(args: argparse.Namespace, port: int, tls_port: int, token: str | None,
                 number: int) -> int:
    """Fork worker ``number``: it serves until SIGTERM/SIGINT and exits; the parent gets its
    pid. Called before the parent starts any thread (a fork copies only the calling thread)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent()
        server = _server(args, port=port, tls_port=tls_port, reuse_port=True, worker=True,
                         token=token)
        stop = _stop_on_signals(args.grace, announce=False)
        server.start()
        server.serve_forever(stop)
        code = 0
    except BaseException as exc:  # a worker must not return into the parent's code
        print(f"pyinit serve: worker {number}: {exc}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """SIGTERM this worker when the first process dies, also by SIGKILL (prctl
    PR_SET_PDEATHSIG): no orphan keeps serving the port."""
    syscalls.set_parent_death_signal(signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_workers(children: list[int]) -> int:
    """SIGTERM every worker (a Ctrl-C reached them already) and wait; how many failed."""
    failed = 0
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in children:
        try:
            _pid, status = os.waitpid(pid, 0)
        except ChildProcessError:
            continue
        if os.waitstatus_to_exitcode(status) != 0:
            failed += 1
            print(f"pyinit serve: worker {pid} exited with "
                  f"{os.waitstatus_to_exitcode(status)}", file=sys.stderr, flush=True)
    return failed
