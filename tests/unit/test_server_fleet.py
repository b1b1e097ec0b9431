"""The fleet side of the provisioning server: YAML/JSON machine files, iPXE, status, tokens."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pyinit_build.cli import build_parser
from pyinit_server import cli as serve_cli
from pyinit_server.machines import Machine, MachineError, MachineStore, file_key, parse_machine
from pyinit_server.status import History, Summary, fold
from pyinit_server.status_cli import age, lifecycle_cell
from tests.serverkit import ObservedServer

MAC = "52-54-00-12-34-56"
OTHER = "52-54-00-00-00-02"
WRITE = {"action": "writeImage", "sourceImage": "images/disk.img", "destinationDevice": "/dev/vda"}
YAML = """\
# the rack's first machine
action: writeImage
sourceImage: images/disk.img
destinationDevice: /dev/vda
pxe:
  cmdline: pyinit.debug pyinit.on_failure=reboot
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "machines").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "boot").mkdir()
    (tmp_path / "machines" / f"{MAC}.yaml").write_text(YAML)
    (tmp_path / "machines" / "52:54:00:00:00:02.JSON").write_text(json.dumps(WRITE))
    (tmp_path / "boot" / "vmlinuz").write_bytes(b"K" * 1000)
    (tmp_path / "boot" / "initramfs.cpio.zst").write_bytes(bytes(range(256)) * 10)
    return tmp_path


@pytest.fixture
def server(root: Path) -> Iterator[ObservedServer]:
    """Writes open (asked for by name): these tests post events to see the status; tokens
    are tested below and in test_server_auth.py."""
    with ObservedServer(root, open_writes=True) as srv:
        yield srv


def get(srv: ObservedServer, path: str, **kw: object) -> requests.Response:
    return requests.get(srv.url + path, timeout=10, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# machine files


@pytest.mark.parametrize(("name", "key"), [
    ("52-54-00-12-34-56.yaml", MAC), ("52:54:00:12:34:56.yml", MAC),
    ("52-54-00-12-34-56".upper() + ".JSON", MAC), ("default.yaml", "default"),
    ("Default.json", "default"), ("52-54-00-12-34-56.txt", None), (".52-54-00-12-34-56.yaml", None),
    ("52-54-00-12-34-56.yaml.swp", None), ("README.md", None), ("node1.yaml", None),
    ("52-54-00-12-34.yaml", None),
])
def test_file_key(name: str, key: str | None) -> None:
    assert file_key(name) == key


@pytest.mark.parametrize(("rel", "text", "message"), [
    ("machines/m.yaml", "action: writeImage\nsourceImage: x\n  bad: indent: here\n",
     "machines/m.yaml:3: mapping values are not allowed here"),
    ("machines/m.yaml", "action: [writeImage\n", "machines/m.yaml:2: expected ',' or ']', but "
                                                  "got '<stream end>'"),
    ("machines/m.json", '{"action": "writeImage",\n "x": }', "machines/m.json:2: Expecting value"),
    ("machines/m.yaml", "", "machines/m.yaml: the file is empty, expected a mapping of action "
                            "fields"),
    ("machines/m.json", "[1, 2]", "machines/m.json: the file is a list, expected a mapping of "
                                  "action fields"),
    ("machines/m.yaml", "action: writeImage\npxe: [1]\n",
     "machines/m.yaml: pxe: expected a mapping, got list"),
    ("machines/m.yaml", "action: writeImage\npxe: {kernel: x}\n",
     "machines/m.yaml: pxe: unknown key 'kernel' (known: cmdline)"),
    ("machines/m.yaml", "action: writeImage\npxe: {cmdline: {a: 1}}\n",
     "machines/m.yaml: pxe.cmdline: expected a string or a list of strings"),
    ("machines/m.json", b"\xff\xfe", "machines/m.json: not UTF-8: invalid start byte"),
])
def test_parse_machine_errors(rel: str, text: str | bytes, message: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(MachineError) as info:
        parse_machine(data, rel=rel, key=MAC, path=Path(rel))
    assert info.value.message == message


def test_parse_machine_yaml_strips_pxe_and_validates() -> None:
    m = parse_machine(YAML.encode(), rel="machines/m.yaml", key=MAC, path=Path("m.yaml"))
    assert m.action == WRITE
    assert m.kernel_args() == ["pyinit.debug", "pyinit.on_failure=reboot"]
    assert m.warning is None
    assert json.loads(m.action_json()) == WRITE
    listed = parse_machine(b"action: readImage\npxe: {cmdline: [a=1, b]}\n", rel="m.yaml",
                           key=MAC, path=Path("m.yaml"))
    assert listed.kernel_args() == ["a=1", "b"]
    assert listed.warning == "m.yaml: sourceDevice: required for readImage (or rootDeviceHints)"


def test_json_file_is_served_byte_for_byte() -> None:
    text = b'{ "action":"writeImage" }\n'
    m = parse_machine(text, rel="m.json", key=MAC, path=Path("m.json"))
    assert m.action_json() == text
    m = parse_machine(b'{"action": "writeImage", "pxe": {"cmdline": "x"}}', rel="m.json",
                      key=MAC, path=Path("m.json"))
    assert json.loads(m.action_json()) == {"action": "writeImage"}  # server keys stripped


@pytest.mark.parametrize("path", [f"/{MAC}", f"/{MAC}.bty", "/52:54:00:12:34:56.bty"])
def test_yaml_machine_served_as_json(server: ObservedServer, path: str) -> None:
    resp = get(server, path)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == WRITE
    assert "X-Pyinit-Warning" not in resp.headers


def test_colon_and_upper_case_file_name(server: ObservedServer) -> None:
    assert get(server, f"/{OTHER}.bty").json() == WRITE


def test_malformed_yaml_reported_with_file_and_line_rest_served(
        root: Path, server: ObservedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinit_server")
    bad = "52-54-00-00-00-01"
    (root / "machines" / f"{bad}.yaml").write_text("action: writeImage\nsourceImage: x\n"
                                                   "  oops: here\n")
    resp = get(server, f"/{bad}.bty")
    assert resp.status_code == 500
    message = f"machines/{bad}.yaml:3: mapping values are not allowed here"
    assert resp.json() == {"error": message, "status": 500}
    assert any(message in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert get(server, f"/{MAC}.bty").json() == WRITE  # every other machine is still served
    assert get(server, f"/{OTHER}").json() == WRITE
    assert get(server, "/52-54-00-99-99-99").status_code == 404  # no default


def test_broken_default_only_affects_unknown_macs(root: Path, server: ObservedServer) -> None:
    (root / "machines" / "default.json").write_text('{"action": ')
    resp = get(server, "/52-54-00-99-99-99")
    assert (resp.status_code, resp.json()["error"]) == (
        500, "machines/default.json:1: Expecting value")
    assert get(server, f"/{MAC}").json() == WRITE


def test_default_yaml(root: Path, server: ObservedServer) -> None:
    (root / "machines" / "default.yml").write_text("action: readImage\nsourceDevice: /dev/sda\n"
                                                   "desintationAddress: http://h/image\n")
    assert get(server, "/aa-bb-cc-dd-ee-ff").json()["action"] == "readImage"


@pytest.mark.parametrize("second", [f"{MAC}.json", "52:54:00:12:34:56.yml", f"{MAC}.YML"])
def test_two_files_for_one_mac(root: Path, server: ObservedServer, second: str) -> None:
    (root / "machines" / second).write_text(json.dumps(WRITE))
    resp = get(server, f"/{MAC}")
    assert resp.status_code == 500
    names = sorted([f"{MAC}.yaml", second])
    assert resp.json()["error"] == (f"machines/{names[0]} and machines/{names[1]}: two files "
                                    f"for {MAC}: remove all but one")
    assert get(server, f"/{OTHER}").status_code == 200


def test_invalid_action_is_served_with_a_warning(root: Path, server: ObservedServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinit_server")
    (root / "machines" / f"{MAC}.yaml").write_text("action: writeImage\nsourceImage: x\n"
                                                   "destinationDevice: /dev/vda\nbogus: 1\n")
    resp = get(server, f"/{MAC}")
    assert resp.status_code == 200
    assert resp.json()["bogus"] == 1
    warning = f"machines/{MAC}.yaml: bogus: unknown field"
    assert resp.headers["X-Pyinit-Warning"] == warning
    assert sum(warning in r.getMessage() for r in caplog.records) == 1
    get(server, f"/{MAC}")  # cached: warned once per change
    assert sum(warning in r.getMessage() for r in caplog.records) == 1


def test_reloaded_on_change(root: Path, server: ObservedServer) -> None:
    path = root / "machines" / f"{MAC}.yaml"
    assert get(server, f"/{MAC}").json()["destinationDevice"] == "/dev/vda"
    path.write_text(YAML.replace("/dev/vda", "/dev/sdb1"))  # other size: seen at once
    assert get(server, f"/{MAC}").json()["destinationDevice"] == "/dev/sdb1"
    tmp = path.with_name(".tmp")
    tmp.write_text(YAML.replace("/dev/vda", "/dev/sdc"))  # same size, new inode (editor, mv)
    os.replace(tmp, path)
    assert get(server, f"/{MAC}").json()["destinationDevice"] == "/dev/sdc"
    path.unlink()
    assert get(server, f"/{MAC}").status_code == 404
    (root / "machines" / "52:54:00:12:34:56.json").write_text('{"action": "readImage"}')
    assert get(server, f"/{MAC}").json() == {"action": "readImage"}


def test_store_parses_once_per_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{MAC}.yaml").write_text(YAML)
    store = MachineStore(tmp_path)
    calls: list[str] = []
    real = parse_machine

    def counting(text: bytes, **kw: object) -> Machine:
        calls.append(str(kw["rel"]))
        return real(text, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("pyinit_server.machines.parse_machine", counting)
    for _ in range(3):
        m = store.lookup(MAC)
        assert m is not None and m.action == WRITE
    assert calls == [f"{tmp_path.name}/{MAC}.yaml"]
    assert store.known() == [MAC]
    assert MachineStore(tmp_path / "missing").lookup(MAC) is None


def test_unknown_mac_404_names_the_files(server: ObservedServer) -> None:
    resp = get(server, "/52-54-00-99-99-99.bty")
    assert resp.status_code == 404
    assert "machines/<mac>.yaml|.yml|.json" in resp.json()["error"]


# --------------------------------------------------------------------------------------------
# iPXE


def test_machine_ipxe_script(server: ObservedServer) -> None:
    resp = get(server, f"/{MAC}.ipxe")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    base = server.url
    assert resp.text == (
        "#!ipxe\n"
        f"# pyinit: {MAC} (machines/{MAC}.yaml)\n"
        f"kernel {base}/boot/vmlinuz console=ttyS0,115200 console=tty0 BOOTYURL={base} "
        f"BOOTIF=01-{MAC} pyinit.debug pyinit.on_failure=reboot\n"
        f"initrd {base}/boot/initramfs.cpio.zst\n"
        "boot\n")


def test_ipxe_base_url_from_the_host_header(server: ObservedServer) -> None:
    """QEMU's slirp guest reaches the host as 10.0.2.2: the script must say so."""
    text = get(server, "/52:54:00:00:00:02.ipxe", headers={"Host": "10.0.2.2:8080"}).text
    assert text.splitlines()[2] == (
        "kernel http://10.0.2.2:8080/boot/vmlinuz console=ttyS0,115200 console=tty0 "
        f"BOOTYURL=http://10.0.2.2:8080 BOOTIF=01-{OTHER}")
    assert text.splitlines()[3] == "initrd http://10.0.2.2:8080/boot/initramfs.cpio.zst"
    for bad in ("a b", "x/y", "h:1:2", "h\"", "", "[zz]"):
        text = get(server, f"/{OTHER}.ipxe", headers={"Host": bad}).text
        assert f"BOOTYURL={server.url} " in text  # not a plain host[:port]: the server's own


def test_ipxe_public_url_and_kernel_args(root: Path) -> None:
    with ObservedServer(root, public_url="https://boot.example.com/pxe/",
                            kernel_args="console=ttyS1 quiet") as srv:
        text = get(srv, f"/{OTHER}.ipxe", headers={"Host": "10.0.2.2:8080"}).text
        # secure by default: the script carries the machine's own token
        assert text == (
            "#!ipxe\n"
            f"# pyinit: {OTHER} (machines/52:54:00:00:00:02.JSON)\n"
            "kernel https://boot.example.com/pxe/boot/vmlinuz console=ttyS1 quiet "
            f"BOOTYURL=https://boot.example.com/pxe BOOTIF=01-{OTHER} "
            f"pyinit.token={srv.machine_token(OTHER)}\n"
            "initrd https://boot.example.com/pxe/boot/initramfs.cpio.zst\n"
            "boot\n")
        assert get(srv, "/boot.ipxe").text.endswith(
            "chain https://boot.example.com/pxe/${netX/mac:hexhyp}.ipxe\n")


def test_chain_script(server: ObservedServer) -> None:
    resp = get(server, "/boot.ipxe", headers={"Host": "10.0.2.2:8080"})
    assert resp.status_code == 200
    assert resp.text == (
        "#!ipxe\n"
        "# pyinit: chain to this machine's script, by the MAC of the NIC iPXE booted from\n"
        "chain http://10.0.2.2:8080/${netX/mac:hexhyp}.ipxe\n")


def test_ipxe_default_unknown_and_malformed(root: Path, server: ObservedServer) -> None:
    assert get(server, "/52-54-00-99-99-99.ipxe").status_code == 404
    (root / "machines" / "default.yaml").write_text("action: writeImage\n")
    text = get(server, "/52:54:00:99:99:AA.ipxe").text
    assert "# pyinit: 52-54-00-99-99-aa (machines/default.yaml)\n" in text
    assert "BOOTIF=01-52-54-00-99-99-aa" in text
    (root / "machines" / "default.yaml").write_text("action: [\n")
    resp = get(server, "/52-54-00-99-99-99.ipxe")
    assert resp.status_code == 500
    assert resp.json()["error"].startswith("machines/default.yaml:2: ")
    assert get(server, "/nope.ipxe").status_code == 400
    assert requests.head(f"{server.url}/{MAC}.ipxe", timeout=10).content == b""


def test_boot_files_with_range_and_etag(root: Path, server: ObservedServer) -> None:
    data = (root / "boot" / "initramfs.cpio.zst").read_bytes()
    full = get(server, "/boot/initramfs.cpio.zst")
    assert (full.status_code, full.content) == (200, data)
    part = get(server, "/boot/initramfs.cpio.zst", headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, data[10:20])
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    etag = full.headers["ETag"]
    assert get(server, "/boot/vmlinuz", headers={"If-None-Match": etag}).status_code == 200
    assert get(server, "/boot/initramfs.cpio.zst",
               headers={"If-None-Match": etag}).status_code == 304
    assert get(server, "/boot/missing").status_code == 404
    assert get(server, "/boot/missing").json()["error"] == "no such file: boot/missing"
    assert get(server, "/boot/%2e%2e/machines/52-54-00-12-34-56.yaml").status_code == 403


def test_boot_dir_elsewhere(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("out")
    (out / "vmlinuz").write_bytes(b"kernel")
    with ObservedServer(root, boot_dir=out) as srv:
        assert get(srv, "/boot/vmlinuz").content == b"kernel"
        assert get(srv, "/boot/initramfs.cpio.zst").status_code == 404


# --------------------------------------------------------------------------------------------
# status


def post(srv: ObservedServer, mac: str, **event: object) -> None:
    resp = requests.post(f"{srv.url}/events/{mac}", json=event, timeout=10)
    assert resp.status_code == 204, resp.text


def test_fold_summary() -> None:
    s = Summary(MAC)
    fold(s, {"step": "action", "status": "ok"}, 100.0)
    assert (s.phase, s.state, s.first_seen, s.last_seen, s.events) == ("action", "ok", 100, 100, 1)
    fold(s, {"step": "provision", "status": "progress", "percent": 48.0, "rate": 230e6,
             "eta": 2.5}, 101.0)
    assert (s.phase, s.state, s.percent, s.rate, s.eta) == ("provision", "progress", 48, 230e6,
                                                            2.5)
    fold(s, {"step": "provision", "status": "failed", "error": "disk gone"}, 102.0)
    assert (s.state, s.error, s.percent) == ("failed", "disk gone", 48)
    fold(s, {"step": "result", "status": "failed", "error": "provision: disk gone"}, 103.0)
    assert (s.phase, s.result, s.error, s.last_seen) == ("provision", "failed",
                                                         "provision: disk gone", 103)
    fold(s, {"step": "action", "status": "ok"}, 200.0)  # the machine rebooted: a new run
    assert (s.phase, s.result, s.error, s.percent, s.events, s.first_seen) == (
        "action", None, None, None, 5, 100)
    fold(s, {"step": "capture", "status": "progress", "bytes_read": 25, "total": 200,
             "rate": 5}, 201.0)
    assert (s.percent, s.rate, s.eta) == (12.5, 5, None)
    fold(s, {"step": "result", "status": "ok"}, 202.0)
    assert (s.result, s.percent) == ("ok", 100)


def test_history_is_bounded() -> None:
    h = History(max_events=3)
    for i in range(5):
        h.add(MAC, {"step": "provision", "status": "progress", "percent": i}, now=float(i))
    assert [e["percent"] for e in h.events(MAC)] == [2, 3, 4]
    assert [e["received"] for e in h.log(MAC)] == [2.0, 3.0, 4.0]
    summary = h.summary(MAC)
    assert summary is not None and summary.events == 5 and summary.percent == 4
    assert h.summary(OTHER) is None and h.macs() == [MAC]


def test_api_machines(root: Path, server: ObservedServer) -> None:
    (root / "machines" / "52-54-00-00-00-0b.yaml").write_text("x: [\n")
    post(server, MAC, step="action", status="ok", elapsed=0.2)
    post(server, MAC, step="provision", status="progress", percent=48.2, rate=230e6, eta=3)
    post(server, "52:54:00:AA:BB:CC", step="result", status="failed", error="boom")
    data = get(server, "/api/machines").json()
    assert abs(data["now"] - time.time()) < 5
    by_mac = {m["mac"]: m for m in data["machines"]}
    assert sorted(by_mac) == ["52-54-00-00-00-02", "52-54-00-00-00-0b", MAC, "52-54-00-aa-bb-cc"]
    m = by_mac[MAC]
    assert {k: m[k] for k in ("phase", "state", "percent", "rate", "eta", "error", "result",
                              "events", "file", "file_error", "file_warning")} == {
        "phase": "provision", "state": "progress", "percent": 48.2, "rate": 230e6, "eta": 3,
        "error": None, "result": None, "events": 2, "file": f"machines/{MAC}.yaml",
        "file_error": None, "file_warning": None}
    assert by_mac["52-54-00-aa-bb-cc"]["result"] == "failed"
    assert by_mac["52-54-00-aa-bb-cc"]["file"] is None  # no file, no default
    assert by_mac["52-54-00-00-00-0b"]["file_error"] == (
        "machines/52-54-00-00-00-0b.yaml:2: expected the node content, but found '<stream end>'")
    assert by_mac["52-54-00-00-00-02"]["events"] == 0

    one = get(server, "/api/machines/52:54:00:12:34:56").json()
    assert one["phase"] == "provision"
    assert [(e["step"], e["status"]) for e in one["log"]] == [("action", "ok"),
                                                              ("provision", "progress")]
    assert all(abs(e["received"] - time.time()) < 5 for e in one["log"])
    assert get(server, f"/api/machines/{OTHER}").json()["log"] == []  # a file, no events
    resp = get(server, "/api/machines/52-54-00-99-99-99")
    assert resp.status_code == 404
    assert "52-54-00-99-99-99" in resp.json()["error"]
    assert get(server, "/api/machines/nope").status_code == 400


def test_status_cli_table(root: Path, server: ObservedServer) -> None:
    (root / "machines" / "default.yaml").write_text("action: writeImage\n")
    post(server, MAC, step="action", status="ok")
    post(server, MAC, step="provision", status="progress", percent=48.2, rate=230e6, eta=125)
    post(server, "52:54:00:AA:BB:CC", step="provision", status="failed",
         error="write /dev/vda: No space left on device")
    post(server, "52:54:00:AA:BB:CC", step="result", status="failed",
         error="provision: write /dev/vda: No space left on device " + "x" * 40)
    out = io.StringIO()
    args = build_parser().parse_args(["status", "--server", server.url + "/"])
    assert args.func(args, out=out) == 0
    assert out.getvalue() == (
        "MAC                STATE   PHASE               PROGRESS  RATE        ETA    RESULT  AGE  "
        "ERROR\n"
        "52-54-00-00-00-02  -       -                   -         -           -      -       -    "
        "-\n"
        "52-54-00-12-34-56  -       provision progress  48%       230.0 MB/s  2m05s  -       0s   "
        "-\n"
        "52-54-00-aa-bb-cc  failed  provision failed    -         -           -      failed  0s   "
        "provision: write /dev/vda: No space left on device xxxxxxxx…\n"
        "default            -       -                   -         -           -      -       -    "
        "file warning: machines/default.yaml: sourceImage: required …\n")


def test_status_cli_state_column() -> None:
    """The fleet table's STATE: the lifecycle state, a pending redeploy marked, else ``-``."""
    assert lifecycle_cell({"lifecycle": {"state": "booted", "since": 1.0}}) == "booted"
    assert lifecycle_cell({"lifecycle": {"state": "deployed", "pending": "redeploy"}}) == (
        "deployed +redeploy")
    assert lifecycle_cell({"lifecycle": None}) == "-"
    assert lifecycle_cell({}) == "-"


def test_api_machines_pages_and_filters_on_the_server(root: Path,
                                                      server: ObservedServer) -> None:
    for i in range(30):
        (root / "machines" / f"52-54-00-00-01-{i:02x}.json").write_text(json.dumps(WRITE))
    post(server, "52-54-00-00-01-03", step="result", status="ok")
    post(server, "52-54-00-00-01-04", step="result", status="failed", error="x")
    post(server, "52-54-00-00-01-05", step="provision", status="start")
    every = get(server, "/api/machines").json()
    assert every["total"] == 32  # 30 + the fixture's two files
    assert every["counts"] == {"new": 29, "running": 1, "ok": 1, "failed": 1}
    page = get(server, "/api/machines?offset=10&limit=5").json()
    assert [m["mac"] for m in page["machines"]] == [m["mac"] for m in every["machines"][10:15]]
    assert (page["total"], page["offset"], page["limit"]) == (32, 10, 5)
    ok = get(server, "/api/machines?state=ok").json()
    assert [m["mac"] for m in ok["machines"]] == ["52-54-00-00-01-03"] and ok["total"] == 1
    assert ok["counts"] == every["counts"]  # the counts are the fleet's, not the filter's
    found = get(server, "/api/machines?q=52:54:00:00:01:1").json()
    assert [m["mac"] for m in found["machines"]] == [f"52-54-00-00-01-1{i:x}" for i in range(14)]
    for bad, message in (("limit=-1", "limit: not a number: '-1'"),
                         ("offset=x", "offset: not a number: 'x'"),
                         ("state=gone", "state: one of new, running, ok, failed, not 'gone'")):
        resp = get(server, f"/api/machines?{bad}")
        assert (resp.status_code, resp.json()["error"]) == (400, message)


FETCHED = {"step": "action", "status": "fetched", "action": "writeImage", "dry_run": False}


def test_api_machines_carries_and_filters_the_lifecycle(root: Path,
                                                       server: ObservedServer) -> None:
    """What the dashboard's State column reads (docs/dashboard.md): each machine's lifecycle
    (state, since, evidence, previous, pending) and its warning; the whole fleet's counts by
    lifecycle state, and the server's filter by one (``lifecycle=``), ``unconfirmed`` too."""
    now = time.time()
    late, booted, failed = "52-54-00-00-02-01", "52-54-00-00-02-02", "52-54-00-00-02-03"
    store = server.store
    assert store is not None
    # deployed 20 minutes ago (the server's receive time), never confirmed since
    store.add(late, FETCHED, now - 1260)
    store.add(late, {"step": "result", "status": "ok", "handoff": "reboot"}, now - 1200)
    for ev in (FETCHED, {"step": "result", "status": "ok", "handoff": "kexec"},
               {"step": "firstboot", "status": "booted", "kernel": "6.1.0-57-amd64"}):
        post(server, booted, **ev)
    post(server, failed, **FETCHED)
    post(server, failed, step="result", status="failed", failed_step="provision",
         error="sha256 mismatch")
    post(server, MAC, step="rootfs", status="start")  # events, but nothing moved its lifecycle
    every = get(server, "/api/machines").json()
    by_mac = {m["mac"]: m for m in every["machines"]}
    lc = by_mac[late]["lifecycle"]
    assert (lc["state"], lc["evidence"], lc["previous"], lc["pending"]) == (
        "deployed", "result ok, handoff reboot", "deploying", None)
    assert abs(lc["since"] - (now - 1200)) < 0.01
    assert by_mac[late]["lifecycle_warning"] == "deployed 20 min ago and no first boot confirmed"
    assert by_mac[booted]["lifecycle"]["state"] == "booted"
    assert by_mac[booted]["lifecycle"]["evidence"] == \
        "first boot confirmed by the target (kernel 6.1.0-57-amd64)"
    assert by_mac[booted]["lifecycle_warning"] is None
    assert by_mac[failed]["lifecycle"]["evidence"] == "provision: sha256 mismatch"
    assert by_mac[MAC]["lifecycle"] is None and by_mac[OTHER]["lifecycle"] is None
    assert every["lifecycle_counts"] == {
        "new": 2, "inspected": 0, "deploying": 0, "deployed": 1, "booted": 1, "cleaning": 0,
        "available": 0, "failed": 1, "unconfirmed": 1}
    assert every["counts"] == {"new": 1, "running": 1, "ok": 2, "failed": 1}

    def macs(query: str, counts: dict[str, int] = every["lifecycle_counts"]) -> list[str]:
        data = get(server, f"/api/machines?{query}").json()
        assert data["lifecycle_counts"] == counts  # the fleet's, not the filter's
        assert data["total"] == len(data["machines"])
        return [m["mac"] for m in data["machines"]]

    assert macs("lifecycle=unconfirmed") == [late]
    assert macs("lifecycle=deployed") == [late]
    assert macs("lifecycle=booted") == [booted]
    assert macs("lifecycle=new") == [OTHER, MAC]
    assert macs("lifecycle=failed&state=failed") == [failed]
    assert macs("lifecycle=booted&state=failed") == []
    resp = get(server, "/api/machines?lifecycle=gone")
    assert (resp.status_code, resp.json()["error"]) == (400, (
        "lifecycle: one of new, inspected, deploying, deployed, booted, cleaning, available, "
        "failed, unconfirmed, not 'gone'"))
    # the first boot confirmed: the warning goes, and with it the count
    post(server, late, step="firstboot", status="booted", kernel="6.1.0-57-amd64")
    after = {**every["lifecycle_counts"], "deployed": 0, "booted": 2, "unconfirmed": 0}
    assert macs("lifecycle=unconfirmed", after) == []
    assert macs("lifecycle=booted", after) == [late, booted]
    assert get(server, f"/api/machines/{late}").json()["result"] == "ok"  # still its run's
    out = io.StringIO()
    args = build_parser().parse_args(["status", "--server", server.url, "--lifecycle", "booted"])
    assert args.func(args, out=out) == 0
    assert [line.split()[0] for line in out.getvalue().splitlines()[1:]] == [late, booted]
    assert any(r["path"].endswith("lifecycle=booted") for r in server.access_log)


def test_status_cli_fetches_every_page(root: Path, server: ObservedServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import pyinit_server.server as server_module

    monkeypatch.setattr(server_module, "DEFAULT_PAGE", 7)
    for i in range(20):
        (root / "machines" / f"52-54-00-00-01-{i:02x}.json").write_text(json.dumps(WRITE))
    out = io.StringIO()
    args = build_parser().parse_args(["status", "--server", server.url])
    assert args.func(args, out=out) == 0
    assert len(out.getvalue().splitlines()) == 1 + 22  # the header and every machine
    out = io.StringIO()
    args = build_parser().parse_args(["status", "--server", server.url, "--limit", "3"])
    assert args.func(args, out=out) == 0
    assert len(out.getvalue().splitlines()) == 1 + 3
    post(server, "52-54-00-00-01-02", step="result", status="failed", error="boom")
    out = io.StringIO()
    args = build_parser().parse_args(["status", "--server", server.url, "--state", "failed"])
    assert args.func(args, out=out) == 0
    assert [line.split()[0] for line in out.getvalue().splitlines()[1:]] == ["52-54-00-00-01-02"]


def test_status_cli_event_log(server: ObservedServer) -> None:
    post(server, MAC, step="action", status="ok", elapsed=0.25)
    post(server, MAC, step="result", status="ok", handoff="reboot", device="/dev/vda")
    out = io.StringIO()
    args = build_parser().parse_args(["status", "--server", server.url, "52:54:00:12:34:56"])
    assert args.func(args, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[1].split() == [MAC, "-", "action", "ok", "-", "-", "-", "ok", "0s", "-"]
    assert lines[2:5] == [f"file: machines/{MAC}.yaml", "",
                          "    +0.0s  action     ok        elapsed=0.25"]
    assert lines[5].endswith("  result     ok        handoff=reboot device=/dev/vda")
    assert len(lines) == 6


def test_status_cli_errors(server: ObservedServer, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["status", "--server", server.url, "52-54-00-99-99-99"])
    assert args.func(args) == 1
    assert "HTTP 404: no events and no machine file for 52-54-00-99-99-99" in \
        capsys.readouterr().err
    args = parser.parse_args(["status", "--server", server.url, "nope"])
    assert args.func(args) == 2
    args = parser.parse_args(["status", "--server", "http://127.0.0.1:9", "--json"])
    assert args.func(args) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    out = io.StringIO()
    args = parser.parse_args(["status", "--server", server.url, "--json"])
    assert args.func(args, out=out) == 0
    assert json.loads(out.getvalue())["machines"][0]["mac"] == OTHER


def test_redeploy_cli_errors(server: ObservedServer, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """``pyinit redeploy``'s failures are one line each, with the server's own reason."""
    parser = build_parser()
    args = parser.parse_args(["redeploy", "--server", server.url, "nope"])
    assert args.func(args) == 2
    assert "not a MAC address: 'nope'" in capsys.readouterr().err
    missing = tmp_path / "no-token"
    args = parser.parse_args(["redeploy", "--server", server.url, "--token-file", str(missing),
                              MAC])
    assert args.func(args) == 2
    assert f"--token-file {missing}: No such file or directory" in capsys.readouterr().err
    args = parser.parse_args(["redeploy", "--server", "http://127.0.0.1:9", MAC])
    assert args.func(args) == 1
    assert "pyinit redeploy: cannot reach http://127.0.0.1:9: ConnectionError" in \
        capsys.readouterr().err
    unknown = "52-54-00-99-99-99"
    args = parser.parse_args(["redeploy", "--server", server.url, unknown])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyinit redeploy: {server.url}/api/machines/{unknown}/redeploy: "
                          "HTTP 404: ")
    assert len(err.splitlines()) == 1
    out = io.StringIO()
    args = parser.parse_args(["redeploy", "--server", server.url, MAC])  # writes are open here
    assert args.func(args, out=out) == 0
    assert out.getvalue() == f"{MAC}: redeploy requested; its next boot provisions it again\n"


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0.4, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"),
    (86400 * 3 + 5, "3d"), (-3, "0s"),
])
def test_age(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


# --------------------------------------------------------------------------------------------
# tokens

TOKEN = "s3cret-T0ken"


@pytest.fixture
def token_server(root: Path) -> Iterator[ObservedServer]:
    with ObservedServer(root, token=TOKEN, max_upload=1 << 20) as srv:
        yield srv


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def uploads_left(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "images").iterdir())


@pytest.mark.parametrize(("headers", "status", "message"), [
    ({}, 401, "this server requires a token: send 'Authorization: Bearer <token>' "
              "(pyinit: pyinit.token= on the kernel command line; PXE-booted machines get "
              "theirs in the iPXE script)"),
    ({"Authorization": "Basic dXNlcjpwdw=="}, 401,
     "malformed Authorization header: expected 'Bearer <token>'"),
    ({"Authorization": "Bearer"}, 401, "malformed Authorization header: expected 'Bearer <token>'"),
    (bearer("s3cret-T0kem"), 403, "wrong token"),
    (bearer(TOKEN + "x"), 403, "wrong token"),
])
def test_write_endpoints_refuse_without_the_token(
        root: Path, token_server: ObservedServer, headers: dict[str, str], status: int,
        message: str) -> None:
    url = token_server.url
    for resp in (
            requests.post(f"{url}/events/{MAC}", json={"step": "x"}, headers=headers, timeout=10),
            requests.post(f"{url}/image", files={"BootyImage": ("up.img", b"x" * 5000)},
                          headers=headers, timeout=10),
            requests.put(f"{url}/images/up.img", data=b"y" * 5000, headers=headers, timeout=10),
            requests.put(f"{url}/images/up.img", data=iter([b"z" * 5000]), headers=headers,
                         timeout=10)):
        assert resp.status_code == status
        assert resp.json() == {"error": message, "status": status}
        if status == 401:
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pyinit"'
    assert token_server.events(MAC) == []
    assert uploads_left(root) == []  # nothing behind, not even a temporary file
    assert token_server.uploads == {}


def test_write_endpoints_with_the_token(root: Path, token_server: ObservedServer) -> None:
    url = token_server.url
    assert requests.post(f"{url}/events/{MAC}", json={"step": "action", "status": "ok"},
                         headers=bearer(TOKEN), timeout=10).status_code == 204
    assert requests.post(f"{url}/image", files={"BootyImage": ("a.img", b"a")},
                         headers={"Authorization": f"bearer  {TOKEN} "},
                         timeout=10).status_code == 201
    assert requests.put(f"{url}/images/b.img", data=b"b", headers=bearer(TOKEN),
                        timeout=10).status_code == 201
    assert token_server.events(MAC) == [{"step": "action", "status": "ok"}]
    assert uploads_left(root) == ["a.img", "a.img.sha256", "b.img", "b.img.sha256"]


def test_reads_stay_open(token_server: ObservedServer) -> None:
    for path in (f"/{MAC}", f"/{MAC}.bty", f"/{MAC}.ipxe", "/boot.ipxe", "/boot/vmlinuz",
                 "/api/machines"):
        assert get(token_server, path).status_code == 200, path


def test_expect_100_without_token_refused_before_the_body(root: Path,
                                                         token_server: ObservedServer) -> None:
    with socket.create_connection(("127.0.0.1", token_server.port), timeout=10) as sock:
        sock.sendall(b"PUT /images/big.img HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"100 Continue" not in answer
    assert uploads_left(root) == []


def test_token_is_validated(root: Path) -> None:
    for bad in ("", "a b", "x" * 257, 'a"b', "caf\u00e9"):
        with pytest.raises(ValueError, match="1-256 printable ASCII"):
            ObservedServer(root, token=bad)


def test_serve_cli_options(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--boot-dir", "out", "--public-url", "http://10.0.0.1:80",
                              "--kernel-args", "console=ttyS1", "--token", "t"])
    assert (args.boot_dir, args.public_url, args.kernel_args, serve_cli._token(args)) == (
        Path("out"), "http://10.0.0.1:80", "console=ttyS1", "t")
    args = parser.parse_args(["serve"])
    assert (args.boot_dir, args.public_url, serve_cli._token(args)) == (None, None, None)
    assert args.kernel_args == "console=ttyS0,115200 console=tty0"
    (tmp_path / "tok").write_text("from-file\nignored\n")
    args = parser.parse_args(["serve", "--token-file", str(tmp_path / "tok")])
    assert serve_cli._token(args) == "from-file"
    (tmp_path / "empty").write_text("\n")
    for path in ("empty", "missing"):
        args = parser.parse_args(["serve", "--token-file", str(tmp_path / path)])
        with pytest.raises(ValueError, match=f"--token-file {tmp_path / path}: "):
            serve_cli._token(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--token", "a", "--token-file", "b"])
