"""Boot benchmark: kernel start → action fetched, in seconds of guest uptime under QEMU (TCG).

Boots out/vmlinuz + out/initramfs.cpio.zst N times against a loopback `pyinit serve` with a
dryRun action (no disk write) and reports, per run and as medians, the guest uptime at which each
step ended (from the PYINIT-EVENT lines) and the action-fetched uptime against the issue's goal
(≤ 9 s). Not a timed test: a measurement, printed as a table and one JSON line.

    python -m tests.bench.bench_boot [--runs 5] [--out out]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk, guest_url
from pyinit_server.server import ProvisioningServer

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:00:b0:01"
STEPS = ("rootfs", "modules", "network", "action")
GOAL_S = 9.0


def boot_once(out: Path, url: str, disk: Path, workdir: Path) -> dict[str, float]:
    cfg = VMConfig(kernel=out / "vmlinuz", initrd=out / "initramfs.cpio.zst", mac=MAC,
                   append=f"MYURL={url} pyinit.on_failure=poweroff", disks=[Disk(disk)],
                   timeout=180, workdir=workdir)
    with VM(cfg) as vm:
        init = vm.expect(r"\[\s*([\d.]+)\] Run /init as init process", timeout=120)
        row = {"init": float(init.group(1))}
        for step in STEPS:
            row[step] = float(vm.expect_event(step=step, status="ok", timeout=120)["uptime"])
        vm.expect_event(step="result", timeout=60)
        vm.wait_exit(timeout=60)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_boot",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "out")
    args = parser.parse_args(argv)
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="pyinit-bench-boot-") as tmp:
        root = Path(tmp) / "srv"
        (root / "machines").mkdir(parents=True)
        (root / "images").mkdir()
        (root / "machines" / (MAC.replace(":", "-") + ".json")).write_text(json.dumps({
            "action": "writeImage", "sourceImage": "images/none.img",
            "destinationDevice": "/dev/vda", "dryRun": True, "finish": "poweroff"}))
        disk = create_disk(Path(tmp) / "disk.raw", 16 << 20)
        with ProvisioningServer(root) as server:
            for i in range(args.runs):
                rows.append(boot_once(args.out, guest_url(server.url), disk,
                                      Path(tmp) / f"vm{i}"))
                print("boot: run {}: {}".format(i + 1, " ".join(
                    f"{k}={v:.2f}" for k, v in rows[-1].items())), flush=True)
    median = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
    print(f"{'step ends at (guest uptime, s)':32} {'median':>7} {'min':>7} {'max':>7}")
    for key in median:
        values = [r[key] for r in rows]
        print(f"{key:32} {median[key]:7.2f} {min(values):7.2f} {max(values):7.2f}")
    status = "ok" if median["action"] <= GOAL_S else "MISS"
    print(f"action fetched at {median['action']:.2f} s (goal <= {GOAL_S:g} s): {status}")
    print(json.dumps({"boot_action_uptime_s": median["action"], "boot_goal_s": GOAL_S,
                      "boot_medians": median, "boot_runs": rows}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
