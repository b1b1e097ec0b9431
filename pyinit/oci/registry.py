"""The registry's I/O: its token flow as a ``requests`` auth object, and the manifest GET that
finds the one layer to write (the blob is then streamed by the write pipeline with the same
auth object, see :func:`pyinit.image.write.write_image`).

Token flow (the distribution spec's, as docker and oras do it): ask anonymously; on a 401 read
``WWW-Authenticate``: ``Bearer realm=…,service=…,scope=…`` → GET the realm (with Basic
credentials when given) → ``token``/``access_token``; ``Basic`` → the credentials themselves;
then send the request again, once. A later 401 (an expired token, mid-stream on a Range
resume) goes through the same hook: one fresh token, one retry. The Authorization header is
only ever added for the registry's own host: requests drops it on a redirect to another host
(the blob store), and the hook ignores 401s from other hosts."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.auth

from pyinit.errors import FetchError, ImageError, unreachable_reason
from pyinit.fetch import RETRYABLE_STATUS, USER_AGENT, retry, tls_failure
from pyinit.image.write import WriteRequest
from pyinit.log import get_logger
from pyinit.oci.parse import (
    ACCEPT,
    Credentials,
    Layer,
    Reference,
    choose_layer,
    parse_challenge,
    parse_digest,
)
from pyinit.units import MIB

log = get_logger("pyinit.oci")

MANIFEST_LIMIT = 4 * MIB  # the distribution registry's own limit for a manifest


class RegistryAuth(requests.auth.AuthBase):
    """Adds the registry's Authorization header (once known) to requests for its host, and
    answers its 401 challenges (see the module docstring). Thread-safe: the write pipeline's
    fetch thread and the caller share it."""

    def __init__(self, session: requests.Session, ref: Reference, *,
                 credentials: Credentials | None = None, actions: str = "pull",
                 timeout: tuple[float, float] = (10.0, 30.0)) -> None:
        self.session = session
        self.ref = ref
        self.credentials = credentials
        self.actions = actions
        self.timeout = timeout
        self.header: str | None = None  # "Bearer …" / "Basic …"
        self.scheme: str | None = None  # the registry's scheme, once challenged
        self.refused = 0  # 401s answered even after authenticating
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryAuth({self.ref.registry}, scheme={self.scheme})"

    def _ours(self, url: str | None) -> bool:
        parts = urlsplit(url or "")
        return parts.hostname == self.ref.host.lower() and \
            parts.netloc.lower() == self.ref.registry.lower()

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.header and self._ours(r.url):
            r.headers["Authorization"] = self.header
        r.register_hook("response", self._on_response)  # type: ignore[no-untyped-call]
        return r

    def _on_response(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        if r.status_code != 401 or not self._ours(r.url):
            return r
        challenge = r.headers.get("WWW-Authenticate", "")
        with self._lock:
            header = self.authenticate(challenge, url=r.url)
        if header is None:
            return r
        r.content  # noqa: B018 - read the 401's body so the connection can be reused
        r.close()
        prep = r.request.copy()
        prep.headers["Authorization"] = header
        again: requests.Response = r.connection.send(prep, **kwargs)
        again.history.append(r)
        again.request = prep
        if again.status_code == 401:
            self.refused += 1
        return again

    def authenticate(self, challenge: str, *, url: str) -> str | None:
        """The Authorization header a 401's challenge asks for (a fresh token), or None when
        there is nothing to answer with (no credentials for a Basic challenge, no challenge)."""
        parsed = parse_challenge(challenge)
        if parsed is None:
            return None
        self.scheme = parsed.scheme
        if parsed.scheme == "basic":
            self.header = self.credentials.basic() if self.credentials else None
            return self.header
        if parsed.scheme != "bearer":
            raise FetchError(url, f"HTTP 401 with an authentication scheme pyinit does not "
                             f"speak: {parsed.scheme}")
        realm = parsed.params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise FetchError(url, f"HTTP 401: the Bearer challenge's realm {realm!r} is not "
                             f"an http(s) URL")
        if self.credentials and urlsplit(url).scheme == "https" and \
                urlsplit(realm).scheme == "http":
            raise FetchError(url, f"HTTP 401: the registry is https but its token realm "
                             f"{realm} is plain http; pyinit will not send registryAuth there")
        params = {"scope": parsed.params.get(
            "scope", f"repository:{self.ref.repository}:{self.actions}")}
        if "service" in parsed.params:
            params["service"] = parsed.params["service"]
        auth = (self.credentials.username, self.credentials.password) \
            if self.credentials else None
        try:
            resp = self.session.get(realm, params=params, auth=auth, timeout=self.timeout,
                                    headers={"User-Agent": USER_AGENT})
        except requests.exceptions.SSLError as exc:
            raise tls_failure(realm, exc, self.session.verify) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            why = unreachable_reason(exc, urlsplit(realm).hostname)
            raise FetchError(realm, f"token server unreachable: {why}",
                             retryable=True) from exc
        with resp:
            if resp.status_code in (401, 403):
                who = "the credentials" if self.credentials else "anonymous access"
                raise FetchError(realm, f"the token server refused {who} "
                                 f"(HTTP {resp.status_code})", status=resp.status_code)
            if resp.status_code >= 400:
                raise FetchError(realm, f"token server: HTTP {resp.status_code}",
                                 retryable=resp.status_code in RETRYABLE_STATUS,
                                 status=resp.status_code)
            try:
                doc = resp.json()
            except ValueError as exc:
                raise FetchError(realm, "the token server's answer is not JSON") from exc
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise FetchError(realm, "the token server's answer has no token")
        self.header = f"Bearer {token}"
        return self.header


def refusal(auth: RegistryAuth) -> str:
    """Why the registry still answers 401, for the one line."""
    if auth.header is not None:
        return (f"the registry refused access: HTTP 401 even after {auth.scheme} "
                f"authentication" + (" with registryAuth" if auth.credentials else
                                     " (anonymous; does it need registryAuth?)"))
    if auth.scheme == "basic":
        return "the registry asks for Basic credentials (HTTP 401); the action gives no " \
               "registryAuth"
    return "the registry refused access: HTTP 401 without a WWW-Authenticate challenge"


@dataclass(frozen=True)
class Artifact:
    """What a reference resolved to: the manifest's digest and its one layer."""

    ref: Reference
    manifest_digest: str
    layer: Layer
    blob_url: str


def resolve(session: requests.Session, ref: Reference, auth: RegistryAuth, *,
            plain_http: bool = False, total: float = 60.0) -> Artifact:
    """GET the manifest (retrying what may heal), check its digest when the reference pins
    one, and choose its layer. Errors are one line naming the reference."""
    url = ref.manifest_url(plain_http=plain_http)
    name = str(ref)

    def once() -> tuple[bytes, str]:
        try:
            resp = session.get(url, auth=auth, timeout=auth.timeout,
                               headers={"Accept": ACCEPT, "User-Agent": USER_AGENT})
        except requests.exceptions.SSLError as exc:
            raise tls_failure(url, exc, session.verify) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            why = unreachable_reason(exc, ref.host)
            raise FetchError(url, f"unreachable: {why}", retryable=True) from exc
        with resp:
            if resp.status_code == 401:
                raise ImageError(name, refusal(auth))
            if resp.status_code == 404:
                raise ImageError(name, f"no manifest {ref.reference} in {ref.repository} "
                                 f"(HTTP 404: no such tag, digest or repository)")
            if resp.status_code in RETRYABLE_STATUS:
                raise FetchError(url, f"HTTP {resp.status_code}", retryable=True,
                                 status=resp.status_code)
            if resp.status_code >= 400:
                raise FetchError(url, f"HTTP {resp.status_code}", status=resp.status_code)
            body = resp.content
            if len(body) > MANIFEST_LIMIT:
                raise ImageError(name, f"the manifest is more than {MANIFEST_LIMIT} bytes")
            return body, resp.headers.get("Content-Type", "")

    body, content_type = retry(once, what=f"GET {url}", total=total)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if ref.digest is not None and ref.digest.startswith("sha256:") and digest != ref.digest:
        raise ImageError(name, f"manifest digest mismatch: asked for {ref.digest}, the "
                         f"registry served {digest}")
    if ref.digest is not None and ref.digest.startswith("sha512:"):
        got = "sha512:" + hashlib.sha512(body).hexdigest()
        if got != ref.digest:
            raise ImageError(name, f"manifest digest mismatch: asked for {ref.digest}, the "
                             f"registry served {got}")
        digest = got
    try:
        layer = choose_layer(body, content_type)
    except ValueError as exc:
        raise ImageError(name, str(exc)) from exc
    return Artifact(ref, digest, layer, ref.blob_url(layer.digest, plain_http=plain_http))


def pull_request(req: WriteRequest, ref: Reference, *, session: requests.Session,
                 credentials: Credentials | None = None,
                 plain_http: bool = False) -> tuple[WriteRequest, Artifact]:
    """``req`` (its device, size, verify …) pointed at the reference's layer: the blob URL,
    the layer's digest as the checksum of the file as served, the registry's auth on every
    GET. Resolves the manifest first: a refusal comes before any disk is touched."""
    auth = RegistryAuth(session, ref, credentials=credentials)
    art = resolve(session, ref, auth, plain_http=plain_http)
    return dataclasses.replace(req, url=art.blob_url, checksum=parse_digest(art.layer.digest),
                               auth=auth), art
