"""``pyinit demo``: the main job end to end on an embedded default.

Builds (or reuses) the demo golden image, starts the provisioning server on loopback, boots a QEMU
machine from ``out/vmlinuz`` + ``out/initramfs.cpio.zst`` that provisions its own disk, and then
checks the disk on the host: its first ``len(image)`` bytes must hash to the image's sha256.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pyinit.errors import PyinitError
from pyinit_build.demoimage import build_demo_image, sha256_file
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk, guest_url
from pyinit_server.server import ProvisioningServer

REPO = Path(__file__).resolve().parents[2]
DEMO_MAC = "52:54:00:de:00:01"


def run_demo(out: Path, *, keep: bool = False, timeout: float = 300.0) -> dict[str, Any]:
    kernel, initrd = out / "vmlinuz", out / "initramfs.cpio.zst"
    for path in (kernel, initrd):
        if not path.exists():
            raise PyinitError(f"{path} is missing: run `pyinit initramfs` (or `make demo`)")
    image = build_demo_image(out / "demo")
    work = Path(tempfile.mkdtemp(prefix="pyinit-demo-"))
    root = work / "server"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / "demo.img.gz").symlink_to(image.gz.resolve())
    mac_file = DEMO_MAC.replace(":", "-") + ".json"
    (root / "machines" / mac_file).write_text(json.dumps({
        "action": "writeImage", "compressed": True, "sourceImage": "images/demo.img.gz",
        "destinationDevice": "/dev/vda", "finish": "poweroff"}, indent=2))
    disk = create_disk(work / "disk.raw", 2 * image.size)
    started = time.monotonic()
    with ProvisioningServer(root) as server:
        append = (f"MYURL={guest_url(server.url)} pyinit.on_failure=poweroff quiet "
                  "loglevel=4")
        cfg = VMConfig(kernel=kernel, initrd=initrd, append=append, mac=DEMO_MAC,
                       disks=[Disk(disk)], timeout=timeout, workdir=work / "vm")
        print(f"demo: server {server.url}, machine {DEMO_MAC}, image {image.gz.name} "
              f"({image.gz.stat().st_size} bytes gz, {image.size} raw)", flush=True)
        with VM(cfg, on_output=_echo) as vm:
            result = vm.expect_event(step="result", timeout=timeout)
            vm.wait_exit(timeout=60)
            vm.assert_never(r"Traceback", r"Kernel panic")
        events = server.events(DEMO_MAC)
    seconds = time.monotonic() - started
    if result.get("status") != "ok":
        raise PyinitError(f"demo: provisioning failed at {result.get('failed_step')}: "
                          f"{result.get('error')} (VM log: {work / 'vm' / 'serial.log'})")
    on_disk = sha256_file(disk, image.size)
    if on_disk != image.sha256:
        raise PyinitError(f"demo: disk sha256 {on_disk} != image sha256 {image.sha256}")
    fetched: dict[str, Any] = next((e for e in vm.events if e.get("step") == "action"
                    and e.get("status") == "ok"), {})
    summary = {"machine": DEMO_MAC, "image": image.gz.name, "bytes": result.get("bytes"),
               "sha256": on_disk, "seconds": round(seconds, 1),
               "action_fetched_at_uptime": fetched.get("uptime"),
               "server_events": len(events), "workdir": str(work)}
    if not keep:
        disk.unlink()
    return summary


def _echo(data: bytes) -> None:
    import sys

    sys.stdout.write(data.decode("utf-8", "replace").replace("\r", ""))
    sys.stdout.flush()


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="provision a QEMU machine from a local server, end to end",
                       description="Boot out/vmlinuz + out/initramfs.cpio.zst in QEMU (TCG) "
                                   "against a loopback provisioning server that serves a demo "
                                   "image; verify the disk's sha256 on the host.")
    p.add_argument("--out", type=Path, default=REPO / "out", help="build output (default: out/)")
    p.add_argument("--keep", action="store_true", help="keep the provisioned disk file")
    p.add_argument("--timeout", type=float, default=300.0, help="whole-VM timeout in seconds")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    # The console is streamed raw by _echo; don't log every serial line a second time.
    logging.getLogger("pyinit_qemu.serial").setLevel(logging.WARNING)
    s = run_demo(args.out, keep=args.keep, timeout=args.timeout)
    print(f"demo: machine {s['machine']} image {s['image']} bytes {s['bytes']} "
          f"action fetched at {s['action_fetched_at_uptime']} s uptime, "
          f"{s['server_events']} events on the server, {s['seconds']} s total")
    print(f"demo: OK disk sha256 {s['sha256']} verified against the image")
    return 0
