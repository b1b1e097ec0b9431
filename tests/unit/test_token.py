"""pyinit.token=: parsed, masked, and sent by the event sink, the capture and the fetch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit.capture import capture_image
from pyinit.cmdline import mask_secrets, parse_cmdline
from pyinit.errors import ConfigError, FetchError
from pyinit.events import ServerSink
from pyinit.fetch import auth_headers, fetch_action, same_origin
from tests.serverkit import ObservedServer

MAC = "52-54-00-12-34-56"
TOKEN = "Zm9v.YmFy-_~+/="


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ObservedServer]:
    (tmp_path / "images").mkdir()
    (tmp_path / "machines").mkdir()
    (tmp_path / "machines" / f"{MAC}.json").write_text(
        '{"action": "writeImage", "sourceImage": "images/a.img", "destinationDevice": "/dev/vda"}')
    with ObservedServer(tmp_path, token=TOKEN) as srv:
        yield srv


def test_token_on_the_command_line() -> None:
    params = parse_cmdline(f"BOOTYURL=http://h:1 pyinit.token={TOKEN} console=ttyS0")
    assert params.token == TOKEN
    assert TOKEN not in repr(params)
    assert parse_cmdline("BOOTYURL=http://h:1").token is None


@pytest.mark.parametrize("arg", ["pyinit.token", "pyinit.token=", '"pyinit.token=a b"',
                                 "pyinit.token=" + "x" * 257, "pyinit.token=caf\u00e9"])
def test_bad_token_is_refused_without_showing_it(arg: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cmdline(f"BOOTYURL=http://h:1 {arg}")
    assert info.value.field == "pyinit.token"
    assert "caf" not in str(info.value) and "xxx" not in str(info.value)


@pytest.mark.parametrize(("line", "masked"), [
    (f"BOOTYURL=http://h pyinit.token={TOKEN} quiet", "BOOTYURL=http://h pyinit.token=*** quiet"),
    (f'pyinit.token="{TOKEN}" x', "pyinit.token=*** x"),
    (f"pyinit.token={TOKEN}", "pyinit.token=***"),
    ("console=ttyS0 root=/dev/vda", "console=ttyS0 root=/dev/vda"),
    ("pyinit.token=a pyinit.token=b", "pyinit.token=*** pyinit.token=***"),
])
def test_mask_secrets(line: str, masked: str) -> None:
    assert mask_secrets(line) == masked


@pytest.mark.parametrize(("url", "base", "same"), [
    ("http://10.0.2.2:8080/image", "http://10.0.2.2:8080", True),
    ("HTTP://10.0.2.2:8080/images/x", "http://10.0.2.2:8080/", True),
    ("http://10.0.2.2:8081/image", "http://10.0.2.2:8080", False),
    ("https://10.0.2.2:8080/image", "http://10.0.2.2:8080", False),
    ("http://bucket.example.com/x?sig=1", "http://10.0.2.2:8080", False),
    ("http://10.0.2.2:notaport/x", "http://10.0.2.2:8080", False),
    ("/image", "http://10.0.2.2:8080", False),
])
def test_same_origin(url: str, base: str, same: bool) -> None:
    assert same_origin(url, base) is same


def test_auth_headers() -> None:
    assert auth_headers(None) == {} and auth_headers("") == {}
    assert auth_headers("t") == {"Authorization": "Bearer t"}


def test_server_sink_sends_the_token(server: ObservedServer) -> None:
    sink = ServerSink(f"{server.url}/events/{MAC}", token=TOKEN)
    sink({"step": "action", "status": "ok"})
    sink.flush()
    assert server.events(MAC) == [{"step": "action", "status": "ok"}]


def test_server_sink_without_the_token_is_refused(server: ObservedServer) -> None:
    sink = ServerSink(f"{server.url}/events/{MAC}")
    sink({"step": "action", "status": "ok"})
    sink.flush()
    assert server.events(MAC) == []
    assert sink.failures == 0  # the server answered: not counted as unreachable


def test_fetch_sends_the_token(server: ObservedServer) -> None:
    seen: list[Any] = []
    with requests.Session() as session:
        session.hooks["response"].append(lambda r, *a, **k: seen.append(r.request))
        params = parse_cmdline(f"BOOTYURL={server.url} pyinit.token={TOKEN}")
        fetched = fetch_action(params, MAC, session=session)
    assert fetched.action.destination_device == "/dev/vda"
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_capture_sends_the_token(tmp_path: Path, server: ObservedServer) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(os.urandom(4096))
    with requests.Session() as session:
        result = capture_image(str(disk), f"{server.url}/image", mac=MAC, session=session,
                               allow_regular_file=True, token=TOKEN)
        assert result.filename in server.uploads
        with pytest.raises(FetchError, match="HTTP 401") as info:
            capture_image(str(disk), f"{server.url}/images/put.zst", mac=MAC, method="put",
                          session=session, allow_regular_file=True, attempts=3)
    assert not info.value.retryable
    assert sorted(p.name for p in (server.root / "images").iterdir()) == [
        result.filename, f"{result.filename}.sha256"]
