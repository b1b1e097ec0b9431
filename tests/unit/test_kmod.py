"""The modules.dep closure (pure) and the loader against a fake /lib/modules and fake syscalls."""

from __future__ import annotations

import errno
import gzip
import lzma
from pathlib import Path

import pytest
import zstandard

from pyinit import kmod, syscalls
from pyinit.errors import ConfigError

# From Debian's linux-image-6.1.0-56-amd64 (depmod output), trimmed to what is used; long lines
# are wrapped here with a backslash and joined again below.
MODULES_DEP = """\
kernel/fs/mbcache.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko \
kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
""".replace("\\\n", "")

BUILTIN = """\
kernel/net/unix/unix.ko
kernel/net/packet/af_packet.ko
"""


@pytest.fixture
def deps() -> dict[str, tuple[str, ...]]:
    return kmod.parse_modules_dep(MODULES_DEP)


def names(paths: list[str]) -> list[str]:
    return [kmod.module_name(p) for p in paths]


def assert_dependency_first(order: list[str], deps: dict[str, tuple[str, ...]]) -> None:
    for i, path in enumerate(order):
        for dep in deps[path]:
            assert dep in order[:i], f"{dep} must come before {path}"


@pytest.mark.parametrize(("given", "expected"), [
    ("virtio_net", "virtio_net"),
    ("virtio-net", "virtio_net"),
    ("kernel/drivers/md/dm-mod.ko", "dm_mod"),
    ("kernel/arch/x86/crypto/crc32c-intel.ko.xz", "crc32c_intel"),
    ("kernel/fs/ext4/ext4.ko.zst", "ext4"),
    ("/lib/modules/6.1.0-56-amd64/kernel/lib/crc16.ko.gz", "crc16"),
    ("e1000.ko", "e1000"),
])
def test_module_name(given: str, expected: str) -> None:
    assert kmod.module_name(given) == expected


def test_parse_modules_dep(deps: dict[str, tuple[str, ...]]) -> None:
    assert deps["kernel/fs/ext4/ext4.ko"] == (
        "kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko")
    assert deps["kernel/fs/mbcache.ko"] == ()
    assert next(iter(deps)) == "kernel/fs/mbcache.ko"  # file order kept


def test_parse_modules_dep_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        kmod.parse_modules_dep("kernel/a.ko:\nno colon here\n")


def test_parse_module_list() -> None:
    listed = kmod.parse_module_list(
        "# comment\nvirtio_net\n?crc32c-intel   # ENODEV without SSE4.2\n\next4\n?ext4\n")
    assert listed.names == ("virtio_net", "crc32c_intel", "ext4")
    assert listed.optional == frozenset({"crc32c_intel"})  # required anywhere wins
    assert listed.on_demand == frozenset()


def test_parse_module_list_on_demand_marker() -> None:
    listed = kmod.parse_module_list("@xfs\n@?dm-mod\n?@vfat\nahci\n")
    assert listed.names == ("xfs", "dm_mod", "vfat", "ahci")
    assert listed.on_demand == frozenset({"xfs", "dm_mod", "vfat"})
    assert listed.optional == frozenset({"dm_mod", "vfat"})


def test_resolve_orders_dependencies_first(deps: dict[str, tuple[str, ...]]) -> None:
    order = kmod.resolve(["virtio_pci", "virtio_net", "virtio_blk", "ext4"], deps)
    assert names(order) == [
        "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
        "failover", "net_failover", "virtio_net", "virtio_blk",
        "jbd2", "mbcache", "crc16", "ext4",
    ]
    assert_dependency_first(order, deps)
    assert len(order) == len(set(order))


def test_resolve_is_stable_and_accepts_any_spelling(deps: dict[str, tuple[str, ...]]) -> None:
    a = kmod.resolve(["ahci", "dm-mod", "e1000"], deps)
    b = kmod.resolve(["kernel/drivers/ata/ahci.ko", "dm_mod", "e1000.ko", "ahci"], deps)
    assert a == b
    assert names(a) == ["scsi_common", "scsi_mod", "libata", "libahci", "ahci", "dm_mod", "e1000"]


def test_resolve_builtin_is_satisfied_without_loading(deps: dict[str, tuple[str, ...]]) -> None:
    builtin = kmod.parse_modules_builtin(BUILTIN)
    assert builtin == frozenset({"unix", "af_packet"})
    assert kmod.resolve(["af_packet", "e1000"], deps, builtin=builtin) == [
        "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"]


def test_resolve_builtin_dependency_is_skipped(deps: dict[str, tuple[str, ...]]) -> None:
    order = kmod.resolve(["ext4"], deps, builtin={"kernel/lib/crc16.ko"})
    assert names(order) == ["jbd2", "mbcache", "ext4"]


def test_resolve_optional_missing_is_skipped(deps: dict[str, tuple[str, ...]]) -> None:
    order = kmod.resolve(["nvme", "e1000"], deps, optional={"nvme"})
    assert names(order) == ["e1000"]


def test_resolve_required_missing_names_it(deps: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(ConfigError, match="module nvme: not found"):
        kmod.resolve(["e1000", "nvme"], deps)


def test_resolve_detects_cycles() -> None:
    cyclic = kmod.parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ConfigError, match="cycle"):
        kmod.resolve(["a"], cyclic)


def test_loaded_modules() -> None:
    text = ("virtio_net 69632 0 - Live 0x0000000000000000\n"
            "net_failover 24576 1 virtio_net, Live 0x0000000000000000\n")
    assert kmod.loaded_modules(text) == frozenset({"virtio_net", "net_failover"})


# --- load() ------------------------------------------------------------------------------------

RELEASE = "6.1.0-test"


def make_tree(root: Path, files: dict[str, bytes], dep: str, builtin: str = "") -> Path:
    base = root / RELEASE
    base.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    (base / "modules.dep").write_text(dep)
    (base / "modules.builtin").write_text(builtin)
    return root


class FakeKernel:
    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.images: list[bytes] = []
        self.fail = fail or {}

    def finit_module(self, fd: int, params: str = "", flags: int = 0) -> None:
        with open(fd, "rb", closefd=False) as fh:
            self._take(fh.read())

    def init_module(self, image: bytes, params: str = "") -> None:
        self._take(image)

    def _take(self, image: bytes) -> None:
        name = image.decode()
        if name in self.fail:
            raise OSError(self.fail[name], f"finit_module: {name}")
        self.images.append(image)


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()
    monkeypatch.setattr(syscalls, "finit_module", fake.finit_module)
    monkeypatch.setattr(syscalls, "init_module", fake.init_module)
    return fake


def test_load_in_order_with_compressed_modules(tmp_path: Path, fake_kernel: FakeKernel) -> None:
    dep = ("kernel/a.ko.xz: kernel/b.ko.zst kernel/c.ko.gz\n"
           "kernel/b.ko.zst: kernel/c.ko.gz\nkernel/c.ko.gz:\nkernel/d.ko:\n")
    root = make_tree(tmp_path, {
        "kernel/a.ko.xz": lzma.compress(b"a"),
        "kernel/b.ko.zst": zstandard.ZstdCompressor().compress(b"b"),
        "kernel/c.ko.gz": gzip.compress(b"c"),
        "kernel/d.ko": b"d",
    }, dep)
    proc_modules = tmp_path / "proc-modules"
    proc_modules.write_text("")
    loaded = kmod.load(["a", "d"], modules_root=root, release=RELEASE, proc_modules=proc_modules)
    assert loaded == ["c", "b", "a", "d"]
    assert fake_kernel.images == [b"c", b"b", b"a", b"d"]


def test_load_skips_loaded_and_eexist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(fail={"b": errno.EEXIST})
    monkeypatch.setattr(syscalls, "finit_module", fake.finit_module)
    root = make_tree(tmp_path, {"k/a.ko": b"a", "k/b.ko": b"b", "k/c.ko": b"c"},
                     "k/a.ko: k/b.ko k/c.ko\nk/b.ko:\nk/c.ko:\n")
    proc_modules = tmp_path / "proc-modules"
    proc_modules.write_text("c 16384 0 - Live 0x0\n")
    assert kmod.load(["a"], modules_root=root, release=RELEASE,
                     proc_modules=proc_modules) == ["a"]
    assert fake.images == [b"a"]


def test_load_failure_names_module_and_errno(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(fail={"b": errno.ENOEXEC})
    monkeypatch.setattr(syscalls, "finit_module", fake.finit_module)
    root = make_tree(tmp_path, {"k/a-x.ko": b"a", "k/b.ko": b"b"}, "k/a-x.ko: k/b.ko\nk/b.ko:\n")
    with pytest.raises(kmod.ModuleLoadError, match=r"module b: ENOEXEC \(Exec format error\)"):
        kmod.load(["a_x"], modules_root=root, release=RELEASE,
                  proc_modules=tmp_path / "absent")


def test_load_optional_failure_is_skipped(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(fail={"crc32c-intel": errno.ENODEV})
    monkeypatch.setattr(syscalls, "finit_module", fake.finit_module)
    root = make_tree(tmp_path, {"k/crc32c-intel.ko": b"crc32c-intel", "k/gen.ko": b"gen"},
                     "k/crc32c-intel.ko:\nk/gen.ko:\n")
    loaded = kmod.load(["crc32c_intel", "gen", "absent"], optional={"crc32c-intel", "absent"},
                       modules_root=root, release=RELEASE, proc_modules=tmp_path / "none")
    assert loaded == ["gen"]


def test_load_builtin_and_missing_dep_file(tmp_path: Path, fake_kernel: FakeKernel) -> None:
    root = make_tree(tmp_path, {}, "", builtin="kernel/net/packet/af_packet.ko\n")
    assert kmod.load(["af_packet"], modules_root=root, release=RELEASE,
                     proc_modules=tmp_path / "none") == []
    with pytest.raises(ConfigError, match=r"modules\.dep not found"):
        kmod.load(["x"], modules_root=tmp_path, release="other")


@pytest.mark.parametrize(("pattern", "prefix"), [
    ("pci:v00008086d000010D3sv*sd*bc*sc*i*", "pci:v00008086d000010D3sv"),
    ("usb:v0BDAp8153d[2-9]*dc*", "usb:v0BDAp8153d"),
    ("acpi*:PNP0A08:*", "acpi"),
    ("virtio:d00000001v?", "virtio:d00000001v"),
    ("scsi:t-0x00", "scsi:t-0x00"),  # no glob: the whole pattern
    ("*", ""),
])
def test_literal_prefix_stops_at_the_first_glob_character(pattern: str, prefix: str) -> None:
    assert kmod._literal_prefix(pattern) == prefix


def test_alias_module_names_are_normalised_once_per_name() -> None:
    table = kmod.parse_modules_alias("alias pci:v1* dm-mod\nalias pci:v2* dm-mod\n"
                                     "alias fs-ext4 ext4\n# comment\nalias broken\n")
    assert table.entries == (("pci:v1*", "dm_mod"), ("pci:v2*", "dm_mod"), ("fs-ext4", "ext4"))
    assert table.index == {"pci:v1": [(0, "pci:v1*", "dm_mod")],
                           "pci:v2": [(1, "pci:v2*", "dm_mod")]}
