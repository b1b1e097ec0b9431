"""Fixtures for VM tests: the built kernel + initramfs, a provisioning server, disks.

The artifacts come from ``$PYINIT_OUT`` (``make test`` sets it after building them) or ``out/``.
When they are missing the VM tests fail under ``make test`` (PYINIT_OUT set) and are skipped in a
bare ``pytest`` run, so a forgotten build step can never turn into a green run without VM tests.
Boots that give QEMU ``-kernel``/``-initrd`` use the archive uncompressed (``Artifacts.initrd``,
made once per build under ``$PYINIT_OUT/test``); the shipped zstd archive itself is what the PXE,
ISO and golden-image boots carry (``Artifacts.archive``), and what ``make bench`` and ``make
demo`` boot.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pyinit_build.demoimage import DemoImage, build_demo_image, sha256_file
from pyinit_qemu.vm import VM, Disk, Interface, VMConfig, create_disk, guest_url
from tests import debian_root
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
    # The built archive as shipped (zstd): what PXE, ISOs and golden images carry and boot.
    archive: Path
    # The same archive uncompressed, for the boots that hand QEMU ``-initrd``: the kernel's
    # zstd inflate of 83 MB costs ~1 s of every such boot under TCG (~0.1 s on hardware), and
    # the cpio inside is byte for byte the one shipped.
    initrd: Path


def uncompressed(archive: Path, cache: Path) -> Path:
    """``archive`` inflated once into ``cache`` (named by its sha256: a rebuilt archive gets a
    new file; written to a temporary name and renamed, so parallel workers never see half)."""
    digest = sha256_file(archive)[:16]
    path = cache / f"initramfs-{digest}.cpio"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with archive.open("rb") as src, tmp.open("wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        tmp.rename(path)
        for old in cache.glob("initramfs-*.cpio"):  # earlier builds' (83 MB each)
            if old != path:
                old.unlink(missing_ok=True)
    return path


@pytest.fixture(scope="session")
def artifacts() -> Artifacts:
    out = Path(os.environ.get("PYINIT_OUT", REPO / "out"))
    kernel, archive = out / "vmlinuz", out / "initramfs.cpio.zst"
    if not (kernel.exists() and archive.exists()):
        msg = f"{kernel} / {archive} not built: run `make initramfs`"
        if "PYINIT_OUT" in os.environ:
            pytest.fail(msg)
        pytest.skip(msg)
    return Artifacts(kernel, archive, uncompressed(archive, out / "test"))


@pytest.fixture(scope="session")
def debian_bookworm() -> debian_root.DebianRoot:
    """A Debian bookworm root (systemd, openssh-server, an older cloud kernel) and the newest
    cloud kernel's .deb: built once per run under ``$PYINIT_OUT/test``
    (:mod:`tests.debian_root`)."""
    out = Path(os.environ.get("PYINIT_OUT", REPO / "out"))
    return debian_root.bookworm(out / "test")


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

    def events_through(self, mac: str, step: str, status: str,
                       timeout: float = 20) -> list[dict[str, Any]]:
        """The events of ``mac`` once one with ``step``/``status`` arrived (the guest's last
        posts may still be in flight when QEMU exits); an AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.events(mac)
            if any(e.get("step") == step and e.get("status") == status for e in got):
                return got
            assert time.monotonic() < deadline, \
                f"no {step} {status} event from {mac} within {timeout:.0f} s: " \
                f"{[(e.get('step'), e.get('status')) for e in got]}"
            time.sleep(0.2)


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


# --- what tests read off the console (#15) ---------------------------------------------------

def result_line(lines: list[str]) -> dict[str, str]:
    """The fields of the console's ``pyinit: RESULT ok`` line."""
    [line] = [s for s in lines if s.startswith("pyinit: RESULT ok ")]
    return dict(f.split("=", 1) for f in shlex.split(line.removeprefix("pyinit: RESULT ok ")))


def assert_progress(lines: list[str], events: list[dict[str, Any]], raw_size: int,
                    known: bool) -> None:
    """#15: the write's progress follows the raw bytes written; its last line agrees with the
    raw image's size on the host (100 % only there), or says "of unknown size" throughout."""
    progress = [e for e in events if (e["step"], e["status"]) == ("provision", "progress")]
    said = [s for s in lines if s.startswith("pyinit: provision: ") and " MB written" in s]
    # a line a second and the last: a write done within the first second (67 MB of zstd at
    # 99 MB/s on a quiet host, failed a fresh-clone run) has the last line only; the cadence
    # itself is a unit test's (tests/unit/test_image_progress.py)
    assert len(progress) == len(said) >= 1, said
    assert progress[-1]["bytes_written"] == raw_size
    if known:
        assert (progress[-1]["size"], progress[-1]["percent"]) == (raw_size, 100.0)
        assert all(e["percent"] < 100 for e in progress[:-1]), progress
        mb = f"{raw_size / 1e6:.0f}"
        assert said[-1].startswith(f"pyinit: provision: {mb} of {mb} MB written (100%), "), said
        assert not any("(100%)" in s or "ETA 0 s" in s for s in said[:-1]), said
    else:
        assert all(e["percent"] is None and e["eta"] is None for e in progress), progress
        assert all(" MB written of unknown size (" in s and "%" not in s for s in said), said


# The modules whose tests take longest (40-80 s each on the CI machine, from --durations), run
# first: the two xdist workers take tests in collection order and steal from each other when idle
# (--dist worksteal), so a long test started last would leave one core idle for most of it.
LONGEST_FIRST = ("test_raid.py", "test_kernel_upgrade.py", "test_identity.py",
                 "test_uefi_boot_entry.py",
                 "test_golden_boot.py", "test_after_write.py",
                 "test_image_pipeline.py", "test_iso.py", "test_fleet.py", "test_pxe_netns.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: each module keeps its own order
