"""``pyinit status``: the machines a provisioning server knows, as a terminal table.

Reads ``GET /api/machines`` (or ``/api/machines/{mac}`` for one machine's event log) from a
running ``pyinit serve``. Ages are computed against the server's clock (its ``now``), so a
client with a wrong clock still prints the right ages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import requests

from pyinit_server import lifecycle
from pyinit_server.machines import normalize_mac

DEFAULT_SERVER = "http://127.0.0.1:8080"
COLUMNS = ("MAC", "STATE", "PHASE", "PROGRESS", "RATE", "ETA", "RESULT", "AGE", "ERROR")
MAX_ERROR = 60
_SKIP = ("step", "status", "time", "uptime", "received")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_KEY_LINE = re.compile(r"^[a-z0-9@.-]+ [A-Za-z0-9+/]+={0,2}$")


def age(seconds: float | None) -> str:
    """``4s``, ``3m05s``, ``2h01m``, ``3d``; ``-`` when unknown. Pure."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.1f} MB/s" if value >= 1e5 else f"{value / 1e3:.1f} kB/s"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def row(m: dict[str, Any], now: float) -> tuple[str, ...]:
    phase = m.get("phase") or "-"
    if m.get("state"):
        phase = f"{phase} {m['state']}"
    pct = m.get("percent")
    error = m.get("error") or ""
    if not error and m.get("file_error"):
        error = f"file: {m['file_error']}"
    elif not error and m.get("file_warning"):
        error = f"file warning: {m['file_warning']}"
    last = m.get("last_seen")
    return (m["mac"], lifecycle_cell(m), phase, "-" if pct is None else f"{pct:.0f}%",
            rate(m.get("rate")), age(m.get("eta")) if m.get("eta") is not None else "-",
            m.get("result") or "-",
            age(None if last is None else now - last), _cut(error, MAX_ERROR) or "-")


def lifecycle_cell(m: dict[str, Any]) -> str:
    """The lifecycle state (docs/lifecycle.md) as the fleet table shows it: ``deployed``,
    ``deployed +redeploy`` when a redeploy is pending, ``-`` when the server has none. Pure."""
    lc = m.get("lifecycle")
    if not isinstance(lc, dict) or not lc.get("state"):
        return "-"
    cell = _cut(str(lc["state"]), 20)
    return f"{cell} +redeploy" if lc.get("pending") == "redeploy" else cell


def table(data: dict[str, Any]) -> str:
    """The ``/api/machines`` answer as an aligned table. Pure."""
    rows = [COLUMNS, *(row(m, data["now"]) for m in data["machines"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows) + "\n"


def _value(v: Any) -> str:
    """An event field for the terminal: plain when it is one printable word, else JSON (which
    escapes control characters: a machine cannot send escape sequences to the operator's
    terminal). A part with a ``count`` (the hardware inventory's PCI list) shows the count."""
    if isinstance(v, dict) and isinstance(v.get("count"), int):
        v = v["count"]
    if isinstance(v, str) and v and " " not in v and v.isprintable():
        return v
    return json.dumps(v, default=str)


def safe(text: Any) -> str:
    """A machine-supplied string for the terminal: control characters escaped, one line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def size(n: Any) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return "?"
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def hardware_lines(data: dict[str, Any]) -> list[str]:
    """The machine's inventory and LLDP neighbours (``hardware``/``lldp`` of its summary),
    for ``pyinit status MAC``; empty when it posted none. Pure."""
    lines = []
    hw = data.get("hardware")
    if isinstance(hw, dict):
        who = " ".join(safe(hw[k]) for k in ("vendor", "product") if hw.get(k)) or "no DMI"
        bios = " ".join(safe(hw[k]) for k in ("bios_vendor", "bios_version") if hw.get(k))
        if hw.get("bios_date"):
            bios += f" ({safe(hw['bios_date'])})"
        lines.append(f"hardware: {who}, serial {safe(hw.get('serial') or '-')}"
                     + (f", BIOS {bios}" if bios else ""))
        cpus = f"{hw.get('cpus') or '?'} CPUs"
        if hw.get("sockets"):
            cpus += f" ({hw['sockets']} sockets)"
        if hw.get("cpu_model"):
            cpus += f": {safe(hw['cpu_model'])}"
        memory = f"memory {size(hw.get('memory'))}"
        if hw.get("memory_physical"):
            memory += f" ({size(hw['memory_physical'])} installed)"
        counts = ", ".join(f"{hw.get(k) if hw.get(k) is not None else '?'} {label}"
                           for k, label in (("pci", "PCI devices"), ("disks", "disks"),
                                            ("nics", "NICs")))
        lines.append(f"          {cpus}; {memory}; {counts}")
        if hw.get("errors"):
            lines.append(f"          not collected: {', '.join(safe(e) for e in hw['errors'])}")
    lldp = data.get("lldp")
    if isinstance(lldp, dict) and lldp:
        width = max(len(safe(name)) for name in lldp)
        for i, (name, n) in enumerate(sorted(lldp.items())):
            head = "lldp:     " if i == 0 else "          "
            if not isinstance(n, dict) or not n.get("heard"):
                lines.append(f"{head}{safe(name):<{width}}  no neighbour heard")
                continue
            switch = safe(n.get("system_name") or f"chassis {n.get('chassis_id') or '?'}")
            port = f"port {safe(n.get('port_id') or '?')}"
            if n.get("port_description") and n["port_description"] != n.get("port_id"):
                port += f" ({safe(n['port_description'])})"
            vlan = f", vlan {n['vlan']}" if n.get("vlan") is not None else ""
            lines.append(f"{head}{safe(name):<{width}}  {switch} {port}{vlan}")
    return lines


def identity_lines(data: dict[str, Any]) -> list[str]:
    """The target's SSH host keys and machine-id from its last deployment (``identity`` of its
    summary), for ``pyinit status MAC``. Pure."""
    ident = data.get("identity")
    if not isinstance(ident, dict):
        return []
    lines = [f"ssh:      {safe(str(k.get('type', '?')).upper())} {safe(k.get('fingerprint'))}"
             if i == 0 else
             f"          {safe(str(k.get('type', '?')).upper())} {safe(k.get('fingerprint'))}"
             for i, k in enumerate(ident.get("host_keys") or [])]
    if ident.get("machine_id"):
        lines.append(f"machine-id: {safe(ident['machine_id'])}")
    return lines


def lifecycle_lines(data: dict[str, Any], now: float) -> list[str]:
    """The machine's lifecycle state, since when, the evidence and any warning. Pure."""
    lc = data.get("lifecycle")
    if not isinstance(lc, dict) or not lc.get("state"):
        return []
    since = lc.get("since")
    ago = age(now - since) if isinstance(since, int | float) else "-"
    line = f"state:    {safe(lc['state'])} for {ago} ({safe(lc.get('evidence') or '-')})"
    lines = [line]
    if lc.get("pending") == "redeploy":
        lines.append("          redeploy requested: its next boot provisions it again")
    elif lc.get("state") in ("deployed", "booted"):
        lines.append("          its PXE boots go to its local disk until `pyinit redeploy` or a "
                     "changed machine file")
    if data.get("lifecycle_warning"):
        lines.append(f"          warning: {safe(data['lifecycle_warning'])}")
    return lines


def known_hosts(data: dict[str, Any]) -> str:
    """``known_hosts`` lines for every machine whose last deployment reported host keys and
    whose machine file names a ``hostname``: the name is the server's, the keys the machine's
    (checked by the server when they arrived). Machines without a name get a comment. Pure."""
    lines = []
    for m in data.get("machines", []):
        ident = m.get("identity")
        if not isinstance(ident, dict) or not ident.get("host_keys"):
            continue
        name = m.get("hostname")
        if not isinstance(name, str) or not _HOSTNAME.match(name):
            lines.append(f"# {safe(m.get('mac'))}: host keys reported, but its machine file "
                         "names no hostname")
            continue
        lines += [f"{name} {k['public']}" for k in ident["host_keys"]
                  if isinstance(k, dict) and isinstance(k.get("public"), str)
                  and _KEY_LINE.match(k["public"])]
    return "".join(line + "\n" for line in lines)


def event_log(data: dict[str, Any], now: float) -> str:
    """One machine's summary line and its events, oldest first, timed from the first. Pure."""
    head = table({"now": now, "machines": [data]})
    lines = [head.rstrip("\n")]
    if data.get("file"):
        lines.append(f"file: {data['file']}")
    lines += lifecycle_lines(data, now)
    lines += hardware_lines(data)
    lines += identity_lines(data)
    events = data.get("log") or []
    if not events:
        lines.append("no events")
        return "\n".join(lines) + "\n"
    lines.append("")
    first = events[0].get("received", now)
    for ev in events:
        fields = " ".join(f"{k}={_value(v)}" for k, v in ev.items() if k not in _SKIP)
        when = f"+{ev.get('received', first) - first:.1f}s"
        lines.append(f"{when:>9}  {ev.get('step', '?'):<10} {ev.get('status', '?'):<9} "
                     f"{fields}".rstrip())
    return "\n".join(lines) + "\n"


def register(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show what the machines of a pyinit serve are doing",
        description="Print a table of every machine a running `pyinit serve` knows (from its "
                    "machine files and the events the machines posted): phase, progress, "
                    "rate, ETA, result, age of the last event and the last error. With MAC, "
                    "that machine's hardware (DMI, CPUs, memory, PCI; each NIC's LLDP "
                    "switch, port and VLAN), its SSH host keys and its event log. "
                    "--known-hosts prints known_hosts lines for the deployed machines.")
    p.add_argument("--server", default=os.environ.get("PYINIT_SERVER", DEFAULT_SERVER),
                   help="the server's URL (default: $PYINIT_SERVER or %(default)s)")
    p.add_argument("--json", action="store_true", help="print the server's JSON instead")
    p.add_argument("--state", choices=("new", "running", "ok", "failed"), default=None,
                   help="only machines in this state (filtered by the server)")
    p.add_argument("--lifecycle", choices=lifecycle.FILTERS,
                   default=None,
                   help="only machines in this lifecycle state (docs/lifecycle.md), or "
                        "'unconfirmed': deployed over 15 min ago, no first boot confirmed")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N machines (default: all, fetched a page at a time)")
    p.add_argument("--known-hosts", action="store_true",
                   help="print known_hosts lines (machine file's hostname, the SSH host keys "
                        "the machine reported at its last deployment) instead of the table")
    p.add_argument("--disks", action="store_true",
                   help="with MAC: the disks of its last inventory (an inspect action's, or "
                        "any boot's), each with the rootDeviceHints that name it alone")
    p.add_argument("mac", nargs="?",
                   help="one machine: its hardware, LLDP neighbours and event log")
    p.set_defaults(func=run)
    return p


def register_redeploy(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "redeploy", help="provision a deployed machine again at its next boot",
        description="Ask a running `pyinit serve` to provision MAC again: after a deployment "
                    "its PXE boots go to its local disk (deploy once, docs/lifecycle.md) until "
                    "this, or a change of its machine file. Refused while it is deploying. "
                    "Needs the operator token.")
    p.add_argument("--server", default=os.environ.get("PYINIT_SERVER", DEFAULT_SERVER),
                   help="the server's URL (default: $PYINIT_SERVER or %(default)s)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="the operator token (default: $PYINIT_TOKEN, else "
                        "ROOT/.pyinit/operator-token of a server on this machine: give it)")
    p.add_argument("mac")
    p.set_defaults(func=redeploy)
    return p


def redeploy(args: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    mac = normalize_mac(args.mac)
    if mac is None:
        print(f"pyinit redeploy: not a MAC address: {args.mac!r}", file=sys.stderr)
        return 2
    token = os.environ.get("PYINIT_TOKEN")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(f"pyinit redeploy: --token-file {args.token_file}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    base = args.server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if _call("redeploy", "POST", f"{base}/api/machines/{mac}/redeploy", base,
             headers=headers, timeout=30) is None:
        return 1
    out.write(f"{mac}: redeploy requested; its next boot provisions it again\n")
    return 0


def run(args: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    base = args.server.rstrip("/")
    url = f"{base}/api/machines"
    if args.mac:
        mac = normalize_mac(args.mac)
        if mac is None:
            print(f"pyinit status: not a MAC address: {args.mac!r}", file=sys.stderr)
            return 2
        url += f"/{mac}"
    params: dict[str, Any] = {}
    if not args.mac and getattr(args, "state", None):
        params["state"] = args.state
    if not args.mac and getattr(args, "lifecycle", None):
        params["lifecycle"] = args.lifecycle
    limit = getattr(args, "limit", None)
    data: dict[str, Any] | None = None
    while True:  # /api/machines is paged: fetch pages until the total (or --limit) is reached
        if not args.mac:
            params["offset"] = len(data["machines"]) if data else 0
        got = _call("status", "GET", url, base, params=params)
        if got is None:
            return 1
        if data is None:
            data = got
        else:
            data["machines"].extend(got["machines"])
        if args.mac or not got.get("machines") or \
                len(data["machines"]) >= min(got.get("total", 0), limit or 1 << 62):
            break
    if limit is not None and not args.mac:
        data["machines"] = data["machines"][:limit]
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
    elif getattr(args, "known_hosts", False):
        out.write(known_hosts({"machines": [data]} if args.mac else data))
    elif args.mac and getattr(args, "disks", False):
        text = disk_hints(data)
        if text is None:
            print(f"pyinit status: {args.mac}: no disk inventory on record (an inspect "
                  "action, or any provisioning boot, posts one)", file=sys.stderr)
            return 1
        out.write(text)
    elif args.mac:
        out.write(event_log(data, data["now"]))
    else:
        out.write(table(data))
    return 0


def disk_hints(data: dict[str, Any]) -> str | None:
    """The disks of the machine's last ``disks inventory`` event, one per line, each with the
    rootDeviceHints that name it alone (:func:`pyinit.disks.hints.suggest`); None without one.
    Every string from the machine is escaped. Pure."""
    from pyinit.disks.hints import suggest
    from pyinit.disks.inventory import human_size

    last = None
    for ev in data.get("log") or []:
        if isinstance(ev, dict) and ev.get("step") == "disks" and \
                ev.get("status") == "inventory" and isinstance(ev.get("disks"), list):
            last = ev
    if last is None:
        return None
    disks = [d for d in last["disks"] if isinstance(d, dict)]
    when = last.get("received") or last.get("time")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) + " UTC" \
        if isinstance(when, (int, float)) else "unknown time"
    lines = [f"disks of {safe(str(data.get('mac', '?')))}, inventory of {stamp}:"]
    for disk, hint in zip(disks, suggest(disks), strict=True):
        size = disk.get("size")
        what = ", ".join(safe(str(disk[k])) for k in ("transport", "model", "serial", "wwn",
                                                        "by_path") if disk.get(k))
        lines.append(f"  {safe(str(disk.get('name', '?')))}  "
                     f"{human_size(size) if isinstance(size, int) else '?'}  {what}")
        lines.append("      rootDeviceHints "
                     + (json.dumps(hint) if hint else "(nothing names it alone: use size, "
                                                       "model, rotational together)"))
    return "\n".join(lines) + "\n"


def _call(command: str, method: str, url: str, base: str, *, timeout: float = 10,
          **kwargs: Any) -> dict[str, Any] | None:
    """One JSON answer of the server to ``pyinit <command>``, or None after printing one line
    saying why not (unreachable, an HTTP error with the server's own ``error``, not JSON)."""
    try:
        resp = requests.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        print(f"pyinit {command}: cannot reach {base}: {type(exc).__name__}", file=sys.stderr)
        return None
    if resp.status_code != 200:
        try:
            detail = resp.json()["error"]
        except (ValueError, KeyError, TypeError):
            detail = resp.reason
        print(f"pyinit {command}: {url}: HTTP {resp.status_code}: {safe(detail)}",
              file=sys.stderr)
        return None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        print(f"pyinit {command}: {url}: not a JSON object", file=sys.stderr)
        return None
    return data
