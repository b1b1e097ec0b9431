"""Pure parsing for OCI registries: ``oci://`` references, ``WWW-Authenticate`` challenges,
and the manifest of a disk image artifact (exactly one layer of a media type pyinit reads).
No I/O."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

# The grammar of github.com/distribution/reference (repository path components, tags, digests).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
                      r"(?::(\d{1,5}))?$")
DIGEST_HEX = {"sha256": 64, "sha512": 128}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)  # an index is asked for to be named, not read

# What ``pyinit image --push`` writes, and the artifact type of its manifest.
PYINIT_LAYER = "application/vnd.pyinit.disk.layer.v1"
PYINIT_ARTIFACT = "application/vnd.pyinit.disk.v1"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
# The layer media types pyinit writes to a disk. Whatever the type, the blob is a raw disk
# image or one of pyinit's compressions, sniffed from its first bytes: ``oras push`` gives a
# file application/vnd.oci.image.layer.v1.tar unless told otherwise (the name is oras's
# default, the content is the file as it is, not a tar).
LAYER_TYPES = (PYINIT_LAYER, "application/vnd.oci.image.layer.v1.tar",
               "application/octet-stream")


@dataclass(frozen=True)
class Credentials:
    """A registry's user name and password (the action's ``registryAuth``): never logged."""

    username: str
    password: str

    def __repr__(self) -> str:  # never in a log line or a traceback
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Reference:
    """``oci://registry[:port]/repo[/more]:tag`` or ``…/repo@sha256:<hex>`` (both: the digest
    decides, the tag is a label)."""

    registry: str  # host[:port], as written
    repository: str
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @property
    def reference(self) -> str:
        """What the manifest URL names: the digest when pinned, else the tag."""
        ref = self.digest or self.tag
        assert ref is not None
        return ref

    def __str__(self) -> str:
        tail = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"oci://{self.registry}/{self.repository}{tail}"

    def base(self, *, plain_http: bool) -> str:
        return f"{'http' if plain_http else 'https'}://{self.registry}"

    def manifest_url(self, *, plain_http: bool, reference: str | None = None) -> str:
        return (f"{self.base(plain_http=plain_http)}/v2/{self.repository}/manifests/"
                f"{reference or self.reference}")

    def blob_url(self, digest: str, *, plain_http: bool) -> str:
        return f"{self.base(plain_http=plain_http)}/v2/{self.repository}/blobs/{digest}"

    @property
    def host(self) -> str:
        """The registry's host name without the port (what requests compares on redirects)."""
        host = self.registry
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host


def is_oci(value: str) -> bool:
    return value.startswith("oci://")


def parse_digest(value: str) -> tuple[str, str]:
    """``sha256:<hex>`` → ("sha256", hex); ValueError naming what is wrong. Pure."""
    algo, sep, hexpart = value.partition(":")
    if not sep or algo not in DIGEST_HEX:
        raise ValueError(f"digest {value!r} is not sha256:<hex> or sha512:<hex>")
    if len(hexpart) != DIGEST_HEX[algo] or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise ValueError(f"digest {value!r}: {algo} needs {DIGEST_HEX[algo]} lower-case "
                         f"hex digits")
    return algo, hexpart


def parse_reference(value: str) -> Reference:
    """Parse an ``oci://`` reference; ValueError with the reason. Pure."""
    if not is_oci(value):
        raise ValueError(f"not an oci:// reference: {value!r}")
    rest = value[len("oci://"):]
    registry, slash, path = rest.partition("/")
    if not slash or not registry or not path:
        raise ValueError(f"{value!r} names no repository (oci://registry[:port]/repo:tag)")
    m = _HOST_RE.match(registry)
    if not m or (m.group(1) is not None and not 0 < int(m.group(1)) < 65536):
        raise ValueError(f"{value!r}: {registry!r} is not a registry host[:port]")
    path, at, digest = path.partition("@")
    if at:
        parse_digest(digest)
    repo, colon, tag = path.partition(":")
    if not _REPOSITORY_RE.match(repo):
        raise ValueError(f"{value!r}: repository {repo!r} is not lower-case path components "
                         f"([a-z0-9] joined by . _ __ -)")
    if colon and not _TAG_RE.match(tag):
        raise ValueError(f"{value!r}: tag {tag!r} is not a valid tag "
                         f"([A-Za-z0-9_][A-Za-z0-9._-], at most 128)")
    if not colon and not at:
        raise ValueError(f"{value!r} names no tag or digest (add :tag or @sha256:<hex>)")
    return Reference(registry, repo, tag if colon else None, digest if at else None)


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate`` challenge: ``Bearer realm="…",service="…",scope="…"``."""

    scheme: str  # lower case: "bearer", "basic"
    params: dict[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, or None if it has none. Pure."""
    m = re.match(r"\s*([A-Za-z][\w-]*)(?:\s+|$)", header or "")
    if not m:
        return None
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(header):
        pm = _PARAM_RE.match(header, pos)
        if not pm or pm.end() == pos:
            break
        raw = pm.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[pm.group(1).lower()] = raw
        pos = pm.end()
    return Challenge(m.group(1).lower(), params)


@dataclass(frozen=True)
class Layer:
    digest: str  # "sha256:<hex>"
    size: int
    media_type: str
    title: str | None = None  # org.opencontainers.image.title (oras: the file name)


def choose_layer(body: bytes, content_type: str | None) -> Layer:
    """The one layer of a disk image artifact's manifest; ValueError with the reason for an
    index, a manifest of several layers or of a media type pyinit does not write. Pure."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the manifest is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError("the manifest is not a JSON object")
    media = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if media in INDEX_TYPES or "manifests" in doc:
        n = len(doc.get("manifests") or [])
        raise ValueError(f"is an image index ({media or 'manifests'}, {n} manifests: a "
                         f"multi-platform list), not a disk image artifact; push the disk "
                         f"image as one file (pyinit image --push, oras push)")
    if media not in MANIFEST_TYPES:
        raise ValueError(f"manifest media type {media or 'none'!r} is not an OCI image "
                         f"manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        n = len(layers) if isinstance(layers, list) else 0
        raise ValueError(f"the manifest has {n} layers; a disk image artifact has exactly "
                         f"one (the image file)")
    layer = layers[0]
    if not isinstance(layer, dict):
        raise ValueError("the manifest's layer is not a JSON object")
    ltype = layer.get("mediaType")
    if ltype not in LAYER_TYPES:
        raise ValueError(f"layer media type {ltype!r} is not a disk image (pyinit reads "
                         f"{', '.join(LAYER_TYPES)})")
    digest, size = layer.get("digest"), layer.get("size")
    if not isinstance(digest, str):
        raise ValueError("the layer has no digest")
    parse_digest(digest)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"the layer's size {size!r} is not a byte count")
    notes = layer.get("annotations") or {}
    title = notes.get("org.opencontainers.image.title") if isinstance(notes, dict) else None
    return Layer(digest, size, ltype, title if isinstance(title, str) else None)
