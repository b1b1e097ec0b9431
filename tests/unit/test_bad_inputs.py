"""The catalogue of bad inputs (issue #7), one row per entry of docs/bad-inputs.md.

Every row drives the real code path at the lowest level that still shows what the operator
reads: the boot's own step table (:data:`pyinit.init.STEPS`, run by :func:`init.run_steps` and
reported by :func:`init.fail`) with only the seams replaced that a unit test may not use — no
mounts (``rootfs.apply``), no modules, ``/proc/cmdline`` from a file, the NICs from a fake sysfs
(or a ready :class:`NetworkResult`), ``/dev/vdb`` mapped to a 4 MiB file, a fake clock for the
action fetch's retries, and a recorder instead of reboot(2). Servers are real and in-process
(:class:`ObservedServer`, :class:`tests.faultserver.FaultServer`) on 127.0.0.1; the DNS row
resolves a name under the reserved ``.invalid`` TLD through a patched ``getaddrinfo``, so nothing
leaves the machine. D02, D03, D05 and D06 run :func:`pyinit.disks.selection.select_disk` on a
list of disks inside the runner (identical serials, USB sticks and mounts are easier to state as
data); the other disk rows go through the ``disks`` step. ``vlan=``/``bond=`` rows run
:func:`pyinit.network.configure.configure` with link lookups answered from the fake sysfs;
creating a link would fail the test, and ``8021q``/``bonding`` are recorded, never loaded on the
host.

tests/vm/test_bad_inputs.py boots some rows for real and compares with :func:`doc_rows`.

For each row the test asserts (a) the ``FAILED:`` line names the cause, equals the line recorded
in the doc (ports and temp paths normalised) and no traceback was printed, (b) a ``failed`` event
carries the step and the reason, (c) the configured failure policy ran, (d) the disk file is
byte-identical — or, when the failure happened during the write, its first and last MiB (MBR,
GPT, backup GPT) are zero. Rows whose behaviour is not yet right are ``xfail(strict=True)`` with
the reason, so fixing them turns the suite red until the mark is removed.

``PYINIT_BAD_INPUTS_DUMP=file.jsonl`` appends each row's observed line (to regenerate the doc).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit import capture, erase, fetch, init, log, policy, proc, raid
from pyinit.action import Raid
from pyinit.disks import settle as disk_settle
from pyinit.disks.hints import parse_hints
from pyinit.disks.inventory import Disk
from pyinit.disks.selection import select_disk
from pyinit.image import destination
from pyinit.image import write as write_module
from pyinit.image.destination import wait_for_device
from pyinit.image.write import WriteRequest, WriteResult, write_image
from pyinit.network.configure import configure
from pyinit.network.dhcp4 import DhcpThread
from pyinit.network.result import NetworkResult
from pyinit.units import MIB
from tests.faultserver import Faults, FaultServer
from tests.gpgkeys import NAMES, Keys, gpg_keys  # noqa: F401 - the fixture
from tests.ociserver import FakeRegistry, layer, manifest
from tests.serverkit import ObservedServer
from tests.tlsfixtures import TLSFiles, tls_files  # noqa: F401 - the fixture

from .disks.fakes import FakeSys
from .fakes import FakeClock
from .network.fakes import add_nic, factory

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
MAC = "52:54:00:12:34:56"
DASHES = MAC.replace(":", "-")
DISK_SIZE = 4 * MIB
GIB = 1 << 30
POWEROFF = "pyinit.on_failure=poweroff"


# ---- the rig: the boot's step table with its seams replaced -------------------------------


@dataclass
class Outcome:
    console: str
    events: list[dict[str, Any]]
    policies: list[str]
    failed_line: str  # the text after "FAILED: "
    fetch_retries: int
    image_retries: int


@dataclass
class Rig:
    tmp: Path
    mp: pytest.MonkeyPatch
    disk: Path
    original: bytes
    sysfs: Path
    files: Path  # served by ``fault``
    fault: FaultServer
    policies: list[str] = field(default_factory=list)
    image_retries: int = 0
    network: Callable[..., NetworkResult] | None = None  # None: a ready NetworkResult
    tls: TLSFiles | None = None
    replacements: dict[str, str] = field(default_factory=dict)
    modules_wanted: list[str] = field(default_factory=list)  # vlan=/bond=: 8021q, bonding
    keys: Keys | None = None  # G rows: real OpenPGP keys (tests/gpgkeys.py)

    # -- inputs

    def action(self, body: bytes | str | dict[str, Any]) -> str:
        """Serve ``body`` as this machine's action; returns ``MYURL=…``."""
        data = json.dumps(body).encode() if isinstance(body, dict) else \
            body.encode() if isinstance(body, str) else body
        (self.files / "actions").mkdir(exist_ok=True)
        (self.files / "actions" / DASHES).write_bytes(data)
        return f"MYURL={self.fault.base_url}/actions"

    def image(self, name: str, data: bytes) -> str:
        (self.files / name).write_bytes(data)
        return self.fault.url(name)

    def write_action(self, url: str, **extra: Any) -> dict[str, Any]:
        return {"action": "writeImage", "sourceImage": url, "destinationDevice": "/dev/vdb",
                **extra}

    def devmap(self, device: str) -> str:
        return str(self.disk) if device == "/dev/vdb" else device

    # -- the boot

    def boot(self, cmdline: str, steps: tuple[tuple[str, Callable[[init.Context], None]], ...]
             | None = None) -> Outcome:
        buf = io.StringIO()
        events: list[dict[str, Any]] = []
        clock = FakeClock()
        cmdline_file = self.tmp / "cmdline"
        cmdline_file.write_text(cmdline + "\n")
        self.mp.setattr(log, "_console", buf)
        log.configure()
        log.clear_sinks()
        log.add_sink(events.append)
        self.mp.setattr(init.rootfs, "apply", lambda *a, **k: [])
        self.mp.setattr(init, "Path", lambda p: cmdline_file if p == "/proc/cmdline" else Path(p))
        self.mp.setattr(init, "MODULES_ROOT", self.tmp / "no-modules")
        self.mp.setattr(init, "DEVICE_TIMEOUT", 0.3)
        self.mp.setattr(init, "KEYRING", self.tmp / "no-baked-keyring")  # never the host's
        self.mp.setattr(init, "RUN_KEYRING", self.tmp / "run" / "keyring.gpg")
        self.mp.setattr(init, "SYSFS", self.sysfs)  # the disks step: never the host's
        self.mp.setattr(init, "DEV", self.tmp / "dev")
        self.mp.setattr(disk_settle, "settle", functools.partial(disk_settle.settle, quiet=0.0))
        self.mp.setattr(init, "configure", self.network or self._ready_network)
        self.mp.setattr(init, "fetch_action", functools.partial(
            fetch.fetch_action, clock=clock, sleep=clock.sleep))
        real_write, real_wait = write_image, wait_for_device

        def delays() -> Iterator[float]:
            while True:
                self.image_retries += 1
                yield 0.0

        def write(req: WriteRequest, *, session: requests.Session,
                  before_open: Callable[[], None] | None = None) -> WriteResult:
            return real_write(dataclasses.replace(req, device=self.devmap(req.device)),
                              session=session, allow_regular_file=True, delays=delays,
                              max_attempts=3, read_timeout=2.0, progress_interval=60.0,
                              before_open=before_open)

        real_capture = capture.capture_image

        def capture_image(device: str, url: str, **kw: Any) -> capture.CaptureResult:
            return real_capture(self.devmap(device), url, allow_regular_file=True, attempts=2,
                                sleep=lambda s: None, **kw)

        # the provision step imports these when it runs: patched where they live
        self.mp.setattr(write_module, "write_image", write)
        self.mp.setattr(capture, "capture_image", capture_image)
        self.mp.setattr(destination, "wait_for_device",
                        lambda dev, timeout: real_wait(self.devmap(dev), timeout))
        self.mp.setattr(policy, "apply", lambda pol, reason: self.policies.append(pol))
        ctx = init.Context()
        try:
            init.run_steps(ctx, steps or init.STEPS)
        except BaseException as exc:  # what main() does
            init.fail(ctx, exc)
        else:
            pytest.fail("the boot did not fail")
        finally:
            log.clear_sinks()
            ctx.session.close()
        text = buf.getvalue()
        m = re.search(r"\] \S+: FAILED: (.*)", text)
        assert m, text
        return Outcome(text, events, self.policies, m.group(1), len(clock.sleeps),
                       self.image_retries)

    def _ready_network(self, **_: Any) -> NetworkResult:
        return NetworkResult(interface="eth0", mac=MAC, address="10.0.2.15", prefixlen=24,
                             gateway="10.0.2.2", dns=(), source="static", server=None)

    def real_network(self, *, dhcp_binds: bool = True) -> None:
        """network.configure itself, against the fake sysfs, with netlink faked."""

        sysfs = self.sysfs

        class FakeIPRoute:
            """Looks links up in the fake sysfs (vlan=/bond= wait for their lower links);
            creating or changing one is out of bounds for a unit test."""

            def __enter__(self) -> FakeIPRoute:
                return self

            def __exit__(self, *_: object) -> None:
                pass

            def link_lookup(self, *, ifname: str) -> list[int]:
                index = sysfs / "class" / "net" / ifname / "ifindex"
                return [int(index.read_text())] if index.exists() else []

            def link(self, *a: Any, **k: Any) -> list[Any]:
                raise AssertionError(f"unit test touched a link: {a} {k}")

        import pyroute2
        self.mp.setattr(pyroute2, "IPRoute", FakeIPRoute)

        def dhcp(name: str, **kw: Any) -> DhcpThread:
            return DhcpThread(name, client_factory=factory(bind_after=None), **kw)

        self.network = functools.partial(
            configure, sysfs=self.sysfs, resolv_conf=None, dhcp_factory=dhcp,
            load_modules=self.modules_wanted.extend)  # never the host's 8021q/bonding

    def normalise(self, line: str) -> str:
        line = line.replace(str(self.disk), "/dev/vdb")
        for real, shown in self.replacements.items():
            line = line.replace(real, shown)
        line = line.replace(str(self.tmp), "TMP")
        # the action fetch's backoff is jittered: how many attempts fit is not fixed
        line = re.sub(r"gave up after \d+ attempts, (\d+) s", r"gave up after N attempts, \1 s",
                      line)
        return re.sub(r"(127\.0\.0\.1|localhost):\d+", r"\1:PORT", line)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    disk = tmp_path / "vdb.img"
    original = bytes(range(256)) * (DISK_SIZE // 256)
    disk.write_bytes(original)
    sysfs = tmp_path / "sys"
    add_nic(sysfs, "eth0", "52:54:00:12:34:56", ifindex=2, carrier="1")
    FakeSys(tmp_path).disk("pci0000:00/0000:00:05.0/virtio3", "vdb", size=DISK_SIZE,
                           devnum="253:16", attrs={"serial": "DISK0"})
    (tmp_path / "dev").mkdir()
    files = tmp_path / "files"
    files.mkdir()
    with FaultServer(files) as fault:
        yield Rig(tmp_path, monkeypatch, disk, original, sysfs, files, fault)


# ---- the rows ------------------------------------------------------------------------------


Drive = Callable[[Rig], Outcome]


@dataclass(frozen=True)
class Row:
    id: str
    input: str
    step: str
    expect: str  # a regex the FAILED line must match: it names the cause
    drive: Drive
    policy: str = "poweroff"
    # True: the failure happened during the write, the headers were wiped; None: either
    # (the decoder and the writer race to the truncation), but a changed disk has them wiped
    touched: bool | None = False
    fetch_retries: bool = False
    image_retries: bool = False
    xfail: str | None = None
    modules: tuple[str, ...] = ()  # what the network step asked to load (vlan=/bond=)


def cmd(line: str) -> Drive:
    return lambda rig: rig.boot(line)


def act(body: bytes | str | dict[str, Any], extra: str = "") -> Drive:
    return lambda rig: rig.boot(f"{rig.action(body)} {POWEROFF} {extra}".strip())


def write(name: str, data: bytes, **fields: Any) -> Drive:
    def drive(rig: Rig) -> Outcome:
        url = rig.image(name, data)
        extra = {k: (v(rig) if callable(v) else v) for k, v in fields.items()}
        return rig.boot(f"{rig.action(rig.write_action(url, **extra))} {POWEROFF}")
    return drive


def raw_image(size: int = 3 * MIB) -> bytes:
    return bytes((i * 7) & 0xFF for i in range(4096)) * (size // 4096)


def gz(data: bytes) -> bytes:
    import gzip
    return gzip.compress(data, compresslevel=1)


def zst(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor(level=1).compress(data)


def pure(step: str, func: Callable[[], object]) -> Drive:
    """A pure function not yet wired into the boot, run inside the real step runner."""
    def drive(rig: Rig) -> Outcome:
        return rig.boot(POWEROFF, ((step, lambda ctx: func()),))
    return drive


def net(line: str, *, carrier: str | None = "1", nics: bool = True) -> Drive:
    def drive(rig: Rig) -> Outcome:
        if carrier != "1":
            (rig.sysfs / "class" / "net" / "eth0" / "carrier").write_text(f"{carrier}\n")
        if not nics:
            import shutil
            shutil.rmtree(rig.sysfs / "class" / "net")
            (rig.sysfs / "class" / "net").mkdir(parents=True)
        rig.real_network()
        return rig.boot(f"MYURL={rig.fault.base_url}/actions {POWEROFF} "
                        f"pyinit.carrier_timeout=0.3 pyinit.dhcp_timeout=0.3 {line}".strip())
    return drive


def status(code: int) -> Drive:
    def drive(rig: Rig) -> Outcome:
        url = rig.action(rig.write_action("/images/x.img"))
        rig.fault.set_faults(f"actions/{DASHES}", Faults(status=code, status_times=-1))
        return rig.boot(f"{url} {POWEROFF} pyinit.fetch_timeout=5")
    return drive


def provisioning_server(machine: bytes | None) -> Drive:
    def drive(rig: Rig) -> Outcome:
        root = rig.tmp / "srv"
        (root / "machines").mkdir(parents=True)
        (root / "images").mkdir()
        if machine is not None:
            (root / "machines" / f"{DASHES}.json").write_bytes(machine)
        with ObservedServer(root) as srv:
            return rig.boot(f"MYURL={srv.url} {POWEROFF} pyinit.fetch_timeout=5")
    return drive


def unreachable(rig: Rig) -> Outcome:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        return rig.boot(f"MYURL=http://127.0.0.1:{port} {POWEROFF} pyinit.fetch_timeout=5")


def dns_failure(rig: Rig) -> Outcome:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    rig.mp.setattr(socket, "getaddrinfo", getaddrinfo)
    return rig.boot(f"MYURL=http://pyinit-server.invalid {POWEROFF} pyinit.fetch_timeout=5")


def tls_server(ca: str, *, plain: bool = False, upload: bool = False) -> Drive:
    """The provisioning server over HTTPS (its CA: tls.ca), the machine trusting ``ca``."""
    def drive(rig: Rig) -> Outcome:
        assert rig.tls is not None
        root = rig.tmp / "srv"
        (root / "machines").mkdir(parents=True)
        (root / "images").mkdir()
        trust = {"other": f"pyinit.ca={rig.tls.other_ca}", "default": ""}[ca]
        rig.replacements[str(rig.tls.other_ca.parent)] = "/etc/pyinit"
        with ObservedServer(root, tls_cert=rig.tls.cert, tls_key=rig.tls.key) as srv:
            if upload:  # the action from plain HTTP, the upload to the HTTPS listener
                myurl = rig.action({"action": "readImage", "sourceDevice": "/dev/vdb",
                                    "desintationAddress": f"{srv.url}/upload"})
            elif plain:  # https:// to a port that speaks plain HTTP
                assert srv.http_url is not None
                myurl = f"MYURL={srv.http_url.replace('http://', 'https://')}"
            else:
                myurl = f"MYURL={srv.url}"
            return rig.boot(f"{myurl} {POWEROFF} {trust}".strip())
    return drive


def pem_b64(rig: Rig) -> str:
    return base64.b64encode(b"hello, not a certificate").decode()


def oci(setup: Callable[[FakeRegistry], str], *, challenge: str | None = None,
        **fields: Any) -> Drive:
    """A writeImage from the fake registry (tests/ociserver.py); ``setup`` fills it and returns
    the reference's tail (``disks/x:v1``)."""
    def drive(rig: Rig) -> Outcome:
        with FakeRegistry(challenge=challenge) as reg:
            source = f"oci://{reg.address}/{setup(reg)}"
            body = {**rig.write_action(source), "registryPlainHTTP": True, **fields}
            return rig.boot(f"{rig.action(body)} {POWEROFF}")
    return drive


def oci_image(reg: FakeRegistry, tag: str = "v1", *, media: str | None = None, count: int = 1,
              named: str | None = None, index: bool = False) -> str:
    data = zst(raw_image())
    reg.blobs[f"sha256:{hashlib.sha256(data).hexdigest()}"] = data
    one = layer(data, named=named) if media is None else layer(data, media, named=named)
    body = manifest([one] * count, media="application/vnd.oci.image.index.v1+json"
                    if index else "application/vnd.oci.image.manifest.v1+json")
    if index:
        body = json.dumps({"schemaVersion": 2, "manifests": [{}, {}],
                           "mediaType": "application/vnd.oci.image.index.v1+json"}).encode()
    reg.manifests[f"disks/x:{tag}"] = body
    return f"disks/x:{tag}"


OCI_AUTH = {"username": "ci", "password": "wrong"}


def signed(sig: str | None = "good", *, ring: str = "good", data: bytes | None = None,
           keyring: Callable[[Rig], str] | None = None, expiring: bool = False,
           **fields: Any) -> Drive:
    """A gzip image served with ``x.img.gz.sig`` made by key ``sig`` (None: no signature file;
    ``data``: over other bytes, or these bytes as they are when not a key name), the machine
    trusting ``ring`` given inline (``pyinit.keyring=``), or ``keyring(rig)``."""
    def drive(rig: Rig) -> Outcome:
        assert rig.keys is not None
        image = gz(raw_image())
        url = rig.image("x.img.gz", image)
        if sig is not None:
            over = data if data is not None else image
            rig.image("x.img.gz.sig", rig.keys.sign(over, sig, expiring=expiring)
                      if sig in NAMES else over)
        trust = keyring(rig) if keyring else f"pyinit.keyring={rig.keys.inline(ring)}"
        return rig.boot(f"{rig.action(rig.write_action(url, **fields))} {POWEROFF} {trust}")
    return drive


def signed_sums(listed: str, *, signed_text: bytes | None = None) -> Drive:
    """A SHA256SUMS listing ``listed`` and its signature ``SHA256SUMS.gpg`` (over
    ``signed_text``, else the file as served)."""
    def drive(rig: Rig) -> Outcome:
        import hashlib
        assert rig.keys is not None
        image = gz(raw_image())
        url = rig.image("x.img.gz", image)
        text = f"{hashlib.sha256(image).hexdigest()}  {listed}\n".encode()
        sums = rig.image("SHA256SUMS", text)
        rig.image("SHA256SUMS.gpg", rig.keys.sign(signed_text or text, "good"))
        return rig.boot(f"{rig.action(rig.write_action(url, checksumURL=sums))} {POWEROFF} "
                        f"pyinit.keyring={rig.keys.inline('good')}")
    return drive


def keyring_file(rig: Rig) -> str:
    (rig.tmp / "etc").mkdir(exist_ok=True)
    (rig.tmp / "etc" / "keyring.gpg").write_bytes(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    rig.replacements[str(rig.tmp / "etc")] = "/etc/pyinit"
    return f"pyinit.keyring={rig.tmp / 'etc' / 'keyring.gpg'}"


SDA = Disk("sda", 480 * GIB, model="SAMSUNG MZ7LH480", serial="S45NNA0M", transport="sata")
SDB = Disk("sdb", 480 * GIB, model="SAMSUNG MZ7LH480", serial="S45NNA0M", transport="sata")
USB = Disk("sdc", 32 * GIB, model="Cruzer", serial="4C53", removable=True, transport="usb")
MOUNTED = Disk("nvme0n1", 960 * GIB, serial="N1", transport="nvme",
               mounted=("/dev/nvme0n1p1 on /mnt",))
HELD = Disk("sdb", 480 * GIB, serial="S2", transport="sata", holders=("md127",))

HTML = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head></html>\n"
IMG = "http://127.0.0.1:9/x.img"  # never fetched: the action is refused first

ROWS: tuple[Row, ...] = (
    # -- command line
    Row("C01", "`BOOTIF=01-52-54-00-zz-34-56` (not a MAC)", "rootfs", r"^BOOTIF: not a MAC",
        cmd("BOOTIF=01-52-54-00-zz-34-56 MYURL=http://127.0.0.1:9"), policy="shell"),
    Row("C02", "`ip=` with a bad mask `255.0.255.0`", "rootfs", r"^ip: bad netmask",
        cmd("ip=10.0.0.5::10.0.0.1:255.0.255.0::eth0:off MYURL=http://127.0.0.1:9"),
        policy="shell"),
    Row("C03", "`ip=` gateway outside the subnet", "rootfs", r"^ip: gateway .* is outside",
        cmd("ip=10.0.0.5::192.168.1.1:255.255.255.0::eth0:off MYURL=http://127.0.0.1:9"),
        policy="shell"),
    Row("C04", "`ip=` client address `10.0.0.300`", "rootfs", r"^ip: bad client address",
        cmd("ip=10.0.0.300::10.0.0.1:24::eth0:off MYURL=http://127.0.0.1:9"), policy="shell"),
    Row("C05", "`ip=foo`", "rootfs", r"^ip: unrecognised value",
        cmd("ip=foo MYURL=http://127.0.0.1:9"), policy="shell"),
    Row("C06", "`MYURL=ftp://…` (not http(s))", "rootfs", r"^MYURL: not an http\(s\) URL",
        cmd("MYURL=ftp://10.0.2.2/actions"), policy="shell"),
    Row("C07", "`pyinit.on_failure=explode`", "rootfs", r"^pyinit.on_failure: 'explode' is not",
        cmd("pyinit.on_failure=explode MYURL=http://127.0.0.1:9"), policy="shell"),
    Row("C08", "`pyinit.dhcp_timeout=abc`", "rootfs",
        r"^pyinit.dhcp_timeout: not a number of seconds",
        cmd("pyinit.dhcp_timeout=abc MYURL=http://127.0.0.1:9"), policy="shell"),
    Row("C09", "`pyinit.fetch_timeout=0`", "rootfs", r"^pyinit.fetch_timeout: out of range",
        cmd("pyinit.fetch_timeout=0 MYURL=http://127.0.0.1:9"), policy="shell"),
    Row("C10", "`pyinit.token=\"a b\"` (space; the value is never echoed)", "rootfs",
        r"^pyinit.token: must be 1 to 256 printable", cmd('pyinit.token="a b" MYURL=http://x'),
        policy="shell"),
    Row("C11", "`pyinit.ca=ca.pem` (neither a path nor base64:)", "rootfs",
        r"^pyinit.ca: expected a path", cmd("pyinit.ca=ca.pem MYURL=http://x"), policy="shell"),
    Row("C12", "`pyinit.ca=base64:@@@` (not base64)", "rootfs", r"^pyinit.ca: not valid base64",
        cmd("pyinit.ca=base64:@@@ MYURL=http://x"), policy="shell"),
    Row("C13", "`pyinit.ca=base64:` of bytes that are no certificate", "rootfs",
        r"^pyinit.ca: the 24 decoded bytes are not an X.509 certificate",
        lambda rig: rig.boot(f"pyinit.ca=base64:{pem_b64(rig)} MYURL=http://x"),
        policy="shell"),
    Row("C14", "`pyinit.ca=/etc/pyinit/missing.pem`", "rootfs",
        r"^pyinit.ca: /etc/pyinit/missing.pem: no such file in the initramfs",
        cmd(f"pyinit.ca=/etc/pyinit/missing.pem MYURL=http://x {POWEROFF}")),
    Row("C15", "neither `MYURL=`/`BOOTYURL=` nor `root=`+`entrypoint=`", "rootfs",
        r"^cmdline: nothing to do", cmd(f"console=ttyS0 {POWEROFF}")),
    Row("C16", "`entrypoint=/bin/sh'` (unbalanced quote)", "rootfs",
        r"^entrypoint: cannot split", cmd("root=/dev/vda entrypoint=/bin/sh'"), policy="shell"),
    Row("C17", "`pyinit.modules=some`", "rootfs", r"^pyinit.modules: 'some' is not one of",
        cmd("pyinit.modules=some MYURL=http://x"), policy="shell"),
    Row("C18", "a bad `ip=` with `pyinit.on_failure=poweroff`: the asked policy", "rootfs",
        r"^ip: bad netmask",
        cmd(f"{POWEROFF} ip=10.0.0.5::10.0.0.1:255.0.255.0::eth0:off MYURL=http://x")),
    Row("C19", "`vlan=vlan0:eth0` (VLAN id 0: priority tagging, not a VLAN)", "rootfs",
        r"^vlan: VLAN id 0 in 'vlan0' is outside 1\.\.4094$",
        cmd(f"vlan=vlan0:eth0 MYURL=http://x {POWEROFF}")),
    Row("C20", "`vlan=eth0.4095:eth0` (VLAN id 4095, reserved)", "rootfs",
        r"^vlan: VLAN id 4095 in 'eth0.4095' is outside 1\.\.4094$",
        cmd(f"vlan=eth0.4095:eth0 MYURL=http://x {POWEROFF}")),
    Row("C21", "`vlan=eth0.abc:eth0` (no numeric VLAN id in the name)", "rootfs",
        r"^vlan: no VLAN id in the name 'eth0.abc'",
        cmd(f"vlan=eth0.abc:eth0 MYURL=http://x {POWEROFF}")),
    Row("C22", "`vlan=eth0.100` (no parent interface)", "rootfs",
        r"^vlan: expected <vlanname>:<phys> .*got 'eth0.100'$",
        cmd(f"vlan=eth0.100 MYURL=http://x {POWEROFF}")),
    Row("C23", "`bond=bond0:eth0,eth1:mode=balance-rr` (only active-backup)", "rootfs",
        r"^bond: mode 'balance-rr' is not supported \(only active-backup\)$",
        cmd(f"bond=bond0:eth0,eth1:mode=balance-rr MYURL=http://x {POWEROFF}")),
    Row("C24", "`pyinit.disk_timeout=10s` (a unit where seconds are asked)", "rootfs",
        r"^pyinit.disk_timeout: not a number of seconds: '10s'$",
        cmd(f"pyinit.disk_timeout=10s MYURL=http://x {POWEROFF}")),
    Row("C25", "`pyinit.disk_timeout=-1`", "rootfs",
        r"^pyinit.disk_timeout: out of range \(0, 86400\]: '-1'$",
        cmd(f"pyinit.disk_timeout=-1 MYURL=http://x {POWEROFF}")),
    # -- action JSON
    Row("A01", "server answers HTML (a web server's index page)", "action",
        r"^action: server answer is not JSON .*'<!DOCTYPE html>'", act(HTML)),
    Row("A02", "server answers an empty 200", "action",
        r"^action: server answer is not JSON .*'<empty>'", act(b"")),
    Row("A03", "JSON that is not an object (`[]`)", "action",
        r"^action: expected a JSON object, got list", act("[]")),
    Row("A04", "wrong type: `\"dryRun\": \"yes\"`", "action",
        r"^dryRun: must be a boolean, got str 'yes'",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "dryRun": "yes"})),
    Row("A05", "wrong type: `\"size\": \"3G\"`", "action", r"^size: must be an integer",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "size": "3G"})),
    Row("A06", "unknown field (typo `sourceImg`)", "action", r"^sourceImg: unknown field",
        act({"action": "writeImage", "sourceImg": IMG, "destinationDevice": "/dev/vdb"})),
    Row("A07", "no `action`", "action", r"^action: missing",
        act({"sourceImage": IMG, "destinationDevice": "/dev/vdb"})),
    Row("A08", "unknown action `eraseDisk`", "action", r"^action: unknown action 'eraseDisk'",
        act({"action": "eraseDisk"})),
    Row("A09", "`destinationDevice` and `rootDeviceHints` both", "action",
        r"^rootDeviceHints: give destinationDevice or rootDeviceHints, not both",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "rootDeviceHints": {"serial": "DISK0"}})),
    Row("A10", "image URL with an unknown scheme (`ftp://`)", "action",
        r"^sourceImage: not an http\(s\) URL: 'ftp://",
        act({"action": "writeImage", "sourceImage": "ftp://10.0.2.2/debian.img",
             "destinationDevice": "/dev/vdb"})),
    Row("A11", "`destinationDevice` outside /dev (`/dev/../etc/passwd`)", "action",
        r"^destinationDevice: not a device path under /dev",
        act({"action": "writeImage", "sourceImage": IMG,
             "destinationDevice": "/dev/../etc/passwd"})),
    Row("A12", "`checksum: md5:…`", "action", r"^checksum: must be sha256:<hex> or sha512",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "checksum": "md5:d41d8cd98f00b204e9800998ecf8427e"})),
    Row("A13", "`checksum` and `checksumURL` both", "action",
        r"^checksumURL: give checksum or checksumURL, not both",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "checksum": "sha256:" + "0" * 64, "checksumURL": "SHA256SUMS"})),
    Row("A14", "`finish: halt`", "action", r"^finish: 'halt' is not one of",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "finish": "halt"})),
    Row("A15", "`hostname: web_01!`", "action", r"^hostname: not a valid host name",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "hostname": "web_01!"})),
    Row("A16", "`sshKeys` entry that is not a key line", "action",
        r"^sshKeys\[0\]: not an authorized_keys line",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "sshKeys": ["AAAAC3NzaC1lZDI1NTE5"]})),
    Row("A17", "`network: static` with an address without prefix", "action",
        r"^address: network static needs address/prefix",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "network": "static", "address": "10.0.0.5"})),
    Row("A18", "`growPartition: \"first\"`", "action",
        r"^growPartition: must be a partition number or \"last\"",
        act({"action": "writeImage", "sourceImage": IMG, "destinationDevice": "/dev/vdb",
             "growPartition": "first"})),
    Row("A19", "wrong type: `\"allowRemovable\": \"yes\"`", "action",
        r"^allowRemovable: must be a boolean, got str 'yes'$",
        act({"action": "writeImage", "sourceImage": IMG, "allowRemovable": "yes"})),
    Row("A20", "wrong type: `\"keepIdentity\": \"yes\"`", "action",
        r"^keepIdentity: must be a boolean, got str 'yes'$",
        act({"action": "writeImage", "sourceImage": IMG, "keepIdentity": "yes"})),
    # -- server
    Row("S01", "no machine file for this MAC (HTTP 404)", "action",
        r"HTTP 404: the server has no action for this machine$", provisioning_server(None)),
    Row("S02", "broken machine file: HTTP 500 with the server's reason", "action",
        r"HTTP 500: machines/52-54-00-12-34-56.json:1: Expecting .* \(gave up after",
        provisioning_server(b"{not json"), fetch_retries=True),
    Row("S03", "HTTP 503 on every try", "action", r"HTTP 503 \(gave up after N attempts, 5 s\)",
        status(503), fetch_retries=True),
    Row("S04", "HTTP 403 on the action", "action", r": HTTP 403$", status(403)),
    Row("S05", "server unreachable (connection refused)", "action",
        r"unreachable: connection refused \(gave up after", unreachable, fetch_retries=True),
    Row("S06", "DNS failure (`MYURL=http://pyinit-server.invalid`)", "action",
        r"unreachable: cannot resolve 'pyinit-server.invalid': ", dns_failure,
        fetch_retries=True),
    # -- network
    Row("N01", "`BOOTIF` for a NIC that does not exist", "network",
        r"^network: BOOTIF 52:54:00:99:99:99 matches no NIC \(seen: eth0 ",
        net("BOOTIF=01-52-54-00-99-99-99")),
    Row("N02", "no NIC with carrier", "network",
        r"^network: no carrier within 0.3 s \(seen: eth0 52:54:00:12:34:56 \(virtio_net\) "
        r"no carrier\)", net("", carrier="0")),
    Row("N03", "no NIC at all (driver missing)", "network",
        r"^network: no wanted NIC within 0.3 s \(seen: none\)", net("", nics=False)),
    Row("N04", "`ip=…:eth7:off` names a NIC that does not exist", "network",
        r"^network: no NIC named eth7 \(seen: eth0 ",
        net("ip=10.0.0.5::10.0.0.1:255.255.255.0::eth7:off")),
    Row("N05", "no DHCP server answers", "network",
        r"^network: eth0: no DHCP lease within 0.3 s \(client SELECTING\)$", net("")),
    Row("N06", "`ip=eth7:dhcp` names a NIC that does not exist", "network",
        r"^network: no NIC named eth7 \(seen: eth0 ", net("ip=eth7:dhcp")),
    Row("N07", "`vlan=eth9.100:eth9`: the parent NIC does not exist", "network",
        r"^network: eth9.100 parent eth9 does not exist after 0.3 s \(seen: eth0 ",
        net("vlan=eth9.100:eth9"), modules=("8021q",)),
    Row("N08", "bare `bond` (no slaves given: dracut's eth0,eth1) on a machine with eth0 only",
        "network", r"^network: bond0 slave eth1 does not exist after 0.3 s \(seen: eth0 ",
        net("bond"), modules=("bonding",)),
    Row("N09", "`bond=bond0:eth0,eth5`: a slave that does not exist", "network",
        r"^network: bond0 slave eth5 does not exist after 0.3 s \(seen: eth0 ",
        net("bond=bond0:eth0,eth5"), modules=("bonding",)),
    # -- image and checksum
    Row("I01", "image URL answers 404", "provision", r"x\.img: HTTP 404",
        lambda rig: rig.boot(f"{rig.action(rig.write_action(rig.fault.url('x.img')))} "
                             f"{POWEROFF}")),
    Row("I02", "image server answers 503 on every try", "provision",
        r"HTTP 503.*gave up after 3 attempts",
        lambda rig: (rig.image("x.img", raw_image()),
                     rig.fault.set_faults("x.img", Faults(status=503, status_times=-1)),
                     rig.boot(f"{rig.action(rig.write_action(rig.fault.url('x.img')))} "
                              f"{POWEROFF}"))[-1], image_retries=True),
    Row("I03", "a qcow2 image (not a raw disk image)", "provision", r"qcow2 is not a raw disk",
        write("x.qcow2", b"QFI\xfb\x00\x00\x00\x03" + bytes(4088))),
    Row("I04", "truncated gzip image", "provision", r"truncated gzip stream",
        write("x.img.gz", (lambda z: z[:len(z) // 2])(gz(os.urandom(3 * MIB)))),
        touched=None),
    Row("I05", "checksum mismatch", "provision", r"checksum mismatch: expected sha256:0000",
        write("x.img", raw_image(), checksum="sha256:" + "0" * 64), touched=True),
    Row("I06", "image larger than the disk (`size`)", "provision",
        r"^disk /dev/vdb: image is larger than the disk: 8388608 bytes > 4194304",
        write("x.img", raw_image(), size=8 * MIB)),
    Row("I07", "raw image larger than the disk (Content-Length)", "provision",
        r"^disk /dev/vdb: image is larger than the disk", write("x.img", raw_image(6 * MIB))),
    Row("I08", "corrupt zstd image", "provision", r"zstd",
        write("x.img.zst", (lambda z: z[:200] + bytes(b ^ 0x5A for b in z[200:400]) + z[400:])(
            zst(raw_image())))),
    Row("I09", "empty image file", "provision", r"empty image", write("x.img", b"")),
    Row("I10", "`checksumURL` file without a line for the image", "provision",
        r"SHA256SUMS: no sha256 checksum line for x.img",
        lambda rig: (rig.image("SHA256SUMS", b"0" * 64 + b"  other.img\n"),
                     write("x.img", raw_image(),
                           checksumURL=lambda r: r.fault.url("SHA256SUMS"))(rig))[-1]),
    Row("I11", "`checksumURL` answers 404", "provision", r"SHA256SUMS: HTTP 404",
        write("x.img", raw_image(), checksumURL=lambda r: r.fault.url("SHA256SUMS"))),
    Row("I12", "`destinationDevice` that never appears", "provision",
        r"^disk /dev/sdq: did not appear within 0 s",
        lambda rig: rig.boot(f"{rig.action({**rig.write_action(rig.image('x.img', b'x')), 'destinationDevice': '/dev/sdq'})} {POWEROFF}")),  # noqa: E501
    Row("I13", "`destinationDevice` that is no block device (`/dev/null`)", "provision",
        r"^disk /dev/null: is not a block device",
        lambda rig: rig.boot(f"{rig.action({**rig.write_action(rig.image('x.img', b'x')), 'destinationDevice': '/dev/null'})} {POWEROFF}")),  # noqa: E501
    Row("I14", "server ignores Range and cuts every response at 1 MiB", "provision",
        r"ignored the Range request; gave up after 3 restarts",
        lambda rig: (rig.image("x.img", raw_image()),
                     rig.fault.set_faults("x.img", Faults(truncate_at=MIB, ignore_range=True)),
                     rig.boot(f"{rig.action(rig.write_action(rig.fault.url('x.img')))} "
                              f"{POWEROFF}"))[-1], image_retries=True),
    # -- disks (D02, D03, D05, D06: select_disk on data inside the runner)
    Row("D01", "`rootDeviceHints` matching no disk (`serial: NOPE`)", "disks",
        r"^disk selection: no disk matches rootDeviceHints \{serial: NOPE\}: have vdb",
        act({"action": "writeImage", "sourceImage": IMG,
             "rootDeviceHints": {"serial": "NOPE"}})),
    Row("D02", "disk hint matching two disks (same serial)", "disks",
        r"^disk selection: rootDeviceHints .* name one disk but match 2",
        pure("disks", lambda: select_disk(
            [SDA, SDB], parse_hints({"serial": "S45NNA0M"})))),
    Row("D03", "only a removable USB stick", "disks", r"removable \(usb\)",
        pure("disks", lambda: select_disk([USB]))),
    Row("D04", "the only disk is too small for the image (`size`, no device named)", "disks",
        r"^disk selection: no usable disk: vdb \(4 MiB\) too small for the image",
        act({"action": "writeImage", "sourceImage": IMG, "size": 8 * MIB})),
    Row("D05", "the only disk has a mounted partition", "disks", r"mounted: /dev/nvme0n1p1",
        pure("disks", lambda: select_disk([MOUNTED]))),
    Row("D06", "no disk at all (storage driver missing)", "disks", r"no disks found",
        pure("disks", lambda: select_disk([]))),
    Row("D07", "unknown hint key (`serail`)", "action", r"^rootDeviceHints.serail: unknown hint",
        act({"action": "writeImage", "sourceImage": IMG, "rootDeviceHints": {"serail": "x"}})),
    Row("D08", "size hint with the ambiguous `=` operator", "action",
        r"^rootDeviceHints.size: operator '=' is ambiguous",
        act({"action": "writeImage", "sourceImage": IMG, "rootDeviceHints": {"size": "= 100"}})),
    Row("D09", "`destinationDevice: /dev/disk/by-id/…` naming no disk", "disks",
        r"^disk /dev/disk/by-id/wwn-0x5000: no such disk",
        act({"action": "writeImage", "sourceImage": IMG,
             "destinationDevice": "/dev/disk/by-id/wwn-0x5000"})),
    Row("D10", "size hint with a string operator (`s== 100`)", "action",
        r"^rootDeviceHints.size: operator s== does not apply to a size",
        act({"action": "writeImage", "sourceImage": IMG, "rootDeviceHints": {"size": "s== 100"}})),
    Row("D11", "size hint with an unknown unit (`>= 100 XB`)", "action",
        r"^rootDeviceHints.size: not a size: '100 XB'",
        act({"action": "writeImage", "sourceImage": IMG,
             "rootDeviceHints": {"size": ">= 100 XB"}})),
    Row("D12", "string hint with a size operator (`serial: \">= S45\"`)", "action",
        r"^rootDeviceHints.serial: operator >= does not apply to a string",
        act({"action": "writeImage", "sourceImage": IMG,
             "rootDeviceHints": {"serial": ">= S45"}})),
    Row("D13", "hint of the wrong type (`rotational: \"maybe\"`)", "action",
        r"^rootDeviceHints.rotational: must be a boolean, got str 'maybe'$",
        act({"action": "writeImage", "sourceImage": IMG,
             "rootDeviceHints": {"rotational": "maybe"}})),
    # -- the erase action (issue #16): erase.plan / erase.choose_mode on data in the runner
    Row("D14", "erase of a disk in use (an md array holds it)", "disks",
        r"^erase: refused, nothing erased: sdb in use: held by md127",
        pure("disks", lambda: erase.plan([SDA, HELD]))),
    Row("D15", "`eraseMode: ata` on a frozen drive", "provision",
        r"^disk /dev/sda: eraseMode ata: the drive is frozen",
        pure("provision", lambda: erase.choose_mode(
            "ata", SDA, erase.Caps(ata=erase.AtaSecurity(supported=True, frozen=True))))),
    Row("D16", "`eraseMode: discard` on a device without discard", "provision",
        r"^disk /dev/sda: eraseMode discard: the device does not support discard",
        pure("provision", lambda: erase.choose_mode("discard", SDA, erase.Caps()))),
    Row("D17", "`eraseMode: shred`", "action", r"^eraseMode: 'shred' is not one of",
        act({"action": "erase", "eraseMode": "shred"})),
    Row("D18", "erase of every disk when the only one is a USB stick", "disks",
        r"^erase: no disk to erase: left out sdc",
        pure("disks", lambda: erase.plan([USB]))),
    # -- TLS and token
    Row("T01", "https server whose certificate is not from `pyinit.ca=`", "action",
        r"TLS error: certificate verify failed: .* \(trusting the CA .* from pyinit.ca=\)$",
        tls_server("other")),
    Row("T02", "https server with a private CA and no `pyinit.ca=`", "action",
        r"TLS error: certificate verify failed: .*default CA bundle \(certifi\)",
        tls_server("default")),
    Row("T03", "`https://` URL to a port speaking plain HTTP", "action",
        r"TLS error: .*(wrong version number|record layer failure)",
        tls_server("other", plain=True)),
    Row("T04", "readImage upload to an https URL that does not verify", "provision",
        r"upload.*TLS error: certificate verify failed", tls_server("other", upload=True)),
    # -- images from an OCI registry (issue #17): tests/ociserver.py's fake registry; the real
    # registry's answers to the same inputs: tests/integration/test_oci_registry.py
    Row("O01", "malformed `oci://` reference (upper-case repository)", "action",
        r"^sourceImage: 'oci://reg.example/Disks:v1': repository 'Disks' is not lower-case",
        act({"action": "writeImage", "sourceImage": "oci://reg.example/Disks:v1"})),
    Row("O02", "`oci://` reference with neither tag nor digest", "action",
        r"^sourceImage: 'oci://reg.example/disks/x' names no tag or digest",
        act({"action": "writeImage", "sourceImage": "oci://reg.example/disks/x"})),
    Row("O03", "`registryAuth` with an http(s) `sourceImage`", "action",
        r"^registryAuth: only for an oci:// sourceImage",
        act({"action": "writeImage", "sourceImage": IMG, "registryAuth": OCI_AUTH})),
    Row("O04", "registry answers 401 forever (Basic; credentials refused)", "provision",
        r"refused access: HTTP 401 even after basic authentication with registryAuth",
        oci(oci_image, challenge="basic", registryAuth=OCI_AUTH)),
    Row("O05", "registry asks for Basic credentials, the action has none", "provision",
        r"asks for Basic credentials \(HTTP 401\); the action gives no registryAuth",
        oci(oci_image, challenge="basic")),
    Row("O06", "Bearer token server refuses the credentials", "provision",
        r"/token: the token server refused the credentials \(HTTP 401\)",
        oci(oci_image, challenge="bearer", registryAuth=OCI_AUTH)),
    Row("O07", "tag not found", "provision", r"no manifest v9 in disks/x \(HTTP 404",
        oci(lambda reg: (oci_image(reg), "disks/x:v9")[1])),
    Row("O08", "manifest with several layers", "provision",
        r"the manifest has 2 layers; a disk image artifact has exactly one",
        oci(lambda reg: oci_image(reg, count=2))),
    Row("O09", "layer of an unknown media type (a container image layer)", "provision",
        r"layer media type 'application/vnd.oci.image.layer.v1.tar\+gzip' is not a disk image",
        oci(lambda reg: oci_image(reg, media="application/vnd.oci.image.layer.v1.tar+gzip"))),
    Row("O10", "an image index (multi-platform list) instead of an artifact", "provision",
        r"is an image index .*not a disk image artifact",
        oci(lambda reg: oci_image(reg, index=True))),
    Row("O11", "`@sha256:` digest the registry's manifest does not match", "provision",
        r"manifest digest mismatch: asked for sha256:0000.*the registry served sha256:",
        oci(lambda reg: (oci_image(reg, tag="sha256:" + "0" * 64),
                         "disks/x@sha256:" + "0" * 64)[1])),
    Row("O12", "blob whose bytes do not match the layer digest", "provision",
        r"checksum mismatch: expected sha256:1111",
        oci(lambda reg: (oci_image(reg, named="sha256:" + "1" * 64),
                         reg.blobs.__setitem__("sha256:" + "1" * 64, zst(raw_image())),
                         "disks/x:v1")[-1]), touched=True),
    Row("O13", "`checksum` with an `oci://` image", "action",
        r"^checksum: not with an oci:// sourceImage: the registry's layer digest is the checksum",
        act({"action": "writeImage", "sourceImage": "oci://reg.example/disks/x:v1",
             "checksum": "sha256:" + "0" * 64})),
    # -- signed images (issue #17): real gpgv, real keys (tests/gpgkeys.py)
    Row("G01", "`pyinit.keyring=base64:…` that is no keyring", "rootfs",
        r"^pyinit.keyring: the 24 decoded bytes are not an OpenPGP keyring",
        cmd(f"MYURL=http://127.0.0.1:9 {POWEROFF} pyinit.keyring=base64:"
            + base64.b64encode(b"this is not a keyring!!!").decode())),
    Row("G02", "signature over other bytes", "provision", r"bad signature .* not what was signed",
        signed(data=b"other bytes"), touched=None),
    Row("G03", "signed by a key not in the keyring", "provision",
        r"signed by key <other>, which is not in the keyring", signed("other")),
    Row("G04", "no signature (`x.img.gz.sig` answers 404)", "provision",
        r"no signature: .*x\.img\.gz\.sig answers HTTP 404", signed(None)),
    Row("G05", "signed by an expired key", "provision", r"which expired on 2025-01-02",
        signed("expired", ring="expired")),
    Row("G06", "signature file that is not OpenPGP (an HTML page)", "provision",
        r"is not an OpenPGP signature", signed("html", data=HTML.encode())),
    Row("G07", "signed `SHA256SUMS` without a line for the image", "provision",
        r"SHA256SUMS: no sha256 checksum line for x\.img\.gz", signed_sums("other.img.gz")),
    Row("G08", "`SHA256SUMS` changed after it was signed", "provision",
        r"bad signature \(.*SHA256SUMS\.gpg", signed_sums("x.img.gz", signed_text=b"0  x\n")),
    Row("G09", "`signatureURL` on a machine without a keyring", "provision",
        r"signatureURL is set but no keyring is configured",
        signed(keyring=lambda rig: "", signatureURL="x.img.gz.sig")),
    Row("G10", "`pyinit.keyring=` naming a file that is no keyring", "provision",
        r"^pyinit.keyring: /etc/pyinit/keyring.gpg is not an OpenPGP keyring",
        signed(keyring=keyring_file)),
    Row("G11", "signed by a revoked key", "provision", r"which is revoked",
        signed("revoked", ring="revoked"), touched=None),
    Row("G12", "a signature that expired (made in 2025, valid for a day)", "provision",
        r"the signature expired on 2025-01-02", signed("old", ring="old", expiring=True),
        touched=None),
    # -- RAID1 roots (issue #17)
    Row("R01", "RAID1 whose `raid.rootDeviceHints` match one disk", "disks",
        r"^raid: RAID1 needs at least 2 disks; .* gave 1 \(vdb .*no disk touched$",
        act({"action": "writeImage", "sourceImage": IMG,
             "raid": {"level": 1, "rootDeviceHints": {"serial": "DISK0"}}})),
    Row("R02", "RAID1 over one disk named in `raid.devices`", "action",
        r"^raid.devices: RAID1 needs at least 2 disks, got 1$",
        act({"action": "writeImage", "sourceImage": IMG,
             "raid": {"level": 1, "devices": ["/dev/vdb"]}})),
    Row("R03", "RAID1 over disks of very different sizes (480 GiB and 960 GiB)", "disks",
        r"^raid: disks of very different sizes: sda 480 GiB and nvme0n1 960 GiB",
        pure("disks", lambda: raid.plan(Raid(1, devices=("/dev/sda", "/dev/nvme0n1")),
                                        [SDA, dataclasses.replace(MOUNTED, mounted=())]))),
    Row("R04", "RAID1 with a member in use (an md array holds it)", "disks",
        r"^raid: refused, no disk touched: sdb held by md127$",
        pure("disks", lambda: raid.plan(Raid(1, devices=("/dev/sda", "/dev/sdb")),
                                        [SDA, HELD]))),
    Row("R05", "RAID1 with the root on LVM (`lvmRootName`)", "action",
        r"^raid: a RAID1 root on LVM \(lvmRootName\) is not supported",
        act({"action": "writeImage", "sourceImage": IMG, "lvmRootName": "vg0/root",
             "raid": {"level": 1, "devices": ["/dev/vda", "/dev/vdb"]}})),
    Row("R06", "`raid.level: 5`", "action", r"^raid.level: RAID5 is not supported",
        act({"action": "writeImage", "sourceImage": IMG,
             "raid": {"level": 5, "devices": ["/dev/vda", "/dev/vdb"]}})),
    Row("R07", "RAID1 from a golden image without mdadm", "raid",
        r"^raid: the image has no mdadm .*install mdadm in the golden image",
        pure("raid", lambda: raid.require_mdadm(Path("/nonexistent-golden-root")))),
    Row("R08", "RAID1 from an image without a partition table (nothing to mirror)", "raid",
        r"^raid: .*: the image has no partition table: nothing to mirror$",
        lambda rig: rig.boot(POWEROFF, (("raid", lambda ctx: raid.grow_to_smallest(
            str(rig.disk), "last", DISK_SIZE)),))),
)


# ---- the doc table -----------------------------------------------------------------------


def doc_rows() -> dict[str, list[str]]:
    """Row id → the cells of its line in docs/bad-inputs.md (``\\|`` unescaped)."""
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*([A-Z]\d\d)\s*\|", line)
        if m:
            cells = [c.strip().replace("\\|", "|")
                     for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            rows[m.group(1)] = cells
    return rows


def test_doc_and_test_tables_agree() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
    documented = doc_rows()
    warned = {w.id for w in WARNINGS}  # not failures: their own table and test below
    assert set(documented) == set(ids) | warned, (
        f"only in the doc: {sorted(set(documented) - set(ids) - warned)}; "
        f"only in the tests: {sorted((set(ids) | warned) - set(documented))}")
    assert len(ids) >= 30
    # the intro's count ("90 rows (command line 25, …)") follows the table
    m = re.search(r":\s+(\d+) rows \(command line (\d+), action JSON (\d+),\s+server (\d+), "
                  r"network (\d+), image (\d+), disks (\d+), TLS (\d+),\s+OCI registry (\d+),"
                  r"\s+signatures (\d+),\s+RAID1 (\d+)\)",
                  DOC.read_text())
    assert m, "the intro's row count is missing"
    per_group = [sum(1 for i in ids if i[0] == g) for g in "CASNIDTOGR"]
    assert [int(n) for n in m.groups()] == [len(ids), *per_group]
    for row in ROWS:
        cells = documented[row.id]
        assert cells[-1] == f"`tests/unit/test_bad_inputs.py::test_bad_input[{row.id}]`", row.id
        assert ("not yet" in " ".join(cells)) == (row.xfail is not None), row.id


@pytest.fixture
def row_rig(request: pytest.FixtureRequest, rig: Rig) -> Rig:
    row: Row = request.node.callspec.params["row"]
    if row.id.startswith("T"):
        rig.tls = request.getfixturevalue("tls_files")
    if row.id.startswith("G"):  # gpgv is the peer under test: it only reads the files it is
        # given; every other command stays forbidden
        rig.keys = request.getfixturevalue("gpg_keys")
        for name in NAMES:  # the keys are made per run: the doc shows their names
            rig.replacements[rig.keys.keyid(name)] = f"<{name}>"

        def gpgv_only(real: Callable[..., Any]) -> Callable[..., Any]:
            def runner(argv: list[str], **kw: Any) -> Any:
                if argv[0] != "gpgv":
                    raise AssertionError(f"unit test tried to run a real command: {argv}")
                return real(argv, **kw)
            return runner

        # set_runner, not monkeypatch: monkeypatch is undone after the autouse fixture that
        # forbids commands put the real runner back, and would leave the forbidding one behind
        # for the next (integration) test of this worker
        previous = (proc.set_runner(gpgv_only(proc._real_run)),
                    proc.set_spawner(gpgv_only(proc._real_spawn)))

        def restore() -> None:
            proc.set_runner(previous[0])
            proc.set_spawner(previous[1])
        request.addfinalizer(restore)
    return rig


def _params() -> list[Any]:
    return [pytest.param(r, id=r.id, marks=[pytest.mark.xfail(strict=True, reason=r.xfail)]
                         if r.xfail else []) for r in ROWS]


@pytest.mark.parametrize("row", _params())
def test_bad_input(row: Row, row_rig: Rig) -> None:
    rig = row_rig
    out = row.drive(rig)
    line = rig.normalise(out.failed_line)
    dump = os.environ.get("PYINIT_BAD_INPUTS_DUMP")
    if dump:
        with open(dump, "a") as f:
            f.write(json.dumps({"id": row.id, "line": line, "policies": out.policies,
                                "fetch_retries": out.fetch_retries,
                                "image_retries": out.image_retries}) + "\n")
    # (a) one clear line naming the cause, as documented, and no traceback
    assert "Traceback" not in out.console, out.console
    if not dump:  # regenerating the doc: its old lines are not the reference
        documented = doc_rows().get(row.id)
        assert documented is not None, f"{row.id} is not in {DOC}"
        assert documented[2] == f"`{line}`", f"doc line differs from the real one: {line}"
    # (b) the failure event names the step and the reason; the result event the policy
    failed = [e for e in out.events if e.get("status") == "failed" and e["step"] != "result"]
    assert [e["step"] for e in failed] == [row.step]
    assert failed[0]["error"] == out.failed_line
    result = [e for e in out.events if e["step"] == "result"]
    assert result and result[-1]["failed_step"] == row.step
    # (c) the configured failure policy ran, once
    assert out.policies == [row.policy]
    assert result[-1]["policy"] == row.policy
    assert (out.fetch_retries > 0) == row.fetch_retries, out.fetch_retries
    assert (out.image_retries > 0) == row.image_retries, out.image_retries
    assert rig.modules_wanted == list(row.modules)
    # (d) the disk: untouched, or (failure during the write) both table areas wiped
    data = rig.disk.read_bytes()
    if row.touched or (row.touched is None and data != rig.original):
        assert data != rig.original
        assert data[:MIB] == bytes(MIB) and data[-MIB:] == bytes(MIB)
    else:
        assert data == rig.original
    assert re.search(row.expect, line), line


# ---- warnings: bad inputs of background work, where the boot goes on --------------------


@dataclass(frozen=True)
class Warned:
    id: str
    input: str
    drive: Callable[[Path], str]  # -> the console text; the boot's own background code path


def _lldp_frames(*bad: bytes) -> Callable[[Path], str]:
    """The bad frames, then lldpd's good one, into the boot's LLDP listener (its socket a
    datagram socket pair): one warning, and the neighbour is still heard."""
    def drive(tmp: Path) -> str:
        import socket

        from pyinit import lldp

        from .test_lldp import LLDPD_FRAME

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        heard: list[str] = []
        with theirs:
            listener = lldp.Listener(["eth0"], timeout=10, opener=lambda name: ours,
                                     emit=lambda nic, n: heard.append(nic)).start()
            for frame in (*bad, LLDPD_FRAME):
                theirs.send(frame)
            listener.join(5)
        assert heard == ["eth0"] and not listener.is_alive()
        return ""
    return drive


def _unreadable_dmi(tmp: Path) -> str:
    from pyinit import inventory

    serial = tmp / "sys" / "class" / "dmi" / "id" / "product_serial"
    serial.mkdir(parents=True)  # read(2) fails: EISDIR here, EIO from broken firmware
    (serial.parent / "sys_vendor").write_text("Dell Inc.\n")
    events: list[dict[str, Any]] = []
    log.add_sink(events.append)
    inventory.start(sysfs=tmp / "sys", procfs=tmp / "proc", dev=tmp / "dev").join(5)
    (ev,) = events
    assert ev["step"] == "hardware" and set(ev["errors"]) == {"dmi"} and ev["system"] is None
    return ""


_DEVICES = {  # slot, vendor, device, class, modalias
    "bcm57416": ("0000:3b:00.0", "0x14e4", "0x16d8", "0x020000",
                 "pci:v000014E4d000016D8sv00001028sd00001FEBbc02sc00i00"),
    "bcm57810": ("0000:3b:00.1", "0x14e4", "0x168e", "0x020000",
                 "pci:v000014E4d0000168Esv0000103Csd00001798bc02sc00i00"),
    "p408i": ("0000:5e:00.0", "0x9005", "0x028f", "0x010700",
              "pci:v00009005d0000028Fsv0000103Csd00000600bc01sc07i00"),
}


def _unbound(kind: str, device: str, staged: str, left_out: str, kmsg: list[str], *,
             background: bool = False) -> Callable[[Path], str]:
    """One PCI controller (a fake sysfs) that no driver bound, through the boot's own report
    (``init.report_unbound`` after the modules step; ``init.wait_for_drivers`` in the disks
    step, after the background loading): the staged aliases, the kernel's left-out ones
    (``/etc/pyinit/kernel-aliases``) and the kernel log are the inputs."""
    def drive(tmp: Path) -> str:
        from pyinit import coldplug, init, kmod

        from .test_coldplug import pci_device

        sysfs = tmp / "sys"
        pci_device(sysfs, *_DEVICES[device])
        aliases = tmp / "kernel-aliases"
        aliases.write_text(left_out)
        saved = (init.SYSFS, init.KERNEL_ALIASES, init.BIND_WAIT, coldplug.read_kernel_log)
        init.SYSFS, init.KERNEL_ALIASES, init.BIND_WAIT = sysfs, aliases, 0.0
        coldplug.read_kernel_log = lambda path=Path("/dev/kmsg"): kmsg  # type: ignore[assignment]
        events: list[dict[str, Any]] = []
        log.add_sink(events.append)
        try:
            ctx = init.Context()
            ctx.plugger = coldplug.Plugger(kmod.parse_modules_alias(staged),
                                           load=lambda names: names)
            ctx.plugger.loaded.extend(m for _, m in ctx.plugger.aliases.entries)
            if background:
                ctx.background_drivers = coldplug.Background(
                    ctx.plugger, sysfs=sysfs, then=lambda _p, _s: None).start()
                init.wait_for_drivers(ctx)
            else:
                init.report_unbound(ctx, kind)
        finally:
            init.SYSFS, init.KERNEL_ALIASES, init.BIND_WAIT, coldplug.read_kernel_log = saved
        (ev,) = [e for e in events if e["status"] == "no-driver"]
        assert ev["step"] == "modules" and ev["kind"] == kind
        assert ctx.summary["no_driver"] == 1
        return ""
    return drive


_SRC = "0c:42:a1:5e:77:07"  # lldpd's frame in tests/unit/test_lldp.py
_HEAD = bytes.fromhex("0180c200000e") + bytes.fromhex(_SRC.replace(":", "")) + b"\x88\xcc"
_CHASSIS = b"\x02\x07\x04" + bytes.fromhex(_SRC.replace(":", ""))

def _uefi(table: bytes, *, files: tuple[str, ...] = ("EFI/BOOT/BOOTX64.EFI",),
          fail: str | None = None, why: str = "", stale: bool = False, pxe: bool = False,
          keep_order: tuple[str, ...] | None = None) -> Callable[[Path], str]:
    """A writeImage's ``bootentry`` step (``init.step_bootentry``) on a machine booted by UEFI
    (``/sys/firmware/efi`` in a fake sysfs): /dev/vdb's partition table read from ``table``,
    the ESP's ``files`` listed without a mount (no ``files``: the real listing, whose blkid
    finds no filesystem), efivarfs not mounted, efibootmgr answered by the fake NVRAM of
    tests/unit/test_efiboot.py (``fail``: the option that fails, with ``why``; ``stale``: an
    earlier pyinit entry; ``pxe``: this boot came from a PXE entry, kept first; ``keep_order``:
    a firmware that puts BootOrder back); the step's own code path otherwise."""
    def drive(tmp: Path) -> str:
        from pyinit import efiboot, grow
        from pyinit.action import parse_action
        from pyinit.parttable import parse
        from tests.conftest import Recorder

        from .test_efiboot import MACHINE_NVRAM, PXE_PATH, Nvram

        sysfs = tmp / "sys"
        (sysfs / "firmware" / "efi" / "efivars").mkdir(parents=True)
        nvram = Nvram(dict(MACHINE_NVRAM), ["0001", "0000", "0002"], fail=fail,
                      keep_order=keep_order, why=why)
        if stale:
            nvram.entries["0003"] = ("pyinit golden.img.zst", "HD(1,GPT,ee1)/File(\\x)")
            nvram.order.insert(0, "0003")
        if pxe:
            nvram.entries["0005"] = ("UEFI PXEv4 (MAC:525400123456)", PXE_PATH)
            nvram.order.insert(0, "0005")
            nvram.current = "0005"
        blkid = proc.Completed(("blkid",), 2, "", "")
        saved = (init.SYSFS, efiboot.read_table, efiboot.list_esp, efiboot.mount_efivarfs,
                 grow.wait_for_partitions)
        init.SYSFS = sysfs
        efiboot.read_table = lambda disk: parse(table)
        if files:
            efiboot.list_esp = lambda disk, number, **_: list(files)
        efiboot.mount_efivarfs = lambda sysfs=sysfs: None
        grow.wait_for_partitions = lambda *a, **k: []
        previous = proc.set_runner(Recorder(responses={"efibootmgr": nvram, "blkid": blkid}))
        try:
            ctx = init.Context()
            ctx.action = parse_action({"action": "writeImage",
                                       "sourceImage": "http://srv/images/golden.img.zst"})
            ctx.device = "/dev/vdb"
            init.step_bootentry(ctx)
        finally:
            proc.set_runner(previous)
            (init.SYSFS, efiboot.read_table, efiboot.list_esp, efiboot.mount_efivarfs,
             grow.wait_for_partitions) = saved
        assert str(ctx.summary["boot_entry"]).startswith(("none (", "Boot"))
        return ""
    return drive


def _gpt_with(esp: bool) -> bytes:
    from .test_parttable import ESP, LINUX, GptPart, gpt_disk

    per_mib = (1 << 20) // 512
    parts = [GptPart(per_mib, 2 * per_mib - 1, "EFI system", ESP)] if esp else []
    return bytes(gpt_disk(8 * per_mib, [*parts, GptPart(2 * per_mib, 6 * per_mib, "root",
                                                          LINUX)]))


def _bios_mbr() -> bytes:
    from .test_parttable import mbr_sector

    return bytes(mbr_sector([(0x80, 0x83, 2048, 8192)]))


WARNINGS: tuple[Warned, ...] = (
    Warned("W01", "LLDP frame with a TLV longer than the frame", _lldp_frames(
        _HEAD + _CHASSIS + b"\x04\x10abc", _HEAD + _CHASSIS + b"\x04\x10abc")),
    Warned("W02", "oversized LLDP frame (a 1559-byte LLDPDU)", _lldp_frames(
        _HEAD + _CHASSIS + b"\x04\x05\x05swp7\x06\x02\x00\x78"
        + (b"\xfe\xff" + bytes(511)) * 3)),
    Warned("W03", "a DMI attribute that cannot be read", _unreadable_dmi),
    Warned("W04", "a NIC whose driver the kernel has but this initramfs does not", _unbound(
        "network controller", "bcm57416", "",
        "alias pci:v000014E4d000016D8sv*sd*bc*sc*i* bnxt_en\n", [])),
    Warned("W05", "a NIC driver whose firmware is missing", _unbound(
        "network controller", "bcm57810", "alias pci:v000014E4d0000168Esv*sd*bc*sc*i* bnx2x\n",
        "", ["3,812,9100000,-;bnx2x 0000:3b:00.1: Direct firmware load for "
             "bnx2x/bnx2x-e2-7.13.21.0.fw failed with error -2"])),
    Warned("W06", "a storage controller no driver matches, seen after the background loading",
           _unbound("storage controller", "p408i", "", "", [], background=True)),
    Warned("U01", "a BIOS-only MBR image written on a machine booted by UEFI",
           _uefi(_bios_mbr())),
    Warned("U02", "an ESP without a loader", _uefi(_gpt_with(esp=True),
                                                    files=("EFI/debian/grub.cfg",))),
    Warned("U03", "an ESP partition with no filesystem on it", _uefi(_gpt_with(esp=True),
                                                                      files=())),
    Warned("U04", "NVRAM full: efibootmgr --create fails", _uefi(
        _gpt_with(esp=True), fail="--create", why="No space left on device")),
    Warned("U05", "an earlier pyinit entry that cannot be deleted", _uefi(
        _gpt_with(esp=True), fail="--bootnum", why="Operation not permitted", stale=True)),
    Warned("U06", "a firmware that puts BootOrder back", _uefi(
        _gpt_with(esp=True), pxe=True, keep_order=("0001", "0005", "0003"))),
)


@pytest.mark.parametrize("warned", WARNINGS, ids=[w.id for w in WARNINGS])
def test_warning(warned: Warned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background collector's bad input: exactly one warning line, the one documented (temp
    paths as /sys), no traceback, no failure event; the work goes on (the driver asserts
    that the good frame was still heard, the rest of the inventory still posted)."""
    buf = io.StringIO()
    monkeypatch.setattr(log, "_console", buf)
    log.configure()
    log.clear_sinks()
    try:
        warned.drive(tmp_path)
    finally:
        log.clear_sinks()
    text = buf.getvalue().replace(str(tmp_path / "sys"), "/sys")
    assert "Traceback" not in text and "FAILED" not in text
    warnings = [line.removeprefix("pyinit: WARNING: ") for line in text.splitlines()
                if line.startswith("pyinit: WARNING: ")]
    cells = doc_rows()[warned.id]
    assert [f"`{w}`" for w in warnings] == [cells[2]], text
    assert cells[-1] == f"`tests/unit/test_bad_inputs.py::test_warning[{warned.id}]`"


# ---- the two message fixes that came out of the catalogue ----------------------------------


@pytest.mark.parametrize(("status", "has_token", "needle"), [
    (401, False, "pyinit.token= missing"),
    (401, True, "pyinit.token= wrong"),
    (403, False, "does not accept events here (no pyinit.token= given"),
    (403, True, "pyinit.token= not accepted, or it takes no events"),
])
def test_event_refusal_names_the_likely_cause(status: int, has_token: bool, needle: str) -> None:
    from pyinit.events import refusal_reason
    reason = refusal_reason(status, has_token)
    assert needle in reason
    assert ("missing or wrong" not in reason)


def test_event_sink_on_a_static_server_does_not_blame_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server refusing events (here: one that wants a token none was given for) gets one
    warning naming the likely cause, never "missing or wrong" for every refusal."""
    from pyinit.events import ServerSink
    buf = io.StringIO()
    monkeypatch.setattr(log, "_console", buf)
    log.configure()
    (tmp_path / "srv").mkdir()
    with ObservedServer(tmp_path / "srv", token="s3cret") as prov:
        sink = ServerSink(f"{prov.url}/events/{DASHES}")
        sink({"step": "action", "status": "ok"})
        sink.flush()
    text = buf.getvalue()
    assert re.search(r"events: .*HTTP 40[13]: the server (wants a token|does not accept)", text)
    assert "missing or wrong" not in text


def test_capture_tls_failure_is_one_line_and_not_retried(
        tmp_path: Path, tls_files: TLSFiles) -> None:  # noqa: F811 - the fixture
    disk = tmp_path / "disk"
    disk.write_bytes(os.urandom(8192))
    sleeps: list[float] = []
    root = tmp_path / "srv"
    (root / "images").mkdir(parents=True)
    with ObservedServer(root, tls_cert=tls_files.cert, tls_key=tls_files.key) as srv, \
            requests.Session() as session:
        session.verify = str(tls_files.other_ca)
        url = f"{srv.url}/upload"
        with pytest.raises(capture.FetchError) as info:
            capture.capture_image(str(disk), url, mac=MAC, session=session,
                                  allow_regular_file=True, attempts=3, sleep=sleeps.append)
    assert sleeps == []  # fatal at once: a certificate does not verify on the next try
    assert not info.value.retryable
    line = str(info.value)
    assert line.startswith(f"{url}: TLS error: certificate verify failed: ")
    assert f"(trusting the CA {tls_files.other_ca} from pyinit.ca=)" in line
    assert "_ssl.c" not in line and "SSLError" not in line

