"""pyinit.oci.parse: references, WWW-Authenticate challenges, the manifest's one layer. Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pyinit.oci.parse import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PYINIT_LAYER,
    Challenge,
    Credentials,
    Layer,
    Reference,
    choose_layer,
    parse_challenge,
    parse_reference,
)

HEX = "ab" * 32


@pytest.mark.parametrize(("text", "want"), [
    ("oci://127.0.0.1:5000/disks/debian:12",
     Reference("127.0.0.1:5000", "disks/debian", "12", None)),
    ("oci://registry.example/a/b/c:v1.2-rc_3",
     Reference("registry.example", "a/b/c", "v1.2-rc_3", None)),
    (f"oci://reg/x@sha256:{HEX}", Reference("reg", "x", None, f"sha256:{HEX}")),
    (f"oci://reg:443/x:t@sha256:{HEX}", Reference("reg:443", "x", "t", f"sha256:{HEX}")),
    ("oci://[fd00::1]:5000/my-repo__x.y:t", Reference("[fd00::1]:5000", "my-repo__x.y", "t")),
])
def test_references_parse(text: str, want: Reference) -> None:
    ref = parse_reference(text)
    assert ref == want
    assert str(ref) == text
    assert ref.reference == (want.digest or want.tag)


def test_reference_urls() -> None:
    ref = parse_reference("oci://[fd00::1]:5000/disks/x:1")
    assert ref.host == "fd00::1"
    assert ref.manifest_url(plain_http=True) == "http://[fd00::1]:5000/v2/disks/x/manifests/1"
    assert ref.blob_url(f"sha256:{HEX}", plain_http=False) == \
        f"https://[fd00::1]:5000/v2/disks/x/blobs/sha256:{HEX}"
    assert parse_reference("oci://reg.example:5000/x:1").host == "reg.example"


@pytest.mark.parametrize(("text", "why"), [
    ("http://reg/x:1", "not an oci:// reference"),
    ("oci://reg", "names no repository"),
    ("oci://reg/", "names no repository"),
    ("oci://reg/x", "names no tag or digest"),
    ("oci://reg/Upper:1", "repository 'Upper' is not lower-case"),
    ("oci://reg/a//b:1", "repository 'a//b'"),
    ("oci://reg/x-:1", "repository 'x-'"),
    ("oci://reg/x:-bad", "tag '-bad' is not a valid tag"),
    ("oci://reg/x:" + "t" * 129, "is not a valid tag"),
    ("oci://reg/x@sha256:abc", "sha256 needs 64 lower-case hex digits"),
    ("oci://reg/x@md5:" + "0" * 32, "is not sha256:<hex> or sha512:<hex>"),
    (f"oci://reg/x@sha256:{HEX.upper()}", "lower-case hex"),
    ("oci://re_g/x:1", "'re_g' is not a registry host[:port]"),
    ("oci://reg:0/x:1", "'reg:0' is not a registry host[:port]"),
    ("oci://reg:70000/x:1", "is not a registry host[:port]"),
    ("oci://user:pw@reg/x:1", "is not a registry host[:port]"),
])
def test_malformed_references_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_reference(text)
    assert why in str(info.value)


@pytest.mark.parametrize(("header", "want"), [
    ('Bearer realm="https://auth.example/token",service="registry.example",'
     'scope="repository:disks/x:pull"',
     Challenge("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                          "scope": "repository:disks/x:pull"})),
    ('Basic realm="pyinit-test"', Challenge("basic", {"realm": "pyinit-test"})),
    ('bearer realm=http://t/token, service=svc', Challenge("bearer", {"realm": "http://t/token",
                                                                      "service": "svc"})),
    ('Bearer realm="a \\"quoted\\" realm",scope="repository:x:pull,push"',
     Challenge("bearer", {"realm": 'a "quoted" realm', "scope": "repository:x:pull,push"})),
    ("Negotiate", Challenge("negotiate", {})),
    ("", None),
])
def test_challenges_parse(header: str, want: Challenge | None) -> None:
    assert parse_challenge(header) == want


def test_credentials_never_show_the_password() -> None:
    creds = Credentials("ci", "s3cret")
    assert "s3cret" not in repr(creds) and "s3cret" not in str(creds)
    assert creds.basic() == "Basic Y2k6czNjcmV0"


def manifest(layers: list[dict[str, Any]] | None = None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                      "digest": "sha256:" + "4" * 64, "size": 2}}
    doc["layers"] = layers if layers is not None else [
        {"mediaType": PYINIT_LAYER, "digest": f"sha256:{HEX}", "size": 3,
         "annotations": {"org.opencontainers.image.title": "disk.img.zst"}}]
    doc.update(extra)
    return json.dumps(doc).encode()


def test_the_one_layer_is_chosen() -> None:
    assert choose_layer(manifest(), None) == Layer(f"sha256:{HEX}", 3, PYINIT_LAYER,
                                                   "disk.img.zst")
    # oras push's default media type for a file; Docker's schema 2 via Content-Type only
    body = manifest([{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                      "digest": f"sha256:{HEX}", "size": 9}], mediaType=None)
    assert choose_layer(body, DOCKER_MANIFEST + "; charset=utf-8").size == 9


@pytest.mark.parametrize(("body", "why"), [
    (manifest([]), "the manifest has 0 layers; a disk image artifact has exactly one"),
    (manifest([{"mediaType": PYINIT_LAYER, "digest": f"sha256:{HEX}", "size": 1}] * 2),
     "the manifest has 2 layers"),
    (manifest([{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{HEX}", "size": 1}]),
     "layer media type 'application/vnd.oci.image.layer.v1.tar+gzip' is not a disk image"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{}, {}]}).encode(), "is an image index"),
    (manifest(mediaType="application/vnd.docker.distribution.manifest.v1+json"),
     "is not an OCI image manifest"),
    (manifest([{"mediaType": PYINIT_LAYER, "digest": "sha256:xyz", "size": 1}]),
     "sha256 needs 64"),
    (manifest([{"mediaType": PYINIT_LAYER, "digest": f"sha256:{HEX}", "size": -1}]),
     "is not a byte count"),
    (b"<html>", "the manifest is not JSON"),
])
def test_manifests_pyinit_cannot_write_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(ValueError) as info:
        choose_layer(body, None)
    assert why in str(info.value)
