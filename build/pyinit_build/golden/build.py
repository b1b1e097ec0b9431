"""Build a golden image: rootfs → bootable raw disk (+ conversions, compressed copy, manifest).

The order of work::

    load rootfs → customise (hostname, root password, SSH keys, kernel, fstab, grub.cfg)
      → derive every UUID from the inputs → plan the partitions
      → filesystems into separate files (ext4/XFS, optionally inside an LVM PV; FAT ESP)
      → assemble the sparse disk → GRUB (BIOS: MBR + core.img; UEFI: BOOTX64.EFI on the ESP)
      → sha256 → qemu-img conversions, compressed copy → manifest → rename into place

Everything is written in a work directory beside the output and renamed into place only when
all of it succeeded: a failed build never leaves a file under a final name.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pyinit import bzimage, proc
from pyinit.units import MIB
from pyinit_build import preflight
from pyinit_build.digest import sha256_file
from pyinit_build.errors import BuildError
from pyinit_build.golden import debian, fs, grub, identity, kernelboot, layout, lvm, tree

log = logging.getLogger("pyinit_build.golden")

Firmware = Literal["bios", "uefi", "both"]
FsType = Literal["ext4", "xfs"]
FILESYSTEMS: tuple[str, ...] = ("ext4", "xfs")
FORMATS: tuple[str, ...] = ("qcow2", "vmdk", "vhdx", "vpc")
COMPRESSIONS: tuple[str, ...] = ("zstd", "gzip", "xz", "none")
SUFFIX = {"zstd": ".zst", "gzip": ".gz", "xz": ".xz"}
XFS_MIN = 300 * MIB
MANIFEST_FORMAT = "pyinit-image/1"
TITLE = "pyinit golden image"  # grub.cfg's default menu entry


@dataclass(frozen=True)
class ImageSpec:
    """Everything `pyinit image` takes. Paths are host paths."""

    rootfs: Path  # a directory, tarball, OCI layout/archive, or "debian:SUITE" (mmdebstrap)
    output: Path  # the raw image; the other outputs go beside it
    table: layout.Table = "gpt"
    firmware: Firmware = "both"
    filesystem: FsType = "ext4"
    lvm: str | None = None  # "VG/LV"
    size: int | None = None  # bytes; None: what fits plus headroom
    headroom: int = 256 * MIB
    kernel: Path | None = None
    initrds: tuple[Path, ...] = ()
    kernel_deb: Path | None = None
    cmdline: str = ""
    serial: str | None = "ttyS0,115200"
    hostname: str | None = None
    root_password_hash: str | None = None
    ssh_keys: tuple[str, ...] = ()
    label: str = "root"
    formats: tuple[str, ...] = ()
    compress: str = "zstd"
    compress_level: int | None = None
    source_date_epoch: int | None = None
    uuid_seed: str | None = None  # fixes the derived UUIDs' seed (default: the inputs' digest)
    root_uuid: str | None = None  # given instead of derived
    workdir: Path | None = None  # where the work directory goes (default: beside the output)
    include: tuple[str, ...] = debian.BOOT_PACKAGES  # packages added to a debian:SUITE rootfs


@dataclass
class Manifest:
    format: str
    name: str
    virtual_size: int
    sha256: str
    table: str
    disk_id: str
    firmware: list[str]
    partitions: list[dict[str, Any]]
    root: dict[str, Any]
    kernel: dict[str, Any]
    source_date_epoch: int
    rootfs_digest: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    action: dict[str, Any] = field(default_factory=dict)
    # What the build took out of the rootfs because it must be unique per machine
    # (golden/identity.py, docs/identity.md).
    identity: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def required_tools(spec: ImageSpec) -> list[str]:
    tools = ["sfdisk", "grub-mkimage"]
    tools += ["mke2fs", "debugfs"] if spec.filesystem == "ext4" else ["mkfs.xfs", "xfs_db",
                                                                         "faketime"]
    if spec.firmware in ("uefi", "both"):
        tools += ["mkfs.fat", "mcopy", "mmd"]
    if spec.formats:
        tools.append("qemu-img")
    if spec.kernel_deb is not None:
        tools += ["dpkg-deb", "depmod"]
    if debian_suite(spec) is not None:
        tools.append("mmdebstrap")
    return tools


def debian_suite(spec: ImageSpec) -> str | None:
    """``bookworm`` for ``--rootfs debian:bookworm``, else None."""
    text = str(spec.rootfs)
    return text.removeprefix("debian:") if text.startswith("debian:") else None


def validate(spec: ImageSpec) -> None:
    """Reject bad options before any work. Pure."""
    if spec.filesystem not in FILESYSTEMS:
        raise BuildError("options", f"unknown filesystem {spec.filesystem!r} "
                                    f"(supported: {', '.join(FILESYSTEMS)})")
    if spec.table not in ("gpt", "mbr"):
        raise BuildError("options", f"unknown partition table {spec.table!r} (gpt or mbr)")
    if spec.firmware not in ("bios", "uefi", "both"):
        raise BuildError("options", f"unknown firmware {spec.firmware!r} (bios, uefi or both)")
    for fmt in spec.formats:
        if fmt not in FORMATS:
            raise BuildError("options", f"unknown output format {fmt!r} "
                                        f"(supported: {', '.join(FORMATS)})")
    if spec.compress not in COMPRESSIONS:
        raise BuildError("options", f"unknown compression {spec.compress!r} "
                                    f"(supported: {', '.join(COMPRESSIONS)})")
    if spec.lvm is not None and spec.lvm.count("/") != 1:
        raise BuildError("options", f"--lvm {spec.lvm!r}: expected VG/LV, e.g. vg0/root")
    if spec.kernel is None and spec.initrds:
        raise BuildError("options", "--initrd needs --kernel")
    if spec.kernel is not None and spec.kernel_deb is not None:
        raise BuildError("options", "give --kernel or --kernel-deb, not both")
    if spec.output.suffix in (".zst", ".gz", ".xz", ".json"):
        raise BuildError("options", f"--output {spec.output}: name the raw image "
                                    "(e.g. golden.img); compressed copies go beside it")


# --- kernel --------------------------------------------------------------------------------

def kernel_release(image: bytes) -> str | None:
    """The release string in a bzImage's setup header (``6.1.0-9-amd64``), or None. Pure."""
    return bzimage.image_release(image)


def install_kernel(t: tree.Tree, spec: ImageSpec, epoch: int,
                   work: Path) -> tuple[str, str | None, str]:
    """Put the kernel and initrd into the tree; (kernel path, initrd path, release)."""
    if spec.kernel_deb is not None:
        return _install_deb(t, spec.kernel_deb, work)
    if spec.kernel is None:
        return tree.find_kernel(t)
    if not spec.kernel.is_file():
        raise BuildError("kernel", f"{spec.kernel}: no such file")
    data = spec.kernel.read_bytes()
    release = kernel_release(data) or "pyinit"
    kpath = f"/boot/vmlinuz-{release}"
    t.write_file(kpath, data, mode=0o644, mtime=epoch)
    ipath = None
    if spec.initrds:
        parts = []
        for initrd in spec.initrds:  # several are concatenated (microcode first, then main)
            if not initrd.is_file():
                raise BuildError("kernel", f"initrd {initrd}: no such file")
            parts.append(initrd.read_bytes())
        ipath = f"/boot/initrd.img-{release}"
        t.write_file(ipath, b"".join(parts), mode=0o644, mtime=epoch)
    return kpath, ipath, release


def _install_deb(t: tree.Tree, deb: Path, work: Path) -> tuple[str, str | None, str]:
    """A Debian kernel package: /boot/vmlinuz-* and /lib/modules/<release> (with depmod)."""
    if not deb.is_file():
        raise BuildError("kernel", f"{deb}: no such file")
    root = work / "kernel-deb"
    proc.run(["dpkg-deb", "-x", str(deb), str(root)])
    modules = root / "lib" / "modules"
    releases = sorted(p.name for p in modules.iterdir()) if modules.is_dir() else []
    for release in releases:
        proc.run(["depmod", "-b", str(root), release])
    extra = tree.load_dir(root, work / "kernel-deb-tree")
    for entry in extra.entries():
        if entry.path != "/" and (entry.path.startswith(("/boot", "/lib/modules"))
                                  or entry.path == "/lib"):
            if entry.path == "/lib" and t.get("/lib") is not None:
                continue  # merged-/usr targets: keep their /lib symlink
            t.add(entry)
    return tree.find_kernel(t)


# --- the build -----------------------------------------------------------------------------

def default_cmdline(root_arg: str, spec: ImageSpec) -> str:
    console = f"console=tty0 console={spec.serial}" if spec.serial else ""
    return " ".join(w for w in (f"root={root_arg}", "ro", console, spec.cmdline) if w)


def _fs_size(spec: ImageSpec, t: tree.Tree) -> int:
    """The root filesystem's size: the smallest that holds the tree, plus headroom."""
    need = fs.ext4_min_size(t) if spec.filesystem == "ext4" else fs.xfs_min_size(t)
    size = need + max(spec.headroom, need // 5)
    return -(-size // MIB) * MIB


def build_image(spec: ImageSpec, *, progress: Callable[[str], None] = log.info) -> Manifest:
    """Build ``spec``; returns the manifest (also written beside the image)."""
    validate(spec)
    preflight.check(required_tools(spec))
    out = spec.output.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    base = spec.workdir or out.parent
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=base))
    try:
        manifest, finished = _build(spec, out, work, progress)
        for tmp, final in finished:  # everything succeeded: move into place, manifest last
            os.replace(tmp, final)
        progress(f"image: wrote {out} ({manifest.virtual_size // MIB} MiB, "
                 f"sha256 {manifest.sha256[:16]}…)")
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(spec: ImageSpec, out: Path, work: Path,
           progress: Callable[[str], None]) -> tuple[Manifest, list[tuple[Path, Path]]]:
    suite = debian_suite(spec)
    source = spec.rootfs
    if suite is not None:
        progress(f"image: bootstrapping Debian {suite} with mmdebstrap (host apt sources)")
        source = debian.bootstrap(suite, work / f"debian-{suite}.tar", include=spec.include)
    progress(f"image: loading rootfs {source}")
    t = tree.load_rootfs(source, work / "tree")
    epoch = spec.source_date_epoch if spec.source_date_epoch is not None else t.newest_mtime()
    t.clamp_mtimes(epoch)
    cleaned = identity.clean(t, mtime=epoch)
    for line in cleaned.lines():
        progress(line)
    if spec.hostname:
        tree.set_hostname(t, spec.hostname)
    if spec.root_password_hash:
        tree.set_root_password_hash(t, spec.root_password_hash)
    if spec.ssh_keys:
        tree.add_ssh_keys(t, list(spec.ssh_keys))
    kpath, ipath, release = install_kernel(t, spec, epoch, work)
    # grub.cfg names the kernel through what the distribution keeps current, when it can.
    boot = kernelboot.choose(kernelboot.read_facts(t), kpath, ipath, title=TITLE)
    progress(f"image: {boot.line}")
    if boot.warning:
        progress(f"image: warning: {boot.warning}")
    bios = spec.firmware in ("bios", "both")
    uefi = spec.firmware in ("uefi", "both")

    # Every identifier derives from one seed covering the inputs: the tree's content (kernel and
    # initrd included) and the options that shape the disk — not host paths, so the same
    # inputs give the same bytes wherever they are built.
    options = {k: str(v) for k, v in asdict(spec).items()
               if k not in ("rootfs", "output", "workdir", "kernel", "initrds", "kernel_deb",
                            "formats", "compress", "compress_level", "include")}
    seed = spec.uuid_seed or hashlib.sha256(
        (t.digest() + json.dumps(options, sort_keys=True)).encode()).hexdigest()
    fs_uuid = spec.root_uuid or str(layout.derive(seed, "fs-root"))
    esp_volid = int(layout.derive(seed, "fs-esp").hex[:8], 16)
    esp_uuid = f"{esp_volid >> 16:04X}-{esp_volid & 0xFFFF:04X}"

    # fstab, grub.cfg: need the UUIDs, must be in the tree before the filesystem is made.
    vg, _, lv = (spec.lvm or "").partition("/")
    if spec.lvm:
        root_arg = f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"
    else:
        root_arg = f"UUID={fs_uuid}"
    fstab = ["# Written by pyinit image; the root filesystem and the ESP by UUID.",
             f"UUID={fs_uuid} / {spec.filesystem} "
             f"{'errors=remount-ro' if spec.filesystem == 'ext4' else 'defaults'} 0 1"]
    if uefi:
        fstab.append(f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1")
        t.mkdir("/boot/efi", mode=0o755, mtime=epoch)
    t.write_file("/etc/fstab", ("\n".join(fstab) + "\n").encode(), mode=0o644, mtime=epoch)
    cmdline = default_cmdline(root_arg, spec)
    entries = [grub.BootEntry(fs_uuid, e.kernel, e.initrd, cmdline, title=e.title,
                              serial=spec.serial) for e in boot.entries]
    t.write_file("/boot/grub/grub.cfg", grub.grub_cfg(*entries).encode(), mode=0o644,
                 mtime=epoch)

    # Sizes and the partition plan.
    fs_size = _fs_size(spec, t)
    lvm_plan: lvm.LvmLayout | None = None
    root_part_size = fs_size
    if spec.lvm:
        probe = lvm.plan(fs_size + 64 * MIB, vg=vg, lv=lv, seed=seed.encode())
        extents = -(-fs_size // probe.extent_size)
        root_part_size = probe.lv_offset + extents * probe.extent_size
    plan = layout.plan_disk(table=spec.table, bios=bios, uefi=uefi, root_size=root_part_size,
                            seed=seed, lvm=bool(spec.lvm), disk_size=spec.size)
    root_part = plan.root
    if spec.lvm:
        lvm_plan = lvm.plan(root_part.size, vg=vg, lv=lv, seed=seed.encode())
        fs_size = lvm_plan.lv_size
    else:
        fs_size = root_part.size
    if spec.size is not None and spec.filesystem == "xfs" and fs_size < XFS_MIN:
        raise BuildError("filesystem", f"XFS needs at least {XFS_MIN // MIB} MiB; --size "
                                       f"{spec.size // MIB} MiB leaves {fs_size // MIB} MiB")

    progress(f"image: {spec.filesystem} root of {fs_size // MIB} MiB, {len(t)} entries")
    root_img = work / "root.fs"
    make = fs.make_ext4 if spec.filesystem == "ext4" else fs.make_xfs
    make(t, root_img, size=fs_size, uuid=fs_uuid, label=spec.label, epoch=epoch,
         workdir=work / "fs")

    early = work / "early.cfg"  # GRUB's embedded config, the same for BIOS and UEFI
    early.write_text(grub.early_config(fs_uuid))
    esp_img = work / "esp.fs"
    esp = plan.part("esp")
    if esp is not None:
        progress("image: EFI system partition with BOOTX64.EFI")
        efi = work / "BOOTX64.EFI"
        grub.mkimage("x86_64-efi", efi, early)
        fs.make_vfat({"/EFI/BOOT/BOOTX64.EFI": efi}, esp_img, size=esp.size,
                     volume_id=esp_volid, label="ESP", epoch=epoch)

    progress(f"image: assembling {plan.table.upper()} disk of {plan.size // MIB} MiB")
    raw = work / out.name
    layout.create_disk(raw, plan)
    if esp is not None:
        layout.copy_sparse(esp_img, raw, esp.start, limit=esp.size)
    if lvm_plan is not None:
        with raw.open("r+b") as f:
            f.seek(root_part.start)
            f.write(lvm.pv_header_bytes(lvm_plan, creation_time=epoch))
        layout.copy_sparse(root_img, raw, root_part.start + lvm_plan.lv_offset,
                           limit=lvm_plan.lv_size)
    else:
        layout.copy_sparse(root_img, raw, root_part.start, limit=root_part.size)
    if bios:
        core = work / "core.img"
        grub.mkimage("i386-pc", core, early)
        lba, room = plan.core_area
        grub.install_bios(raw, core.read_bytes(), lba, room)

    progress("image: sha256 of the raw image")
    sha = sha256_file(raw)
    finished: list[tuple[Path, Path]] = []
    files: dict[str, dict[str, Any]] = {
        "raw": {"path": out.name, "size": plan.size, "sha256": sha, "format": "raw"}}
    for fmt in spec.formats:
        progress(f"image: converting to {fmt}")
        conv = work / f"{out.stem}.{fmt}"
        convert(raw, conv, fmt)
        finished.append((conv, out.with_name(conv.name)))
        files[fmt] = {"path": conv.name, "size": conv.stat().st_size,
                      "sha256": sha256_file(conv), "format": fmt}
    action: dict[str, Any] = {"image": out.name, "checksum": f"sha256:{sha}", "size": plan.size}
    if spec.compress != "none":
        progress(f"image: compressing ({spec.compress})")
        comp = work / (out.name + SUFFIX[spec.compress])
        compress_file(raw, comp, spec.compress, spec.compress_level)
        csha = sha256_file(comp)
        finished.append((comp, out.with_name(comp.name)))
        files[spec.compress] = {"path": comp.name, "size": comp.stat().st_size, "sha256": csha,
                                "format": spec.compress}
        action = {"image": comp.name, "checksum": f"sha256:{csha}", "size": plan.size}

    parts = []
    for p in plan.partitions:
        info: dict[str, Any] = {"number": p.number, "role": p.role, "start": p.start,
                                "size": p.size, "type": p.type, "partuuid": p.uuid}
        if p.name:
            info["name"] = p.name
        if p.role == "esp":
            info.update(filesystem="vfat", fs_uuid=esp_uuid, label="ESP")
        if p.role == "root":
            info.update(filesystem=spec.filesystem, fs_uuid=fs_uuid, label=spec.label)
            if lvm_plan is not None:
                info.update(filesystem="LVM2_member", lvm={
                    "vg": lvm_plan.vg, "lv": lvm_plan.lv, "pv_uuid": lvm_plan.pv_id,
                    "lv_offset": lvm_plan.lv_offset, "lv_size": lvm_plan.lv_size,
                    "fs": spec.filesystem, "fs_uuid": fs_uuid})
        parts.append(info)
    manifest = Manifest(
        format=MANIFEST_FORMAT, name=out.name, virtual_size=plan.size, sha256=sha,
        table=plan.table, disk_id=plan.disk_id,
        firmware=[f for f, on in (("bios", bios), ("uefi", uefi)) if on], partitions=parts,
        root={"device": root_arg, "fs": spec.filesystem, "fs_uuid": fs_uuid,
              "partition": root_part.number},
        kernel={"release": release, "path": kpath, "initrd": ipath, "cmdline": cmdline,
                "boot": boot.boot, "entries": [asdict(e) for e in boot.entries]},
        source_date_epoch=epoch, rootfs_digest=t.digest(), files=files, action=action,
        identity=cleaned.manifest())
    sums = work / (out.name + ".SHA256SUMS")
    sums.write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in files.values()))
    mpath = work / (out.name + ".json")
    mpath.write_text(manifest.to_json())
    finished += [(raw, out), (sums, out.with_name(sums.name)), (mpath, out.with_name(mpath.name))]
    return manifest, finished


# --- outputs -------------------------------------------------------------------------------

def convert(raw: Path, out: Path, fmt: str) -> None:
    """``qemu-img convert`` to ``fmt``. vpc keeps the exact size (``force_size``) instead of
    rounding to a CHS geometry, so the disk converts back bit for bit."""
    opts = {"vpc": ["-o", "subformat=dynamic,force_size=on"],
            "vhdx": ["-o", "subformat=dynamic"]}.get(fmt, [])
    proc.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, str(raw), str(out)])


def compress_file(src: Path, dst: Path, kind: str, level: int | None = None) -> None:
    """The compressed copy pyinit's writer streams: zstd frames carry the content size and a
    checksum; gzip has no name or mtime in its header. Deterministic for the same input."""
    size = src.stat().st_size
    with src.open("rb") as fin, dst.open("wb") as fout:
        if kind == "zstd":
            import zstandard

            params = zstandard.ZstdCompressionParameters.from_level(
                level if level is not None else 10, threads=-1, write_checksum=True,
                write_content_size=True)
            zstandard.ZstdCompressor(compression_params=params).copy_stream(
                fin, fout, size=size, read_size=4 * MIB, write_size=4 * MIB)
        elif kind == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=fout, mtime=0,
                               compresslevel=level if level is not None else 6) as gz:
                shutil.copyfileobj(fin, gz, 4 * MIB)
        elif kind == "xz":
            with lzma.LZMAFile(fout, "wb", preset=level if level is not None else 6) as xz:
                shutil.copyfileobj(fin, xz, 4 * MIB)
        else:
            raise BuildError("options", f"unknown compression {kind!r}")
