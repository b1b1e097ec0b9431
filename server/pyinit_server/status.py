"""Machine status: the events a machine posted, bounded, and a summary computed from them.

The server keeps the last :data:`MAX_EVENTS` events of each MAC in memory (a restart forgets them;
the console of each machine keeps the full record) and folds every event into a summary:

``phase``
    the step of the last event other than ``result`` (``action``, ``provision``, ``finish``...)
    and ``state`` the status of that event (``start``, ``ok``, ``failed``, ``progress``).
``percent``, ``rate``, ``eta``
    from the last ``progress`` event: the image writer's ``percent``/``rate``/``eta``, or the
    capture's ``bytes_read``/``total``/``rate``.
``error``
    the ``error`` of the last ``failed`` event.
``result``
    ``ok`` or ``failed`` from the final ``result`` event (None while the run goes on).
``last_seen``
    the server's clock when the last event arrived (machines' clocks are often wrong).
``events`` and ``dropped``
    how many events the machine posted, and how many of them retention removed since (the
    oldest beyond :data:`MAX_EVENTS` here; the durable store also drops by total size).

``hardware``
    from the last ``hardware inventory`` event (docs/inventory.md): vendor, product, serial,
    UUID, BIOS, CPU model and count, memory, PCI/disk/NIC counts. ``lldp``: per NIC, the
    switch its last ``lldp neighbour`` event named (system name, chassis, port, VLAN), and
    ``heard: false`` for the NICs an ``lldp done`` event lists as silent.

``lifecycle``
    the machine's state (new, deploying, deployed, booted, ...; :mod:`pyinit_server.lifecycle`,
    docs/lifecycle.md), since when and the event that moved it there.
``identity``
    from the last ``configure identity`` event (docs/identity.md): the target's fresh SSH host
    keys (type, fingerprint, public key: at most :data:`MAX_HOST_KEYS`, each checked to be one
    OpenSSH public key line) and machine-id. It survives a new run until the next deployment
    replaces it. The host name for ``known_hosts`` is the server's own (the machine file's
    ``hostname``), never the machine's word.

An event that arrives after a ``result`` starts a new run: the summary is reset (the history is
kept). ``hardware`` and ``lldp`` events come from background threads: they neither move the
phase nor start a new run, and the hardware they describe survives a new run. Nor do the two
that only move the lifecycle, both of which come after a run: ``firstboot`` (the deployed
system's own word) and ``operator`` (the server's, a redeploy asked for): a booted machine keeps
its run's result instead of showing a new run that never ends.

Every string taken from an event is the machine's: kept as text (cut at :data:`MAX_TEXT`),
never interpreted; the CLI and the dashboard escape it on output.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinit_server.lifecycle import Lifecycle, advance

MAX_EVENTS = 1000  # per MAC
MAX_TEXT = 200  # characters kept of a machine-supplied string in the summary
MAX_NICS = 32  # LLDP entries kept per machine
MAX_HOST_KEYS = 8  # SSH host keys kept per machine
MAX_PUBLIC_KEY = 2048  # characters of one public key line (RSA 4096 is ~750)
_PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|"
                         r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) "
                         r"([A-Za-z0-9+/]+={0,2})(?: [\x21-\x7e]{1,100})?$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
BACKGROUND_STEPS = frozenset({"hardware", "lldp"})  # events of background threads
LIFECYCLE_STEPS = frozenset({"firstboot", "operator"})  # they move the lifecycle, not the run


@dataclass
class Summary:
    mac: str
    phase: str | None = None
    state: str | None = None
    percent: float | None = None
    rate: float | None = None  # bytes per second
    eta: float | None = None  # seconds
    error: str | None = None
    result: str | None = None
    events: int = 0
    dropped: int = 0  # events removed by retention (counted by the keeper, not by fold)
    first_seen: float | None = None
    last_seen: float | None = None
    hardware: dict[str, Any] | None = None
    lldp: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity: dict[str, Any] | None = None
    lifecycle: dict[str, Any] | None = None  # lifecycle.Lifecycle.to_json()

    def to_json(self) -> dict[str, Any]:
        """A shallow copy (``asdict`` deep-copies: 70 % of an /api/machines page's time);
        the caller serialises it at once."""
        return dict(self.__dict__)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)[:MAX_TEXT]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _part(event: dict[str, Any], key: str) -> dict[str, Any]:
    value = event.get(key)
    return value if isinstance(value, dict) else {}


def hardware(event: dict[str, Any]) -> dict[str, Any]:
    """The summary of a ``hardware inventory`` event: a flat, bounded dict. Pure."""
    system, bios, cpu = _part(event, "system"), _part(event, "bios"), _part(event, "cpu")
    memory = _part(event, "memory")
    return {
        "vendor": _text(system.get("vendor")), "product": _text(system.get("product")),
        "serial": _text(system.get("serial")), "uuid": _text(system.get("uuid")),
        "bios_vendor": _text(bios.get("vendor")), "bios_version": _text(bios.get("version")),
        "bios_date": _text(bios.get("date")),
        "cpu_model": _text(cpu.get("model")), "cpus": _count(cpu.get("count")),
        "sockets": _count(cpu.get("sockets")),
        "memory": _count(memory.get("total")), "memory_physical": _count(memory.get("physical")),
        "pci": _count(_part(event, "pci").get("count")),
        "disks": _count(_part(event, "disks").get("count")),
        "nics": _count(_part(event, "nics").get("count")),
        "errors": sorted(str(k)[:MAX_TEXT] for k in _part(event, "errors"))[:8],
    }


def neighbour(event: dict[str, Any]) -> dict[str, Any]:
    """The summary of an ``lldp neighbour`` event. Pure."""
    vlan = _count(event.get("port_vlan"))
    return {"heard": True, "system_name": _text(event.get("system_name")),
            "chassis_id": _text(event.get("chassis_id")), "port_id": _text(event.get("port_id")),
            "port_description": _text(event.get("port_description")), "vlan": vlan}


def host_key(value: Any) -> dict[str, str] | None:
    """One ``host_keys`` entry of an identity event, or None when it is not an OpenSSH public
    key line with its SHA256 fingerprint: the line may end up in an operator's known_hosts, so
    nothing else (markers, options, a second line) gets through. Pure."""
    if not isinstance(value, dict):
        return None
    public, fp = value.get("public"), value.get("fingerprint")
    if not (isinstance(public, str) and isinstance(fp, str) and len(public) <= MAX_PUBLIC_KEY):
        return None
    m = _PUBLIC_KEY.match(public)
    if m is None or not _FINGERPRINT.match(fp):
        return None
    return {"type": _text(value.get("type")) or m.group(1), "fingerprint": fp,
            "public": f"{m.group(1)} {m.group(2)}"}


def identity(event: dict[str, Any]) -> dict[str, Any]:
    """The summary of a ``configure identity`` event: the checked host keys and the
    machine-id. Pure."""
    raw = event.get("host_keys")
    keys = [k for k in (host_key(v) for v in (raw if isinstance(raw, list) else [])[:32])
            if k is not None][:MAX_HOST_KEYS]
    machine_id = event.get("machine_id")
    return {"host_keys": keys,
            "machine_id": machine_id if isinstance(machine_id, str)
            and _MACHINE_ID.match(machine_id) else None}


def _fold_background(summary: Summary, event: dict[str, Any]) -> None:
    step, status = event.get("step"), event.get("status")
    if step == "hardware" and status == "inventory":
        summary.hardware = hardware(event)
    elif step == "lldp" and status == "neighbour":
        name = _text(event.get("interface"))
        if name and (name in summary.lldp or len(summary.lldp) < MAX_NICS):
            summary.lldp[name] = neighbour(event)
    elif step == "lldp" and status == "done" and isinstance(event.get("silent"), list):
        for raw in event["silent"][:MAX_NICS]:
            name = _text(raw)
            if name and name not in summary.lldp and len(summary.lldp) < MAX_NICS:
                summary.lldp[name] = {"heard": False}


def fold(summary: Summary, event: dict[str, Any], now: float) -> None:
    """Update ``summary`` with one event received at ``now``. Pure but for the mutation."""
    step, status = event.get("step"), event.get("status")
    if step in BACKGROUND_STEPS:
        summary.events += 1
        summary.first_seen = summary.first_seen or now
        summary.last_seen = now
        _fold_background(summary, event)
        return
    moved = advance(Lifecycle.from_json(summary.lifecycle), event, now)
    if moved is not None:
        summary.lifecycle = moved.to_json()
    if step in LIFECYCLE_STEPS:
        summary.events += 1
        summary.first_seen = summary.first_seen or now
        summary.last_seen = now
        return
    if summary.result is not None:  # a new run after the last one's result
        summary.phase = summary.state = summary.error = summary.result = None
        summary.percent = summary.rate = summary.eta = None
    summary.events += 1
    summary.first_seen = summary.first_seen or now
    summary.last_seen = now
    if step == "result":
        summary.result = str(status) if status is not None else None
        if status == "failed" and event.get("error"):
            summary.error = str(event["error"])
        if status == "ok" and summary.percent is not None:
            summary.percent, summary.eta = 100.0, None
        return
    if step == "configure" and status == "identity":
        summary.identity = identity(event)
    if isinstance(step, str):
        summary.phase, summary.state = step, None if status is None else str(status)
    if status == "failed" and event.get("error"):
        summary.error = str(event["error"])
    if status == "progress":
        pct = _number(event.get("percent"))
        if pct is None:
            done, total = _number(event.get("bytes_read")), _number(event.get("total"))
            if done is not None and total:
                pct = round(100 * done / total, 1)
        summary.percent = pct
        summary.rate = _number(event.get("rate"))
        summary.eta = _number(event.get("eta"))
    elif status == "start":
        summary.percent = summary.rate = summary.eta = None


class History:
    """Each MAC's last events (with the server's receive time) and its summary."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._events: dict[str, deque[dict[str, Any]]] = {}
        self._received: dict[str, deque[float]] = {}
        self._summaries: dict[str, Summary] = {}

    def add(self, mac: str, event: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        events = self._events.setdefault(mac, deque(maxlen=self.max_events))
        summary = self._summaries.setdefault(mac, Summary(mac))
        if len(events) == self.max_events:
            summary.dropped += 1  # the append below pushes the oldest out
        events.append(event)
        self._received.setdefault(mac, deque(maxlen=self.max_events)).append(now)
        fold(summary, event, now)

    def events(self, mac: str) -> list[dict[str, Any]]:
        return list(self._events.get(mac, ()))

    def log(self, mac: str) -> list[dict[str, Any]]:
        """The events with ``received`` (server time) added, oldest first."""
        return [{**ev, "received": round(t, 3)}
                for ev, t in zip(self._events.get(mac, ()), self._received.get(mac, ()),
                                 strict=True)]

    def summary(self, mac: str) -> Summary | None:
        s = self._summaries.get(mac)
        return None if s is None else Summary(**asdict(s))

    def macs(self) -> list[str]:
        return sorted(self._summaries)
