"""The initramfs builder end to end (integration), plus its command plumbing with a recorder.

The integration tests share the repo's cache (``<repo>/.cache``: the kernel package and the
frozen bundle, the compressed modules and firmware, the Debian firmware packages), so after the
first build they cost two default builds at zstd level 3 (~30 s each) and
two uncached freezes (~10 s each) for the freeze reproducibility check.
The tests without a marker run no command: they check exact argv lists through the recorder.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import zstandard

from pyinit import proc
from pyinit_build import cpio, freeze, initramfs, kernel, preflight
from pyinit_build.errors import BuildError, PreflightError
from tests.conftest import Recorder
from tests.gpgkeys import Keys, gpg_keys  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    outs = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name)
        # the default build (every driver, Debian firmware from the cache `make initramfs`
        # filled), at zstd level 3: reproducibility is about the layout, not the level
        initramfs.build(initramfs.BuildConfig(out_dir=out, source_date_epoch=1_700_000_000,
                                              zstd_level=3))
        outs.append(out)
    return outs[0], outs[1]


@pytest.fixture(scope="module")
def extracted(two_builds: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, list[str]]:
    out = two_builds[0]
    raw = tmp_path_factory.mktemp("raw") / "initramfs.cpio"
    with (out / "initramfs.cpio.zst").open("rb") as fh:
        raw.write_bytes(zstandard.ZstdDecompressor().stream_reader(fh).read())
    listing = proc.run(["cpio", "-t", "--quiet", "-F", str(raw)]).stdout.splitlines()
    dest = tmp_path_factory.mktemp("root")
    proc.run(["cpio", "-i", "--quiet", "--make-directories", "--no-absolute-filenames",
              "-F", str(raw)], cwd=dest)
    return dest, listing


@pytest.mark.integration
def test_same_inputs_same_sha256(two_builds: tuple[Path, Path]) -> None:
    first, second = two_builds
    assert sha256(first / "initramfs.cpio.zst") == sha256(second / "initramfs.cpio.zst")
    assert (first / "manifest.json").read_text() == (second / "manifest.json").read_text()


@pytest.mark.integration
def test_manifest(two_builds: tuple[Path, Path]) -> None:
    out = two_builds[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["initramfs"]["sha256"] == sha256(out / "initramfs.cpio.zst")
    assert manifest["initramfs"]["bytes_compressed"] == (out / "initramfs.cpio.zst").stat().st_size
    assert manifest["kernel"]["vmlinuz_sha256"] == sha256(out / "vmlinuz")
    assert manifest["kernel"]["package"].startswith("linux-image-")
    assert manifest["source_date_epoch"] == 1_700_000_000
    assert {"virtio_net", "virtio_pci", "e1000", "ahci", "sd_mod", "ext4", "megaraid_sas",
            "i40e"} <= set(manifest["modules"])
    assert manifest["drivers"]["mode"] == "broad" and manifest["coverage"]["percent"] == 100.0
    # every staged firmware file names where it came from
    assert manifest["firmware"] and all(f["package"] and f["file"].startswith(f["name"])
                                        for f in manifest["firmware"])


@pytest.mark.integration
def test_real_cpio_lists_the_essentials(two_builds: tuple[Path, Path],
                                        extracted: tuple[Path, list[str]]) -> None:
    release = json.loads((two_builds[0] / "manifest.json").read_text())["kernel"]["release"]
    _, listing = extracted
    mods = f"usr/lib/modules/{release}"
    for needed in ("init", "bin", "lib64", "usr/bin/busybox", "usr/bin/sh",
                   "usr/lib/pyinit/pyinit", "usr/lib/x86_64-linux-gnu/libc.so.6",
                   "usr/lib64/ld-linux-x86-64.so.2", "dev/console", "dev/null",
                   f"{mods}/modules.dep", f"{mods}/modules.builtin", f"{mods}/modules.order",
                   f"{mods}/kernel/drivers/net/virtio_net.ko", "etc/pyinit/modules",
                   "etc/passwd", "etc/ld.so.cache", "tmp", "proc", "sys", "run"):
        assert needed in listing, needed
    assert listing == sorted(listing, key=lambda p: p.split("/"))


@pytest.mark.integration
def test_extracted_tree(two_builds: tuple[Path, Path], extracted: tuple[Path, list[str]]) -> None:
    root, _ = extracted
    release = json.loads((two_builds[0] / "manifest.json").read_text())["kernel"]["release"]
    assert os.readlink(root / "init") == "/usr/lib/pyinit/pyinit"
    assert os.readlink(root / "usr/bin/sh") == "/bin/busybox"
    assert os.readlink(root / "lib") == "usr/lib"
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    dep = (root / f"usr/lib/modules/{release}/modules.dep").read_text()
    assert "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko" in dep
    listed = (root / "etc/pyinit/modules").read_text().split()
    assert "virtio_net" in listed and "af_packet" not in listed  # built in
    assert "@xfs" in listed and "@dm_mod" in listed  # staged, loaded on demand


@pytest.mark.integration
def test_without_modules(tmp_path: Path, gpg_keys: Keys) -> None:  # noqa: F811
    """The cheapest build, which also bakes a keyring (--keyring, given armoured)."""
    armoured = tmp_path / "keys.asc"
    armoured.write_bytes(gpg_keys.export("good", "other", armor=True))
    result = initramfs.build(initramfs.BuildConfig(out_dir=tmp_path, modules=False,
                                                   zstd_level=3, keyring=armoured))
    raw = zstandard.ZstdDecompressor().stream_reader(result.initramfs.open("rb")).read()
    entries = {e.path: e for e in cpio.parse(raw)}
    paths = list(entries)
    assert "usr/lib/pyinit/pyinit" in paths
    assert not any(p.startswith("usr/lib/modules") for p in paths)
    assert result.manifest["modules"] == []
    # the keyring as gpgv reads it (dearmoured), at the path the runtime trusts; gpgv with it
    binary = gpg_keys.export("good", "other")
    assert entries["etc/pyinit/keyring.gpg"].data == binary
    assert result.manifest["keyring_sha256"] == hashlib.sha256(binary).hexdigest()
    assert "usr/bin/gpgv" in paths and "usr/lib/x86_64-linux-gnu/libgcrypt.so.20" in paths


def test_keyring_that_is_no_keyring_fails_the_build(tmp_path: Path,
                                                    gpg_keys: Keys) -> None:  # noqa: F811
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
    with pytest.raises(BuildError, match=r"^keyring: --keyring .*ca.pem: not an OpenPGP "
                                         r"keyring: byte 0 \(0x2d\) is not an OpenPGP packet"):
        initramfs.read_keyring(tmp_path / "ca.pem")
    sig = tmp_path / "x.sig"
    sig.write_bytes(gpg_keys.sign(b"x", "good"))
    with pytest.raises(BuildError, match="starts with a signature, not a public key"):
        initramfs.build(initramfs.BuildConfig(out_dir=tmp_path, keyring=sig, bundle=tmp_path))


@pytest.mark.integration
def test_two_freezes_are_byte_identical(tmp_path: Path) -> None:
    """PyInstaller with SOURCE_DATE_EPOCH and PYTHONHASHSEED=0, in two different directories."""
    first = freeze.run_pyinstaller(freeze.DEFAULT_ENTRY, tmp_path / "a", repo=REPO)
    second = freeze.run_pyinstaller(freeze.DEFAULT_ENTRY, tmp_path / "b", repo=REPO)
    assert (first / "pyinit").is_file()
    assert freeze.tree_digest(first) == freeze.tree_digest(second)


# --- no real commands below: argv lists through the recorder ------------------------------------

APT_DEPENDS = """\
linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
"""


def test_parse_depends() -> None:
    assert kernel.parse_depends(APT_DEPENDS) == "linux-image-6.1.0-56-amd64"
    with pytest.raises(Exception, match="no linux-image dependency"):
        kernel.parse_depends("linux-image-amd64\n")


def test_kernel_fetch_downloads_extracts_and_depmods_once(tmp_path: Path,
                                                          recorder: Recorder) -> None:
    deb_name = "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"

    def dpkg_deb(argv: list[str]) -> proc.Completed:
        if argv[1] == "-x":
            boot, mods = Path(argv[3]) / "boot", Path(argv[3]) / "lib/modules/6.1.0-56-amd64"
            mods.mkdir(parents=True)
            boot.mkdir()
            (boot / "vmlinuz-6.1.0-56-amd64").write_bytes(b"kernel")
            (boot / "config-6.1.0-56-amd64").write_text("CONFIG_RD_ZSTD=y\n")
            return proc.Completed(tuple(argv), 0, "", "")
        field = {"Package": "linux-image-6.1.0-56-amd64", "Version": "6.1.192-2"}[argv[3]]
        return proc.Completed(tuple(argv), 0, field + "\n", "")

    def apt_get(argv: list[str]) -> proc.Completed:
        (tmp_path / deb_name).write_bytes(b"!<arch>")
        return proc.Completed(tuple(argv), 0, "", "")

    def depmod(argv: list[str]) -> proc.Completed:
        (Path(argv[2]) / "lib/modules" / argv[3] / "modules.dep").write_text("")
        return proc.Completed(tuple(argv), 0, "", "")

    recorder.responses.update({
        "apt-cache": proc.Completed((), 0, APT_DEPENDS, ""), "apt-get": apt_get,
        "dpkg-deb": dpkg_deb, "depmod": depmod})
    kern = kernel.fetch(tmp_path)
    root = tmp_path / deb_name.removesuffix(".deb")
    assert recorder.calls == [
        ["apt-cache", "depends", "linux-image-amd64"],
        ["apt-get", "download", "linux-image-6.1.0-56-amd64"],
        ["dpkg-deb", "-x", str(tmp_path / deb_name), str(root) + ".partial"],
        ["depmod", "-b", str(root), "6.1.0-56-amd64"],
        ["dpkg-deb", "-f", str(tmp_path / deb_name), "Package"],
        ["dpkg-deb", "-f", str(tmp_path / deb_name), "Version"],
    ]
    assert (kern.release, kern.package, kern.version) == (
        "6.1.0-56-amd64", "linux-image-6.1.0-56-amd64", "6.1.192-2")
    assert kern.vmlinuz == root / "boot/vmlinuz-6.1.0-56-amd64"

    recorder.calls.clear()
    assert kernel.fetch(tmp_path) == kern
    assert recorder.calls == [["apt-cache", "depends", "linux-image-amd64"]]


def test_preflight_names_every_missing_tool(tmp_path: Path) -> None:
    (tmp_path / "cpio").write_text("#!/bin/sh\n")
    (tmp_path / "cpio").chmod(0o755)
    with pytest.raises(PreflightError) as info:
        preflight.check(["cpio", "depmod", "dpkg-deb", "busybox"], path=str(tmp_path))
    assert str(info.value) == (
        "preflight: missing host tools: depmod (apt install kmod), dpkg-deb (apt install dpkg), "
        "busybox (apt install busybox-static)")
    preflight.check(["cpio"], path=str(tmp_path))


def test_parse_path_list() -> None:
    entries, optional = initramfs.parse_path_list(
        "# comment\n/sbin/ldconfig\n?/usr/lib/libudev.so.1  # dlopen()ed\n\n")
    assert entries == ["/sbin/ldconfig", "/usr/lib/libudev.so.1"]
    assert optional == {"/usr/lib/libudev.so.1"}
