"""pyinit.image.transfer: Content-Range, validators and the decision for each answer when
resuming a download."""

from __future__ import annotations

import pytest

from pyinit.errors import FetchError
from pyinit.image.transfer import Decision, Transfer, parse_content_range, validator_of


def test_parse_content_range() -> None:
    assert parse_content_range("bytes 100-199/1000") == (100, 200, 1000)
    assert parse_content_range("bytes 0-0/*") == (0, 1, None)
    assert parse_content_range("bytes */1000") is None
    assert parse_content_range("items 1-2/3") is None
    assert parse_content_range("bytes 5-4/10") is None
    assert parse_content_range(None) is None


def test_validator_prefers_a_strong_etag() -> None:
    lm = "Mon, 23 Nov 2026 14:17:42 GMT"
    assert validator_of({"ETag": '"abc"', "Last-Modified": lm}) == '"abc"'
    assert validator_of({"etag": 'W/"abc"', "last-modified": lm}) == lm
    assert validator_of({}) is None


def started(total: int = 1000, etag: str = '"v1"') -> Transfer:
    t = Transfer("http://h/a.img")
    assert t.on_response(200, {"Content-Length": str(total), "ETag": etag}).action == "start"
    t.on_data(400)
    return t


def test_transfer_first_request() -> None:
    t = Transfer("http://h/a.img")
    assert "Range" not in t.request_headers()
    assert t.request_headers()["Accept-Encoding"] == "identity"
    assert t.on_response(200, {"Content-Length": "1000", "ETag": '"v1"'}) == Decision("start")
    assert (t.total, t.validator) == (1000, '"v1"')
    t.on_data(1000)
    assert t.complete()


def test_resume_206_with_matching_content_range_continues() -> None:
    t = started()
    assert t.request_headers()["Range"] == "bytes=400-"
    assert t.request_headers()["If-Range"] == '"v1"'
    d = t.on_response(206, {"Content-Range": "bytes 400-999/1000", "ETag": '"v1"'})
    assert d == Decision("continue")
    assert (t.offset, t.resumes, t.restarts) == (400, 1, 0)
    assert not t.complete()
    t.on_data(600)
    assert t.complete() and t.fetched == 1000


def test_resume_200_means_restart_from_zero() -> None:
    t = started()
    d = t.on_response(200, {"Content-Length": "1000", "ETag": '"v1"'})
    assert d.action == "restart" and "ignored the Range" in d.reason
    assert (t.offset, t.restarts, t.total) == (0, 1, 1000)
    assert t.fetched == 400  # bytes already fetched still count


def test_if_range_mismatch_restarts_with_the_new_file() -> None:
    t = started()
    d = t.on_response(200, {"Content-Length": "1200", "ETag": '"v2"'})
    assert d.action == "restart" and "changed on the server" in d.reason
    assert (t.total, t.validator) == (1200, '"v2"')


@pytest.mark.parametrize(("status", "headers", "action", "why"), [
    (416, {"Content-Range": "bytes */300"}, "refetch", "416"),
    (206, {"Content-Range": "bytes 0-999/1000"}, "refetch", "asked for bytes 400-"),
    (206, {"Content-Range": "bytes 400-1199/1200"}, "refetch", "changed size"),
    (206, {"Content-Range": "bytes 400-999/1000", "ETag": '"v2"'}, "refetch", "changed"),
    (206, {}, "refetch", "no Content-Range"),
    (503, {}, "retry", "HTTP 503"),
    (408, {}, "retry", "HTTP 408"),
    (429, {}, "retry", "HTTP 429"),
    (404, {}, "fatal", "HTTP 404"),
    (403, {}, "fatal", "HTTP 403"),
    (304, {}, "fatal", "unexpected HTTP 304"),
])
def test_resume_decisions(status: int, headers: dict[str, str], action: str, why: str) -> None:
    d = started().on_response(status, headers)
    assert d.action == action
    assert why in d.reason


def test_first_response_decisions() -> None:
    assert Transfer("u").on_response(404, {}).action == "fatal"
    assert Transfer("u").on_response(500, {}).action == "retry"
    t = Transfer("u")
    assert t.on_response(206, {"Content-Range": "bytes 0-9/10"}).action == "start"
    assert t.total == 10


def test_resume_without_a_validator_needs_a_checksum() -> None:
    t = Transfer("u")
    t.on_response(200, {"Content-Length": "10"})
    assert not t.can_resume()
    assert Transfer("u", allow_unvalidated_resume=True).can_resume()
    t.on_data(5)
    assert "If-Range" not in t.request_headers()


def test_restarts_are_bounded() -> None:
    t = Transfer("u", max_restarts=2)
    t.restart("one")
    t.restart("two")
    with pytest.raises(FetchError, match="three; gave up after 2 restarts") as err:
        t.restart("three")
    assert not err.value.retryable
