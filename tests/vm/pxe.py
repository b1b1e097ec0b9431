"""A server root and a PXE boot through QEMU's own iPXE, as the PXE-booting VM tests share them:
slirp's TFTP serves a one-line iPXE script that chains to the server's ``/boot.ipxe``, which
gives each MAC its own script (kernel, initramfs, command line with the machine's token)."""

from __future__ import annotations

from pathlib import Path

from pyinit_qemu.vm import VM, Disk, VMConfig, guest_url


def server_root(tmp_path: Path, image: Path, machine: str, text: str) -> Path:
    """``tmp_path/srv`` with ``images/<image's name>`` linked to ``image`` and the machine file
    ``machines/<machine>`` (``52-54-00-12-34-56.json`` or ``.yaml``) holding ``text``."""
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / image.name).symlink_to(image)
    (root / "machines" / machine).write_text(text)
    return root


def tftp_dir(tmp_path: Path, server_url: str) -> Path:
    """The slirp TFTP directory: ``pyinit.ipxe`` chains to the server, as the guest reaches it."""
    tftp = tmp_path / "tftp"
    tftp.mkdir(exist_ok=True)
    (tftp / "pyinit.ipxe").write_text(f"#!ipxe\nchain {guest_url(server_url)}/boot.ipxe\n")
    return tftp


def pxe_vm(tftp: Path, mac: str, disks: list[Disk], workdir: Path, *,
           timeout: float = 400) -> VM:
    """A VM with no -kernel: the firmware's iPXE boots from ``tftp`` (then the disk, if the
    server's script sends it there)."""
    return VM(VMConfig(kernel=None, mac=mac, disks=disks, pxe_tftp=tftp,
                       pxe_bootfile="pyinit.ipxe", timeout=timeout, workdir=workdir))
