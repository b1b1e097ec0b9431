"""``pyinit demo``: the main job end to end on an embedded default.

1. Builds a golden image with `pyinit image`: a busybox root filesystem, the Debian kernel and
   pyinit's initramfs (ginit mode) as its initrd, GPT, GRUB for BIOS and UEFI, zstd copy.
2. Starts the provisioning server on loopback, with the image's manifest as the machine's action
   (compressed image, its sha256 checksum, the raw size).
3. Boots a QEMU machine from ``out/vmlinuz`` + ``out/initramfs.cpio.zst`` that provisions its
   own disk twice the image's size: writes the image (its sha256 checked while streaming), grows
   the root partition and filesystem to the end of the disk, writes the machine's hostname and
   network configuration into the target, and reboots. The host then checks the partition table.
4. Boots the provisioned disk through SeaBIOS and GRUB, with no ``-kernel``, to the marker the
   target's own ``/sbin/marker`` prints — with the new hostname and pyinit's network file.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pyinit import parttable
from pyinit.errors import PyinitError
from pyinit.units import MIB
from pyinit_build import initramfs
from pyinit_build.golden import build, busybox
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk, guest_url
from pyinit_server.server import ProvisioningServer

DEMO_MAC = "52:54:00:de:00:01"
DEMO_HOSTNAME = "pyinit-demo"  # in the golden image
MACHINE_HOSTNAME = "rack1-node01"  # given by the machine's action


def build_golden(out: Path, kernel: Path, initrd: Path) -> tuple[Path, build.Manifest]:
    """``out/demo/golden.img`` (+ .zst, .json) from the busybox rootfs. Reproducible, ~2 s."""
    demo = out / "demo"
    rootfs = demo / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    busybox.busybox_rootfs(rootfs)
    spec = build.ImageSpec(
        rootfs=rootfs, output=demo / "golden.img", table="gpt", firmware="both",
        kernel=kernel, initrds=(initrd,), hostname=DEMO_HOSTNAME, headroom=32 * MIB,
        cmdline="entrypoint=/sbin/marker pyinit.on_failure=poweroff quiet loglevel=4",
        source_date_epoch=busybox.EPOCH)
    return spec.output, build.build_image(spec, progress=lambda line: print(f"demo: {line}"))


def run_demo(out: Path, *, keep: bool = False, timeout: float = 300.0) -> dict[str, Any]:
    kernel, initrd = out / "vmlinuz", out / "initramfs.cpio.zst"
    for path in (kernel, initrd):
        if not path.exists():
            raise PyinitError(f"{path} is missing: run `pyinit initramfs` (or `make demo`)")
    image, manifest = build_golden(out, kernel, initrd)
    compressed = image.with_name(manifest.action["image"])
    work = Path(tempfile.mkdtemp(prefix="pyinit-demo-"))
    root = work / "server"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / compressed.name).symlink_to(compressed.resolve())
    mac_file = DEMO_MAC.replace(":", "-") + ".json"
    (root / "machines" / mac_file).write_text(json.dumps({
        "action": "writeImage", "sourceImage": f"images/{compressed.name}",
        "checksum": manifest.action["checksum"], "size": manifest.action["size"],
        "destinationDevice": "/dev/vda", "growPartition": "last", "hostname": MACHINE_HOSTNAME,
        "network": "dhcp", "finish": "reboot"}, indent=2))
    disk = create_disk(work / "disk.raw", 2 * manifest.virtual_size)
    started = time.monotonic()
    # secure defaults: the machine gets its own token (as an iPXE script would carry it); the
    # image is a link to the one built under out/, followed by name
    with ProvisioningServer(root, symlinks="any") as server:
        append = (f"MYURL={guest_url(server.url)} pyinit.token={server.machine_token(DEMO_MAC)} "
                  "pyinit.on_failure=poweroff quiet loglevel=4")
        cfg = VMConfig(kernel=kernel, initrd=initrd, append=append, mac=DEMO_MAC,
                       disks=[Disk(disk)], timeout=timeout, workdir=work / "vm")
        print(f"demo: server {server.url}, machine {DEMO_MAC}, image {compressed.name} "
              f"({compressed.stat().st_size} bytes zstd, {manifest.virtual_size} raw)",
              flush=True)
        with VM(cfg, on_output=_echo) as vm:
            result = vm.expect_event(step="result", timeout=timeout)
            vm.wait_exit(timeout=60)
            vm.assert_never(r"Traceback", r"Kernel panic")
        events = server.events(DEMO_MAC)
    provisioned = time.monotonic() - started
    if result.get("status") != "ok":
        raise PyinitError(f"demo: provisioning failed at {result.get('failed_step')}: "
                          f"{result.get('error')} (VM log: {work / 'vm' / 'serial.log'})")
    if result.get("checksum_verified") != "sha256" or \
            f"sha256:{result.get('sha256')}" != manifest.action["checksum"]:
        raise PyinitError(f"demo: the writer did not verify the image's sha256: {result}")
    with disk.open("rb") as f:
        table = parttable.parse(f, disk_size=disk.stat().st_size)
    root_part = table.by_number(manifest.root["partition"]) if table else None
    if root_part is None or disk.stat().st_size - root_part.end > 1 << 20:
        raise PyinitError(f"demo: the root partition was not grown to the end of the disk: "
                          f"{root_part}")
    fetched: dict[str, Any] = next((e for e in vm.events if e.get("step") == "action"
                    and e.get("status") == "ok"), {})

    print("demo: booting the provisioned disk through SeaBIOS and GRUB (no -kernel)", flush=True)
    boot_cfg = VMConfig(kernel=None, firmware="bios", disks=[Disk(disk)], nic_model=None,
                        timeout=timeout, workdir=work / "vm-disk")
    with VM(boot_cfg, on_output=_echo) as target:
        marker = target.expect(busybox.MARKER + r".*", timeout=timeout).group(0)
        target.wait_exit(timeout=60)
        target.assert_never(r"Traceback", r"Kernel panic")
    if not {f"hostname={MACHINE_HOSTNAME}", "net=pyinit"} <= set(marker.split()):
        raise PyinitError(f"demo: the provisioned disk booted but printed {marker!r}")
    summary = {"machine": DEMO_MAC, "image": compressed.name,
               "bytes_written": result.get("bytes_written"),
               "bytes_downloaded": result.get("bytes_downloaded"),
               "sha256": result.get("sha256"), "sha256_of": result.get("sha256_of"),
               "seconds": round(provisioned, 1),
               "grow": result.get("grow"),
               "action_fetched_at_uptime": fetched.get("uptime"),
               "server_events": len(events), "marker": marker.strip(), "workdir": str(work)}
    if not keep:
        disk.unlink()
    return summary


def _echo(data: bytes) -> None:
    import sys

    sys.stdout.write(data.decode("utf-8", "replace").replace("\r", ""))
    sys.stdout.flush()


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="provision a QEMU machine from a local server, end to end",
                       description="Build a golden image (pyinit image), boot out/vmlinuz + "
                                   "out/initramfs.cpio.zst in QEMU (TCG) against a loopback "
                                   "provisioning server that serves it, verify the disk's "
                                   "sha256 on the host, then boot the disk through SeaBIOS.")
    p.add_argument("--out", type=Path, default=initramfs.default_out(),
                   help="build output (default: out/)")
    p.add_argument("--keep", action="store_true", help="keep the provisioned disk file")
    p.add_argument("--timeout", type=float, default=300.0, help="whole-VM timeout in seconds")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    # The console is streamed raw by _echo; don't log every serial line a second time.
    logging.getLogger("pyinit_qemu.serial").setLevel(logging.WARNING)
    s = run_demo(args.out, keep=args.keep, timeout=args.timeout)
    print(f"demo: machine {s['machine']} image {s['image']}: {s['bytes_written']} bytes written, "
          f"{s['bytes_downloaded']} downloaded; "
          f"action fetched at {s['action_fetched_at_uptime']} s uptime, "
          f"{s['server_events']} events on the server, {s['seconds']} s total")
    print(f"demo: grow: {s['grow']}")
    print(f"demo: the provisioned disk booted: {s['marker']}")
    print(f"demo: OK image sha256 {s['sha256']} of {s['sha256_of']}, verified while writing; "
          "disk grown, configured and booted")
    return 0
