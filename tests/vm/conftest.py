"""Fixtures for VM tests: the built kernel + initramfs, a provisioning server, disks.

The artifacts come from ``$PYINIT_OUT`` (``make test`` sets it after building them) or ``out/``.
When they are missing the VM tests fail under ``make test`` (PYINIT_OUT set) and are skipped in a
bare ``pytest`` run, so a forgotten build step can never turn into a green run without VM tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinit_build.demoimage import DemoImage, build_demo_image
from pyinit_qemu.vm import VM, Disk, Interface, VMConfig, create_disk, guest_url
from tests.serverkit import ObservedServer

REPO = Path(__file__).resolve().parents[2]
NEVER = (r"Traceback \(most recent call last\)", r"Kernel panic", r"Attempted to kill init")


def is_all_zero(path: Path) -> bool:
    """Whether every byte of ``path`` is zero (a disk no one wrote)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return False
    return True


@dataclass(frozen=True)
class Artifacts:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="session")
def artifacts() -> Artifacts:
    out = Path(os.environ.get("PYINIT_OUT", REPO / "out"))
    kernel, initrd = out / "vmlinuz", out / "initramfs.cpio.zst"
    if not (kernel.exists() and initrd.exists()):
        msg = f"{kernel} / {initrd} not built: run `make initramfs`"
        if "PYINIT_OUT" in os.environ:
            pytest.fail(msg)
        pytest.skip(msg)
    return Artifacts(kernel, initrd)


@pytest.fixture(scope="session")
def demo_image(tmp_path_factory: pytest.TempPathFactory) -> DemoImage:
    out = Path(os.environ.get("PYINIT_OUT", REPO / "out"))
    return build_demo_image(out / "demo")


@dataclass
class Server:
    srv: ObservedServer
    root: Path

    @property
    def guest_url(self) -> str:
        return guest_url(self.srv.url)

    def machine(self, mac: str, body: dict[str, Any] | str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        (self.root / "machines" / (mac.replace(":", "-") + ".json")).write_text(text)

    def image(self, name: str, path: Path) -> None:
        (self.root / "images" / name).symlink_to(path)

    def events(self, mac: str) -> list[dict[str, Any]]:
        return self.srv.events(mac)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    # Writes open and symlinks followed anywhere, both asked for by name: these tests link
    # images built under out/ and boot with BOOTYURL= (no iPXE script to carry a token);
    # test_pxe.py boots with the secure defaults.
    with ObservedServer(root, open_writes=True, symlinks="any") as srv:
        yield Server(srv, root)


def boot(artifacts: Artifacts, tmp_path: Path, append: str, *, mac: str,
         disks: list[Path], timeout: float = 240, nic_model: str = "virtio-net-pci",
         interface: Interface = "virtio", policy: str = "poweroff") -> VM:
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd,
                   append=f"{append} pyinit.on_failure={policy}", mac=mac, nic_model=nic_model,
                   disks=[Disk(d, interface=interface) for d in disks], timeout=timeout,
                   workdir=tmp_path / "vm")
    return VM(cfg)


def blank_disk(path: Path, size: int) -> Path:
    return create_disk(path, size)


# The modules whose tests take longest (40-80 s each on the CI machine, from --durations), run
# first: the two xdist workers take tests in collection order and steal from each other when idle
# (--dist worksteal), so a long test started last would leave one core idle for most of it.
LONGEST_FIRST = ("test_golden_boot.py", "test_after_write.py", "test_image_pipeline.py",
                 "test_iso.py", "test_fleet.py", "test_pxe_netns.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: each module keeps its own order
