"""Issue #6: a real nginx (private prefix, loopback, free port) serving a ``pyinit export`` tree.

One nginx serves two exports from one ``http { }``: ``full`` (machines, a default, iPXE scripts,
events answered 204 and discarded) and ``bare`` (one machine, no default, events proxied to an
in-process ``pyinit serve``). Every action and script nginx answers is compared byte for byte
with what ``pyinit serve`` answers for the same root, and the runtime's own code
(:func:`pyinit.fetch.fetch_action`, :func:`pyinit.image.write.write_image`,
:class:`pyinit.events.ServerSink`) runs against nginx.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from pyinit.cmdline import BootParams
from pyinit.events import ServerSink
from pyinit.fetch import fetch_action
from pyinit.image.write import WriteRequest, write_image
from pyinit.units import MIB
from pyinit_server.export import export
from tests.hostreq import need_file
from tests.serverkit import ObservedServer

pytestmark = pytest.mark.integration

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MAC_YAML = "52-54-00-aa-bb-01"  # machines/52:54:00:AA:BB:01.yaml (colons, upper case)
MAC_JSON = "52-54-00-aa-bb-02"  # machines/52-54-00-aa-bb-02.json (served byte for byte)
MAC_OTHER = "52-54-00-aa-bb-99"  # no file: default in `full`, 404 in `bare`
IMAGE_SIZE = 4 * MIB

MAIN_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
{includes}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_image(seed: int, size: int = IMAGE_SIZE) -> bytes:
    """Random data with long zero runs (the writer zeroes those instead of writing them)."""
    rng = random.Random(seed)
    img = bytearray(size)
    for pos in range(0, size, MIB):
        if rng.random() < 0.6:
            img[pos:pos + MIB // 2] = rng.randbytes(MIB // 2)
    return bytes(img)


@contextlib.contextmanager
def run_nginx(run: Path, exports: list[Path], ports: list[int]) -> Iterator[Path]:
    """nginx with the ``nginx.conf`` of each export in ``exports`` included, prefix ``run``,
    in the foreground of its own process group; yields its access log; always stopped.
    (Also used by tests/vm/test_fleet.py.)"""
    (run / "tmp").mkdir(parents=True, exist_ok=True)
    conf = run / "nginx.conf"
    includes = "\n".join(f"    include {e}/nginx.conf;" for e in exports)
    conf.write_text(MAIN_CONF.format(run=run, includes=includes))
    check = subprocess.run([NGINX, "-t", "-p", str(run), "-e", str(run / "error.log"),
                            "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-p", str(run), "-e", str(run / "error.log"), "-c",
                             str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        for port in ports:
            while True:
                assert proc.poll() is None, (run / "error.log").read_text()
                with contextlib.suppress(OSError), \
                        socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                assert time.monotonic() < deadline, f"nginx did not listen on {port}"
                time.sleep(0.05)
        yield run / "access.log"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Tree:
    root: Path  # pyinit serve's root (machines/, images/)
    bare_root: Path
    full_url: str  # nginx serving the export of root
    bare_url: str  # nginx serving the export of bare_root (no default, events proxied)
    serve: ObservedServer  # pyinit serve on root, same public URL as nginx
    upstream: ObservedServer  # pyinit serve on bare_root: events proxied here
    image: bytes


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    need_file(NGINX, "nginx-light")
    base = tmp_path_factory.mktemp("nginx")
    image = make_image(1)
    digest = hashlib.sha256(image).hexdigest()
    root, bare_root = base / "root", base / "bare-root"
    for r in (root, bare_root):
        (r / "machines").mkdir(parents=True)
        (r / "images").mkdir()
        (r / "boot").mkdir()
        (r / "images" / "disk.img").write_bytes(image)
    (root / "boot" / "vmlinuz").write_bytes(b"kernel\n")
    (root / "machines" / "52:54:00:AA:BB:01.yaml").write_text(
        "action: writeImage\nsourceImage: images/disk.img\ndestinationDevice: /dev/vda\n"
        f"checksum: sha256:{digest}\nfinish: poweroff\npxe:\n  cmdline: [quiet, loglevel=3]\n")
    (root / "machines" / f"{MAC_JSON}.json").write_bytes(
        b'{"action":"writeImage",  "sourceImage": "images/disk.img",'
        b' "destinationDevice": "/dev/vdb"}\n')
    (root / "machines" / "default.yml").write_text(
        "action: writeImage\nsourceImage: images/disk.img\ndestinationDevice: /dev/sda\n"
        "dryRun: true\n")
    (bare_root / "machines" / f"{MAC_JSON}.json").write_text(
        '{"action": "writeImage", "sourceImage": "images/disk.img", '
        '"destinationDevice": "/dev/vda"}\n')
    full_port, bare_port = free_port(), free_port()
    full_url, bare_url = f"http://127.0.0.1:{full_port}", f"http://127.0.0.1:{bare_port}"
    with ObservedServer(root, public_url=full_url) as serve, \
            ObservedServer(bare_root) as upstream:
        export(root, base / "full", public_url=full_url, listen=f"127.0.0.1:{full_port}")
        export(bare_root, base / "bare", listen=f"127.0.0.1:{bare_port}",
               events_upstream=upstream.url)
        with run_nginx(base / "run", [base / "full", base / "bare"], [full_port, bare_port]):
            yield Tree(root, bare_root, full_url, bare_url, serve, upstream, image)


# -- the routes, byte for byte against pyinit serve ----------------------------------------


@pytest.mark.parametrize(("path", "ctype"), [
    (f"/{MAC_YAML}", "application/json"),
    (f"/{MAC_YAML}.bty", "application/json"),
    ("/52:54:00:aa:bb:01.bty", "application/json"),  # colons, as the server accepts them
    (f"/{MAC_JSON}", "application/json"),  # a .json file: its own bytes
    (f"/{MAC_OTHER}.bty", "application/json"),  # unknown MAC -> default
    (f"/{MAC_YAML}.ipxe", "text/plain"),
    (f"/{MAC_OTHER}.ipxe", None),  # default: differs on purpose (iPXE fills in the MAC)
    ("/boot.ipxe", "text/plain"),
])
def test_nginx_answers_what_pyinit_serve_answers(tree: Tree, path: str,
                                                 ctype: str | None) -> None:
    got = requests.get(tree.full_url + path, timeout=10)
    want = requests.get(tree.serve.url + path, headers={"Host": tree.full_url[7:]}, timeout=10)
    assert got.status_code == want.status_code == 200, got.text
    if ctype is None:
        assert "BOOTIF=01-${netX/mac:hexhyp}" in got.text
        # a static default script cannot carry the machine's token (docs/nginx.md)
        served = want.text.replace(f" pyinit.token={tree.serve.machine_token(MAC_OTHER)}", "")
        assert got.text.replace("${netX/mac:hexhyp}", MAC_OTHER).split("\n")[2:] == \
            served.split("\n")[2:]
        return
    assert got.content == want.content
    assert got.headers["Content-Type"].startswith(ctype)
    assert got.headers["Cache-Control"] == "no-store"


def test_json_file_is_served_byte_for_byte(tree: Tree) -> None:
    got = requests.get(f"{tree.full_url}/{MAC_JSON}.bty", timeout=10)
    assert got.content == (tree.root / "machines" / f"{MAC_JSON}.json").read_bytes()


def test_default_is_used_for_unknown_machines(tree: Tree) -> None:
    got = requests.get(f"{tree.full_url}/{MAC_OTHER}", timeout=10).json()
    assert got["destinationDevice"] == "/dev/sda" and got["dryRun"] is True


@pytest.mark.parametrize("path", [f"/{MAC_OTHER}", f"/{MAC_OTHER}.bty", f"/{MAC_OTHER}.ipxe"])
def test_unknown_machine_without_default_is_404(tree: Tree, path: str) -> None:
    got = requests.get(tree.bare_url + path, timeout=10)
    assert got.status_code == 404
    assert "no machine file" in got.json()["error"]
    assert requests.get(f"{tree.bare_url}/{MAC_JSON}", timeout=10).status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [
    ("PUT", "/images/new.img", 403),  # uploads need pyinit serve
    ("POST", "/image", 404),
    ("DELETE", "/images/disk.img", 403),
    ("POST", f"/{MAC_YAML}", 403),
    ("GET", "/nginx.conf", 404),  # the export's own config is not served
    ("GET", "/images/missing.img", 404),
    ("GET", "/api/machines", 404),
])
def test_what_nginx_refuses(tree: Tree, method: str, path: str, status: int) -> None:
    got = requests.request(method, tree.full_url + path, data=b"x" * 100, timeout=10)
    assert got.status_code == status
    assert not (tree.root / "images" / "new.img").exists()


def test_images_have_range_and_etag(tree: Tree) -> None:
    url = f"{tree.full_url}/images/disk.img"
    head = requests.head(url, timeout=10)
    assert head.status_code == 200
    assert head.headers["Accept-Ranges"] == "bytes"
    assert int(head.headers["Content-Length"]) == IMAGE_SIZE
    etag = head.headers["ETag"]
    part = requests.get(url, headers={"Range": "bytes=1000-1999", "If-Range": etag}, timeout=10)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{IMAGE_SIZE}"
    assert part.content == tree.image[1000:2000]
    assert part.headers["ETag"] == etag
    stale = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}, timeout=10)
    assert stale.status_code == 200 and len(stale.content) == IMAGE_SIZE  # whole file
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=10).status_code == 304
    assert requests.get(url, headers={"Range": f"bytes={IMAGE_SIZE}-"},
                        timeout=10).status_code == 416


def test_boot_files_are_served(tree: Tree) -> None:
    assert requests.get(f"{tree.full_url}/boot/vmlinuz", timeout=10).content == b"kernel\n"


# -- events --------------------------------------------------------------------------------


def test_events_are_accepted_and_discarded(tree: Tree) -> None:
    got = requests.post(f"{tree.full_url}/events/{MAC_YAML}", json={"step": "result",
                                                                     "status": "ok"}, timeout=10)
    assert got.status_code == 204
    assert tree.serve.events(MAC_YAML) == []  # nothing reached pyinit serve


def test_events_are_proxied_to_pyinit_serve(tree: Tree) -> None:
    ev = {"step": "result", "status": "ok", "via": "nginx"}
    token = tree.upstream.machine_token(MAC_JSON)
    got = requests.post(f"{tree.bare_url}/events/{MAC_JSON}", json=ev, timeout=10,
                        headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 204
    # nginx passes the header on; without it the upstream refuses
    refused = requests.post(f"{tree.bare_url}/events/{MAC_JSON}", json=ev, timeout=10)
    assert refused.status_code == 401
    assert tree.upstream.wait_event(MAC_JSON, "result", "ok", timeout=5)["via"] == "nginx"


@pytest.mark.parametrize(("path", "status"), [
    (f"/events/{MAC_YAML}", 204),  # nginx discarding events
    ("/no-events-here/x", 404),  # a static server without the route
    (f"/images/{MAC_YAML}", 403),  # POST on a static location
])
def test_the_runtime_event_sink_survives_any_answer(tree: Tree, path: str, status: int) -> None:
    """pyinit.events posts into whatever answers; a 4xx is neither an error nor a stall."""
    assert requests.post(tree.full_url + path, json={}, timeout=10).status_code == status
    sink = ServerSink(tree.full_url + path, timeout=2.0)
    for i in range(20):
        sink({"step": "provision", "status": "progress", "n": i})
    started = time.monotonic()
    sink({"step": "result", "status": "ok"})
    sink.flush(timeout=10)
    assert sink.queue.unfinished_tasks == 0
    assert sink.failures == 0  # answered (not a connection error), so never given up on
    assert time.monotonic() - started < 5


# -- the runtime against nginx -------------------------------------------------------------


@pytest.mark.parametrize(("kw", "mac"), [
    ({"bootyurl": "{url}"}, MAC_YAML),
    ({"myurl": "{url}"}, MAC_YAML),
    ({"bootyurl": "{url}"}, "52:54:00:AA:BB:01"),  # the NIC's spelling; fetch lower-cases it
])
def test_runtime_fetches_its_action_from_nginx(tree: Tree, kw: dict[str, str], mac: str) -> None:
    params = BootParams(**{k: v.format(url=tree.full_url) for k, v in kw.items()},
                        fetch_timeout=5)
    with requests.Session() as session:
        fetched = fetch_action(params, mac, session=session)
    assert fetched.action.destination_device == "/dev/vda"
    assert fetched.action.source_image == f"{tree.full_url}/images/disk.img"
    assert fetched.action.checksum == ("sha256", hashlib.sha256(tree.image).hexdigest())


def test_runtime_writes_the_image_from_nginx(tree: Tree, tmp_path: Path) -> None:
    params = BootParams(bootyurl=tree.full_url, fetch_timeout=5)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xaa" * (IMAGE_SIZE + 2 * MIB))
    with requests.Session() as session:
        act = fetch_action(params, MAC_YAML, session=session).action
        assert act.source_image is not None
        res = write_image(WriteRequest(url=act.source_image, device=str(disk),
                                       checksum=act.checksum, verify=True),
                          session=session, allow_regular_file=True)
    assert res.checksum_verified == "sha256"
    assert res.bytes_written == IMAGE_SIZE
    written = disk.read_bytes()
    assert hashlib.sha256(written[:IMAGE_SIZE]).hexdigest() == hashlib.sha256(
        tree.image).hexdigest()
    # nginx's own log shows the image went through it
    access = (tree.root.parent / "run" / "access.log").read_text()
    assert '"GET /images/disk.img HTTP/1.1" 200' in access
    assert f'"GET /{MAC_YAML}.bty HTTP/1.1" 200' in access


def test_export_config_passes_nginx_t(tree: Tree) -> None:
    """The generated server block is valid for the nginx on this host (also checked at start)."""
    conf = (tree.root.parent / "full" / "nginx.conf").read_text()
    assert json.dumps(str(tree.root / "images") + "/") in conf  # alias to the same tree
