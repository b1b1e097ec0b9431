"""iPXE scripts: a generic ``boot.ipxe`` that chains by MAC, and one script per machine. Pure.

``/boot.ipxe`` chains to ``{base}/${netX/mac:hexhyp}.ipxe``: ``netX`` is iPXE's name for the network
device it opened last (the one it booted from, also when that is not ``net0``), and the ``hexhyp``
type prints its MAC with hyphens (``52-54-00-12-34-56``), the server's spelling. The machine's
script boots ``{base}/boot/vmlinuz`` with ``{base}/boot/initramfs.cpio.zst`` and the kernel command
line: the server's default arguments, ``BOOTYURL={base}`` (pyinit then fetches
``{base}/{mac}.bty``), ``BOOTIF=01-{mac}`` (so that pyinit uses the NIC it was booted from),
``pyinit.token=`` (the machine's own token, see :mod:`pyinit_server.auth`), then the machine file's
``pxe.cmdline``. Arguments are separated by spaces and cannot contain spaces themselves (iPXE splits
its command lines on whitespace).
"""

from __future__ import annotations

from pyinit_server.machines import Machine

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initramfs.cpio.zst"


def chain_script(base: str) -> str:
    return ("#!ipxe\n"
            "# pyinit: chain to this machine's script, by the MAC of the NIC iPXE booted from\n"
            f"chain {base}/${{netX/mac:hexhyp}}.ipxe\n")


def kernel_cmdline(base: str, mac: str, default_args: str, extra: list[str],
                   token: str | None = None) -> str:
    auth = [f"pyinit.token={token}"] if token else []
    return " ".join([*default_args.split(), f"BOOTYURL={base}", f"BOOTIF=01-{mac}", *auth,
                     *extra])


def machine_script(base: str, mac: str, machine: Machine, default_args: str, *,
                   bootyurl: str | None = None, token: str | None = None) -> str:
    """``bootyurl``: when it differs from ``base`` (HTTPS for pyinit, while iPXE loads the
    kernel and initrd over plain HTTP). ``token``: the machine's own (``pyinit.token=``)."""
    source = f"{machine.path.parent.name}/{machine.path.name}"
    cmdline = kernel_cmdline(bootyurl or base, mac, default_args, machine.kernel_args(), token)
    return ("#!ipxe\n"
            f"# pyinit: {mac} ({source})\n"
            f"kernel {base}/boot/{KERNEL_NAME} {cmdline}\n"
            f"initrd {base}/boot/{INITRD_NAME}\n"
            "boot\n")


def local_disk_script(mac: str, machine: Machine, reason: str) -> str:
    """Deploy once (docs/lifecycle.md): boot the machine's local disk instead of provisioning
    it again. ``sanboot`` of the first BIOS disk where iPXE runs under BIOS; ``exit`` hands the
    boot back to the firmware, whose next boot entry is the disk (UEFI, and BIOS when sanboot
    fails). Pure."""
    source = f"{machine.path.parent.name}/{machine.path.name}"
    return ("#!ipxe\n"
            f"# pyinit: {mac} ({source}) is {reason}: booting its local disk\n"
            f"# (pyinit redeploy {mac}, or a changed machine file, provisions it again)\n"
            f"echo pyinit: {mac} {reason.split()[0]}: booting the local disk\n"
            "iseq ${platform} pcbios || goto firmware\n"
            "sanboot --no-describe --drive 0x80 ||\n"
            ":firmware\n"
            "exit\n")
