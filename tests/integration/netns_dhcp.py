"""A DHCP lab in network namespaces: veth pairs, real dnsmasq, and the runtime as the client.

``Lab`` (host side) builds one server namespace and one client namespace, named after the pid so
parallel runs never collide, links them with veth pairs and runs dnsmasq (dnsmasq-base) in the
server namespace. ``Lab.run_client`` runs this module inside the client namespace
(``ip netns exec``: a fresh /sys that shows that namespace's links), which calls
:func:`pyinit.network.configure.configure` (its veth ends as the NICs: :func:`lab_nics`) and
prints one JSON line. ``Lab.close`` kills every dnsmasq and deletes both namespaces, whatever
happened before.

No traffic leaves the namespaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinit import proc
from pyinit.network.links import Nic, list_links

REPO = Path(__file__).resolve().parents[2]
_serial = itertools.count()


def ip(*args: str) -> str:
    return proc.run(["ip", *args], timeout=20).stdout


NETNS_LOCK = Path("/run/lock/pyinit-tests-netns.lock")


def netns_add(name: str) -> None:
    """``ip netns add``, one at a time across the suite's parallel workers: the first one makes
    /run/netns a shared mount of itself, and two racing there can hide one's namespace under
    the other's mount (then ``ip -n NAME`` fails: "setting the network namespace ... failed:
    Invalid argument")."""
    NETNS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with NETNS_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ip("netns", "add", name)


def lab_nics(sysfs: Path) -> list[Nic]:
    """The client namespace's NICs for ``configure(nics=…)``: its veth ends, which sysfs shows as
    virtual (no ``device`` link), so the default listing (physical NICs only) would find none."""
    return list_links(sysfs)


def stop_process(popen: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM a test's daemon, SIGKILL it after ``grace`` seconds, and reap it."""
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(grace)


@dataclass
class Dnsmasq:
    popen: subprocess.Popen[bytes]
    log: Path
    leases: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.popen)


@dataclass
class Lab:
    tmp: Path
    server_ns: str = ""
    client_ns: str = ""
    servers: list[Dnsmasq] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = f"pyinit-{os.getpid()}-{next(_serial)}"
        self.server_ns, self.client_ns = f"{tag}-srv", f"{tag}-cli"
        try:
            for ns in (self.server_ns, self.client_ns):
                netns_add(ns)
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def veth(self, client_if: str, server_if: str, mac: str, *, server_addr: str | None = None,
             peer_up: bool = True) -> None:
        """A veth pair: ``client_if`` (MAC ``mac``, left down: the runtime brings it up) in the
        client namespace, ``server_if`` (with ``server_addr``, up unless ``peer_up=False``) in
        the server namespace. Created inside the namespaces, so names never clash on the host."""
        ip("-n", self.client_ns, "link", "add", client_if, "address", mac, "type", "veth",
           "peer", "name", server_if, "netns", self.server_ns)
        if server_addr:
            ip("-n", self.server_ns, "addr", "add", server_addr, "dev", server_if)
        if peer_up:
            ip("-n", self.server_ns, "link", "set", server_if, "up")

    def start_dnsmasq(self, args: Sequence[str], *, ns: str | None = None,
                      ready: Sequence[str] = ("DHCP, IP range",),
                      name: str | None = None) -> Dnsmasq:
        """``dnsmasq --no-daemon ARGS`` in ``ns`` (default: the server namespace), its log,
        lease and pid files in ``tmp``; returns once every text of ``ready`` is in its log.
        :meth:`close` stops it."""
        name = name or f"dnsmasq-{len(self.servers)}"
        log, leases = self.tmp / f"{name}.log", self.tmp / f"{name}.leases"
        argv = ["ip", "netns", "exec", ns or self.server_ns, "dnsmasq", "--no-daemon", *args,
                f"--dhcp-leasefile={leases}", f"--pid-file={self.tmp / name}.pid",
                "--log-facility=-", "--user=root"]
        print("+", " ".join(argv))
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     env=proc.clean_env())
        server = Dnsmasq(popen, log, leases)
        self.servers.append(server)
        deadline = time.monotonic() + 10
        while not all(text in server.text() for text in ready):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start:\n{server.text()}")
            time.sleep(0.05)
        return server

    def dnsmasq(self, ifaces: Sequence[str], ranges: Sequence[str], *, router: str, dns: str,
                extra: Sequence[str] = ()) -> Dnsmasq:
        """dnsmasq (DHCP only: ``--port=0``) on ``ifaces`` of the server namespace, handing out
        ``router`` as the Router option: an address that is deliberately not its own."""
        return self.start_dnsmasq([
            "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
            *(f"--interface={i}" for i in ifaces), *(f"--dhcp-range={r}" for r in ranges),
            f"--dhcp-option=option:router,{router}", f"--dhcp-option=option:dns-server,{dns}",
            "--log-dhcp", *extra])

    def run_client(self, timeout: float = 120, module: str = "tests.integration.netns_dhcp",
                   **args: Any) -> dict[str, Any]:
        """Run ``module`` (default: :func:`client_main` here) in the client namespace with
        ``args`` as JSON; the JSON of its last stdout line."""
        argv = ["ip", "netns", "exec", self.client_ns, sys.executable, "-m", module,
                json.dumps(args)]
        print("+", " ".join(argv))
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env=proc.clean_env(), check=False)
        for line in done.stderr.splitlines():
            print(f"client: {line}")
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"client exited {done.returncode}: {done.stdout}{done.stderr}")
        answer: dict[str, Any] = json.loads(lines[-1])
        return answer

    def client_ip(self, *args: str) -> Any:
        return json.loads(ip("-j", "-n", self.client_ns, *args) or "[]")

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for ns in (self.client_ns, self.server_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@contextlib.contextmanager
def lab_in(tmp: Path) -> Iterator[Lab]:
    """A :class:`Lab` that is always closed, with every dnsmasq log printed afterwards (pytest
    shows it for a failing test): the ``lab`` fixture of the netns and PXE tests."""
    lab = Lab(tmp)
    try:
        yield lab
    finally:
        lab.close()
        for server in lab.servers:
            print(f"--- {server.log.name}\n{server.text()}")


def client_main(args: dict[str, Any]) -> dict[str, Any]:
    """Inside the client namespace: configure, then report (and optionally wait for renewals)."""
    from pyinit import log
    from pyinit.cmdline import BondConfig, VlanConfig
    from pyinit.errors import NetworkError
    from pyinit.network.configure import StaticIP, configure

    log.configure(debug=bool(args.get("debug")), console=sys.stderr)
    raw = args.get("static")
    static = StaticIP(**{**raw, "dns": tuple(raw.get("dns", ()))}) if raw else None
    t0 = time.monotonic()
    try:
        result = configure(
            bootif=args.get("bootif"), static=static, device=args.get("device"),
            carrier_timeout=args.get("carrier_timeout", 10),
            lease_timeout=args.get("lease_timeout", 30),
            resolv_conf=Path(args["resolv_conf"]), nics=lab_nics,
            vlans=[VlanConfig(**v) for v in args.get("vlans", ())],
            bonds=[BondConfig(**{**b, "slaves": tuple(b["slaves"])})
                   for b in args.get("bonds", ())])
    except NetworkError as exc:
        return {"ok": False, "error": str(exc), "type": type(exc).__name__,
                "elapsed": time.monotonic() - t0}
    out: dict[str, Any] = {"ok": True, "result": result.as_dict(),
                           "elapsed": time.monotonic() - t0}
    dhcp = result.dhcp
    if dhcp is not None:
        out["bound_after"] = dhcp.bound_after
        time.sleep(0.5)  # the client must outlive the lease, not just reach it
        out["alive_after_lease"] = dhcp.is_alive()
        out["state_after_lease"] = dhcp.state
        want = int(args.get("wait_renewals", 0))
        deadline = time.monotonic() + float(args.get("renew_timeout", 30))
        while dhcp.count("renewed") < want and time.monotonic() < deadline:
            time.sleep(0.1)
        out["renewed"] = dhcp.count("renewed")
        out["state"] = dhcp.state
        dhcp.stop()
        out["alive_after_stop"] = dhcp.is_alive()
    return out


if __name__ == "__main__":
    print(json.dumps(client_main(json.loads(sys.argv[1]))), flush=True)
