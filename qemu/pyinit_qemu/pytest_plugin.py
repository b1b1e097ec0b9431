"""pytest fixtures for VM tests: ``vm_kernel``, ``vm_initrd`` and the ``boot_vm`` factory.

Enable with ``pytest_plugins = ["pyinit_qemu.pytest_plugin"]`` in the root ``conftest.py``.

- ``vm_kernel`` / ``vm_initrd``: ``$PYINIT_KERNEL`` / ``$PYINIT_INITRD``, else ``out/vmlinuz`` /
  ``out/initramfs.cpio.zst`` under the rootdir; the test is skipped (with the reason) when missing.
- ``boot_vm(cfg)``: starts a :class:`VM` with its workdir under the test's ``tmp_path`` (which
  pytest keeps), kills every VM it started at teardown, and when the test failed logs where the
  serial log and the command line are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pyinit_qemu.vm import VM, VMConfig

log = logging.getLogger("pyinit_qemu")


def artifact(config: pytest.Config, env: str, default: str) -> Path:
    """``$env`` if set, else ``default`` relative to the rootdir; skip the test if missing."""
    value = os.environ.get(env)
    path = Path(value) if value else config.rootpath / default
    if not path.is_file():
        how = f"${env}={value}" if value else f"{default} (or set ${env})"
        pytest.skip(f"VM test needs {how}: not found; build it with `pyinit initramfs`")
    return path


@pytest.fixture
def vm_kernel(request: pytest.FixtureRequest) -> Path:
    return artifact(request.config, "PYINIT_KERNEL", "out/vmlinuz")


@pytest.fixture
def vm_initrd(request: pytest.FixtureRequest) -> Path:
    return artifact(request.config, "PYINIT_INITRD", "out/initramfs.cpio.zst")


@pytest.fixture
def boot_vm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., VM]]:
    """A factory: ``vm = boot_vm(cfg)``; every VM is killed and reaped at teardown."""
    vms: list[VM] = []
    failed_before = request.session.testsfailed

    def boot(cfg: VMConfig, **kwargs: Any) -> VM:
        if cfg.workdir is None:
            cfg = replace(cfg, workdir=tmp_path / f"vm{len(vms)}")
        vm = VM(cfg, **kwargs)
        vms.append(vm)
        return vm.start()

    try:
        yield boot
    finally:
        for vm in vms:
            vm.kill()
        # The call phase's report is logged before teardown: a failure has been counted.
        if request.session.testsfailed > failed_before:
            for vm in vms:
                log.error("VM workdir kept: %s (serial.log, command.txt)", vm.workdir)
