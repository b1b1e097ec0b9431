"""The server's view of a deployed machine's identity (issue #15): the ``configure identity``
event folded into its summary, shown by ``pyinit status MAC``, and ``known_hosts`` lines that
take the name from the server's machine file and only well-formed keys from the machine."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import requests

from pyinit_build.cli import build_parser
from pyinit_server.status import MAX_HOST_KEYS, Summary, fold
from pyinit_server.status_cli import known_hosts
from tests.serverkit import ObservedServer

MAC = "52:54:00:5e:15:0a"


def key(kind: str = "ssh-ed25519") -> dict[str, str]:
    blob = kind.encode() + os.urandom(32)
    fp = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return {"type": kind.removeprefix("ssh-"), "fingerprint": fp,
            "public": f"{kind} {base64.b64encode(blob).decode()} root@node-a"}


def identity_event(*keys: dict[str, Any], machine_id: Any = "a" * 32) -> dict[str, Any]:
    return {"step": "configure", "status": "identity", "host_keys": list(keys),
            "machine_id": machine_id}


def test_fold_keeps_checked_keys_across_a_new_run() -> None:
    s = Summary(MAC)
    good, rsa = key(), key("ssh-rsa")
    fold(s, identity_event(good, rsa), 1.0)
    assert s.identity is not None and s.identity["machine_id"] == "a" * 32
    assert [k["fingerprint"] for k in s.identity["host_keys"]] == [good["fingerprint"],
                                                                   rsa["fingerprint"]]
    assert s.identity["host_keys"][0]["public"] == good["public"].rsplit(" ", 1)[0]  # no comment
    fold(s, {"step": "result", "status": "ok"}, 2.0)
    fold(s, {"step": "rootfs", "status": "start"}, 3.0)  # the machine boots again
    assert s.result is None and s.identity is not None  # the deployed system's keys stay


def test_fold_drops_what_could_smuggle_a_line_into_known_hosts() -> None:
    hostile = [
        {**key(), "public": "@cert-authority * " + key()["public"]},    # a marker
        {**key(), "public": 'command="sh" ' + key()["public"]},         # options
        {**key(), "public": key()["public"] + "\nevil ssh-ed25519 AAAA"},  # a second line
        {**key(), "fingerprint": "MD5:00:11"},
        {**key(), "public": "ssh-ed25519 " + "A" * 3000},                # too long
        "ssh-ed25519 AAAA",                                              # not an object
    ]
    s = Summary(MAC)
    fold(s, identity_event(*hostile, machine_id="../../etc"), 1.0)
    assert s.identity == {"host_keys": [], "machine_id": None}
    fold(s, identity_event(*[key() for _ in range(MAX_HOST_KEYS + 5)]), 2.0)
    assert s.identity is not None and len(s.identity["host_keys"]) == MAX_HOST_KEYS


def test_known_hosts_names_machines_by_the_servers_file() -> None:
    a, b = key(), key("ssh-rsa")
    data = {"machines": [
        {"mac": MAC, "hostname": "node-a", "identity": {"host_keys": [
            {"public": a["public"].rsplit(" ", 1)[0]}, {"public": b["public"].rsplit(" ", 1)[0]}]}},
        {"mac": "52:54:00:5e:15:0b", "hostname": None,
         "identity": {"host_keys": [{"public": a["public"].rsplit(" ", 1)[0]}]}},
        {"mac": "52:54:00:5e:15:0c", "hostname": "x y", "identity": {"host_keys": [
            {"public": a["public"].rsplit(" ", 1)[0]}]}},
        {"mac": "52:54:00:5e:15:0d", "hostname": "node-d", "identity": None},
    ]}
    lines = known_hosts(data).splitlines()
    assert lines == [
        f"node-a {a['public'].rsplit(' ', 1)[0]}", f"node-a {b['public'].rsplit(' ', 1)[0]}",
        "# 52:54:00:5e:15:0b: host keys reported, but its machine file names no hostname",
        "# 52:54:00:5e:15:0c: host keys reported, but its machine file names no hostname"]


def test_status_shows_the_keys_and_prints_known_hosts(tmp_path: Path) -> None:
    (tmp_path / "machines").mkdir()
    (tmp_path / "machines" / (MAC.replace(":", "-") + ".json")).write_text(json.dumps(
        {"action": "writeImage", "sourceImage": "http://10.0.2.2/i.img",
         "destinationDevice": "/dev/vda", "hostname": "node-a"}))
    ed = key()
    with ObservedServer(tmp_path, open_writes=True) as srv:
        assert requests.post(f"{srv.url}/events/{MAC}", json=identity_event(ed),
                             timeout=10).status_code == 204
        out = io.StringIO()
        args = build_parser().parse_args(["status", "--server", srv.url, MAC])
        assert args.func(args, out=out) == 0
        hosts = io.StringIO()
        args = build_parser().parse_args(["status", "--server", srv.url, "--known-hosts"])
        assert args.func(args, out=hosts) == 0
    assert f"ssh:      ED25519 {ed['fingerprint']}" in out.getvalue().splitlines()
    assert f"machine-id: {'a' * 32}" in out.getvalue().splitlines()
    assert hosts.getvalue() == f"node-a {ed['public'].rsplit(' ', 1)[0]}\n"
