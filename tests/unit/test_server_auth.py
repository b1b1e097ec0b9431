"""Secure by default: the server's secret, machine tokens and the operator token."""

from __future__ import annotations

import json
import logging
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pyinit_server import auth
from tests.serverkit import ObservedServer

MAC = "52-54-00-12-34-56"
OTHER = "52-54-00-00-00-02"
SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "machines").mkdir()
    (tmp_path / "images").mkdir()
    for mac in (MAC, OTHER):
        (tmp_path / "machines" / f"{mac}.json").write_text(json.dumps(
            {"action": "readImage", "sourceDevice": "/dev/vda"}))
    return tmp_path


@pytest.fixture
def server(root: Path) -> Iterator[ObservedServer]:
    with ObservedServer(root) as srv:
        yield srv


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_event(srv: ObservedServer, mac: str, token: str | None) -> requests.Response:
    return requests.post(f"{srv.url}/events/{mac}", json={"step": "action", "status": "ok"},
                         headers=bearer(token) if token else {}, timeout=10)


def images(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "images").iterdir())


# -- pure -------------------------------------------------------------------------------------


def test_machine_token_is_per_mac_and_spelling_free() -> None:
    token = auth.machine_token(SECRET, MAC)
    assert token.startswith("m1.") and auth.TOKEN_RE.match(token)
    assert auth.machine_token(SECRET, "52:54:00:12:34:56".upper()) == token
    assert auth.machine_token(SECRET, OTHER) != token
    assert auth.machine_token(SECRET[::-1], MAC) != token
    with pytest.raises(ValueError):
        auth.machine_token(SECRET, "nope")


@pytest.mark.parametrize(("header", "mac", "status"), [
    (None, MAC, 401),
    ("Basic dXNlcjpwdw==", MAC, 401),
    ("Bearer", MAC, 401),
    ("Bearer operator-T0ken", MAC, None),
    ("bearer operator-T0ken", None, None),  # the operator token covers writes of no machine
    ("Bearer wrong", MAC, 403),
    (f"Bearer {auth.machine_token(SECRET, MAC)}", MAC, None),
    (f"Bearer {auth.machine_token(SECRET, MAC)}", OTHER, 403),
    (f"Bearer {auth.machine_token(SECRET, MAC)}", None, 403),
    (f"Bearer {auth.machine_token(SECRET, MAC)}x", MAC, 403),
])
def test_decide(header: str | None, mac: str | None, status: int | None) -> None:
    denied = auth.decide(header, secret=SECRET, operator="operator-T0ken", mac=mac)
    assert (denied.status if denied else None) == status
    assert auth.decide(header, secret=SECRET, operator="x", mac=mac, open_writes=True) is None


@pytest.mark.parametrize(("name", "mac"), [
    (f"{MAC}.img.zst", MAC), (f"{MAC}.img", MAC), (MAC, MAC), ("disk.img", None),
    ("52-54-00-12-34.img", None), ("x-y.img", None),
])
def test_capture_mac(name: str, mac: str | None) -> None:
    assert auth.capture_mac(name) == mac


@pytest.mark.parametrize("token", ["m1.abc", "a b", "", "x" * 257, 'a"b'])
def test_operator_token_rules(token: str) -> None:
    with pytest.raises(auth.AuthError):
        auth.check_token(token)


# -- the server ---------------------------------------------------------------------------------


def test_secret_and_operator_token_are_made_private_once(root: Path) -> None:
    with ObservedServer(root) as srv:
        first = (srv.token, srv.machine_token(MAC))
        assert srv.token_file == root / ".pyinit" / "operator-token"
    state = root / ".pyinit"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("secret", "operator-token"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    with ObservedServer(root) as srv:  # a restart keeps both: machines' tokens still good
        assert (srv.token, srv.machine_token(MAC)) == first
    (state / "secret").chmod(0o644)
    with pytest.raises(auth.AuthError, match="readable by others"):
        ObservedServer(root).start()


def test_writes_without_a_token_are_refused_by_default(server: ObservedServer,
                                                       root: Path) -> None:
    resp = post_event(server, MAC, None)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pyinit"'
    assert requests.put(f"{server.url}/images/disk.img", data=b"x", timeout=10).status_code == 401
    assert server.events(MAC) == [] and images(root) == []
    # reads stay open: iPXE cannot send a header
    assert requests.get(f"{server.url}/{MAC}", timeout=10).status_code == 200


def test_machine_token_covers_its_own_events_only(server: ObservedServer) -> None:
    token = server.machine_token(MAC)
    assert post_event(server, MAC, token).status_code == 204
    resp = post_event(server, OTHER, token)
    assert resp.status_code == 403
    assert resp.json()["error"] == f"this machine token is not {OTHER}'s"
    assert len(server.events(MAC)) == 1 and server.events(OTHER) == []
    assert post_event(server, OTHER, server.token).status_code == 204  # the operator's


def test_machine_token_covers_its_own_captures_only(server: ObservedServer,
                                                    root: Path) -> None:
    token = server.machine_token(MAC)
    url = server.url
    assert requests.put(f"{url}/images/{MAC}.img.zst", data=b"mine", headers=bearer(token),
                        timeout=10).status_code == 201
    for name in ("disk.img", f"{OTHER}.img.zst"):  # an image machines boot; another's capture
        resp = requests.put(f"{url}/images/{name}", data=b"evil", headers=bearer(token),
                            timeout=10)
        assert resp.status_code == 403, name
    files = {"BootyImage": (f"{MAC}.img", b"multipart mine")}
    assert requests.post(f"{url}/image", files=files, headers=bearer(token),
                         timeout=10).status_code == 201
    files = {"BootyImage": (f"{OTHER}.img", b"multipart evil")}
    resp = requests.post(f"{url}/image", files=files, headers=bearer(token), timeout=10)
    assert resp.status_code == 403
    assert images(root) == sorted([f"{MAC}.img.zst", f"{MAC}.img.zst.sha256", f"{MAC}.img",
                                   f"{MAC}.img.sha256"])
    assert requests.put(f"{url}/images/disk.img", data=b"ok", headers=bearer(server.token or ""),
                        timeout=10).status_code == 201


def test_machine_token_on_post_image_passes_expect_100(server: ObservedServer) -> None:
    """The file name (and so the MAC) is in the body: a machine token is let through the
    Expect check, a missing token is not."""
    for header, first in ((f"Authorization: Bearer {server.machine_token(MAC)}\r\n",
                           b"HTTP/1.1 100"), ("", b"HTTP/1.1 401")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST /image HTTP/1.1\r\nHost: x\r\n{header}Content-Length: 100\r\n"
                         "Content-Type: multipart/form-data; boundary=b\r\n"
                         "Expect: 100-continue\r\n\r\n".encode())
            assert sock.recv(200).startswith(first)


def test_ipxe_script_carries_the_machine_token(server: ObservedServer) -> None:
    text = requests.get(f"{server.url}/{MAC}.ipxe", timeout=10).text
    assert f" pyinit.token={server.machine_token(MAC)}" in text
    assert server.token not in text


def test_replicas_sharing_a_root_accept_each_others_tokens(root: Path) -> None:
    with ObservedServer(root) as one, ObservedServer(root) as two:
        assert one.machine_token(MAC) == two.machine_token(MAC)
        assert post_event(two, MAC, one.machine_token(MAC)).status_code == 204


def test_open_writes_must_be_asked_for(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyinit_server"), \
            ObservedServer(root, open_writes=True) as srv:
        assert post_event(srv, MAC, None).status_code == 204
        assert "pyinit.token=" not in requests.get(f"{srv.url}/{MAC}.ipxe", timeout=10).text
    assert "writes are open" in caplog.text


def test_given_operator_token(root: Path) -> None:
    with ObservedServer(root, token="op-T0ken") as srv:
        assert srv.token_file is None
        assert post_event(srv, MAC, "op-T0ken").status_code == 204
    assert not (root / ".pyinit" / "operator-token").exists()
    with pytest.raises(ValueError, match="m1"):
        ObservedServer(root, token="m1.looks-like-a-machine-token")
