from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import pytest
import requests

from pyinit.cmdline import parse_cmdline
from pyinit.errors import ConfigError, FetchError
from pyinit.fetch import action_url, backoff, fetch_action
from tests.unit.fakes import FakeClock

MAC = "52:54:00:AB:CD:EF"
GOOD = {"action": "writeImage", "sourceImage": "images/a.img.gz", "destinationDevice": "/dev/vda"}


@dataclass
class FakeSession:
    """Answers GETs from a script: an int status, a body, or an exception to raise."""

    script: list[Any]
    urls: list[str] = field(default_factory=list)

    def get(self, url: str, **_: Any) -> requests.Response:
        self.urls.append(url)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        status, body = item
        resp = requests.Response()
        resp.status_code = status
        resp._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return resp


def test_urls_by_mac_lower_case_dashes() -> None:
    assert action_url(parse_cmdline("MYURL=http://s:1/m"), MAC) == "http://s:1/m/52-54-00-ab-cd-ef"
    assert action_url(parse_cmdline("BOOTYURL=http://s:1"), MAC) == \
        "http://s:1/52-54-00-ab-cd-ef.bty"
    with pytest.raises(ConfigError):
        action_url(parse_cmdline(""), MAC)


def test_backoff_grows_with_jitter_and_caps() -> None:
    lows = list(islice(backoff(initial=1, cap=8, rng=lambda: 0.0), 6))
    highs = list(islice(backoff(initial=1, cap=8, rng=lambda: 1.0), 6))
    assert lows == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert highs == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_fetch_retries_transient_failures_then_succeeds() -> None:
    clock = FakeClock()
    session = FakeSession([requests.ConnectionError("refused"), (503, b"busy"),
                           (200, GOOD)])
    params = parse_cmdline("MYURL=http://10.0.2.2:8")
    got = fetch_action(params, MAC, session=session, clock=clock,  # type: ignore[arg-type]
                       sleep=clock.sleep)
    assert got.action.source_image == "http://10.0.2.2:8/images/a.img.gz"
    assert len(session.urls) == 3
    assert len(clock.sleeps) == 2


def test_fetch_gives_up_after_the_bounded_total() -> None:
    clock = FakeClock()
    session = FakeSession([requests.ConnectionError("refused")])
    params = parse_cmdline("MYURL=http://10.0.2.2:8 pyinit.fetch_timeout=30")
    with pytest.raises(FetchError, match="gave up after") as info:
        fetch_action(params, MAC, session=session, clock=clock,  # type: ignore[arg-type]
                     sleep=clock.sleep)
    assert "unreachable" in str(info.value)
    assert 29.0 <= clock.now <= 30.0 + 1e-9


@pytest.mark.parametrize(("status", "needle"), [(404, "no action for this machine"),
                                                (403, "HTTP 403"), (400, "HTTP 400")])
def test_client_errors_are_fatal_at_once(status: int, needle: str) -> None:
    clock = FakeClock()
    session = FakeSession([(status, b"{}")])
    with pytest.raises(FetchError, match=needle):
        fetch_action(parse_cmdline("BOOTYURL=http://h:1"), MAC,
                     session=session, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.sleeps == []


def test_malformed_json_is_fatal() -> None:
    clock = FakeClock()
    session = FakeSession([(200, b"{not json")])
    with pytest.raises(ConfigError, match="not JSON"):
        fetch_action(parse_cmdline("BOOTYURL=http://h:1"), MAC, session=session,  # type: ignore[arg-type]
                     clock=clock, sleep=clock.sleep)


def test_the_servers_json_error_reaches_the_console() -> None:
    clock = FakeClock()
    body = b'{"error": "machines/52-54-00-12-34-56.yaml:3: mapping values are not allowed here"}'
    session = FakeSession([(500, body)])
    with pytest.raises(FetchError, match=r"gave up after") as info:
        fetch_action(parse_cmdline("BOOTYURL=http://h:1 pyinit.fetch_timeout=1"), MAC,
                     session=session, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert "HTTP 500: machines/52-54-00-12-34-56.yaml:3: mapping values are not allowed" in \
        str(info.value)
    session = FakeSession([(400, b"<html>Bad</html>")])
    with pytest.raises(FetchError, match=r"HTTP 400$"):
        fetch_action(parse_cmdline("BOOTYURL=http://h:1"), MAC, session=session,  # type: ignore[arg-type]
                     clock=clock, sleep=clock.sleep)
