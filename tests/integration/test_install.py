"""``pip install .`` into a fresh virtualenv outside the checkout: the three host commands work.

The wheel is built from the checkout (``pip wheel``: setuptools must not write into the source
folder ``build/``), installed non-editable into a new venv (dependencies from the package index,
usually pip's cache), and run from a directory that is not the checkout: ``pyinit initramfs``
(with the checkout's download cache, so no kernel download; the skeleton, data files and the
runtime's sources come from the installed package), ``pyinit image`` and ``pyinit serve``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from pyinit import parttable
from tests import golden_rootfs
from tests.integration.test_golden_build import fake_kernel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(cwd),
                               "SOURCE_DATE_EPOCH": "1700000000"})
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("install")
    before = sorted(p.name for p in (REPO / "build").iterdir())
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "wheel"),
         str(REPO)], work)
    assert sorted(p.name for p in (REPO / "build").iterdir()) == before, \
        "building the wheel wrote into the source folder build/"
    (wheel,) = (work / "wheel").glob("pyinit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("pyinit_build/golden/__init__.py", "pyinit_build/data/modules.txt",
                   "pyinit_build/rootfs/etc/passwd", "pyinit_server/server.py",
                   "pyinit_qemu/vm.py", "pyinit/init.py", "pyinit/image/write.py"):
        assert needed in names, needed
    run([sys.executable, "-m", "venv", str(work / "venv")], work)
    run([str(work / "venv/bin/pip"), "install", "-q", str(wheel)], work, timeout=900)
    return work / "venv"


def test_installed_pyinit_initramfs(venv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = run([str(venv / "bin/pyinit"), "initramfs", "--out", str(out), "--drivers", "listed",
                "--zstd-level", "3", "--cache", str(REPO / ".cache")], tmp_path, timeout=900)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "initramfs.cpio.zst").stat().st_size > 1 << 20, text[-2000:]
    files = {f["path"] for f in manifest["files"]} if "files" in manifest else None
    listing = subprocess.run(f"zstd -dc {out / 'initramfs.cpio.zst'} | cpio -t --quiet",
                             shell=True, capture_output=True, text=True, check=True).stdout
    for path in ("init", "etc/passwd", "usr/lib/pyinit/pyinit"):  # skeleton and the freeze
        assert path in listing.split(), (path, files)


def test_installed_pyinit_image(venv: Path, tmp_path: Path) -> None:
    root = golden_rootfs.busybox_dir(tmp_path / "rootfs")
    fake_kernel(root / "boot" / "vmlinuz-6.1.0-fake-amd64")
    (root / "boot" / "initrd.img-6.1.0-fake-amd64").write_bytes(b"initrd\n")
    image = tmp_path / "golden.img"
    run([str(venv / "bin/pyinit"), "image", "-o", str(image), str(root)], tmp_path)
    assert image.with_name(image.name + ".json").is_file()
    with image.open("rb") as f:
        table = parttable.parse(f, disk_size=image.stat().st_size)
    assert table is not None and table.kind == "gpt"


def test_installed_pyinit_serve(venv: Path, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "machines" / "52-54-00-0c-00-01.yaml").write_text(
        "action: writeImage\nsourceImage: images/a.img\ndestinationDevice: /dev/vda\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(venv / "bin/pyinit"), "serve", "--root", str(root), "--port",
                             str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = requests.get(f"http://127.0.0.1:{port}/52-54-00-0c-00-01", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert resp.json()["destinationDevice"] == "/dev/vda"
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
