"""writeImage: the entry point. :func:`write_image` checks the destination, finds the expected
checksum, opens the disk, runs the :class:`~pyinit.image.pipeline.Pipeline`, writes the held-back
head once the checksum matched, verifies by reading back if asked, and wipes the partition
tables again after any failure (see :mod:`pyinit.image` for the guarantees)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
import requests.auth

from pyinit.errors import DiskError, FetchError, ImageError, PyinitError, unreachable_reason
from pyinit.fetch import RETRYABLE_STATUS, USER_AGENT, backoff, retry
from pyinit.image import signature
from pyinit.image.destination import Target, check_destination
from pyinit.image.diskio import IO_THREADS
from pyinit.image.pipeline import Pipeline
from pyinit.image.progress import Progress, megabytes
from pyinit.image.readback import readback_sha256
from pyinit.image.sums import DIGEST_SIZES, find_checksum, image_name, sums_algorithm
from pyinit.log import get_logger
from pyinit.units import MIB

log = get_logger("pyinit.image")


@dataclass(frozen=True)
class WriteRequest:
    url: str
    device: str
    checksum: tuple[str, str] | None = None  # (sha256|sha512, hex) of the file as served
    checksum_url: str | None = None  # a SHA256SUMS/SHA512SUMS-style file listing the image
    size: int | None = None  # the raw image's size in bytes, when known
    verify: bool = False  # read the written range back (O_DIRECT) and compare
    preserve_on_error: bool = False  # leave the disk as it is after a failure (debugging)
    # requests' auth for every GET of the image, Range resumes included (an OCI registry's
    # token flow, pyinit.oci.registry.RegistryAuth); requests drops it on a cross-host redirect
    auth: requests.auth.AuthBase | None = None
    # The signature chain (docs/security.md): the keyring file gpgv checks against (None: no
    # keyring, no signature checked), the image's detached signature and the checksum file's
    # (None: the conventions of pyinit.image.signature.plan).
    keyring: str | None = None
    signature_url: str | None = None
    checksum_signature_url: str | None = None


@dataclass(frozen=True)
class WriteResult:
    device: str
    url: str
    format: str
    bytes_written: int  # raw bytes on the disk (the image's size)
    bytes_fetched: int  # bytes downloaded (compressed, as served), re-fetches included
    sha256: str  # of the file as served
    file_size: int  # bytes of the file as served: what sha256 covers
    checksum_verified: str | None  # "sha256"/"sha512" when a given checksum matched
    zero_bytes: int  # zeroed with BLKZEROOUT/fallocate instead of written
    resumes: int  # Range requests that continued a dropped or stalled transfer
    restarts: int  # times the stream started over from byte 0
    seconds: float
    verified_readback: bool
    signer: str | None = None  # fingerprint of the key whose signature covered the image

    def sha256_of(self) -> str:
        """Which bytes :attr:`sha256` covers: ``the downloaded file (compressed zstd, 312 MB)``,
        or for a raw image ``the 762 MB written (the raw file as downloaded)``. Pure."""
        if self.format == "raw":
            return f"the {megabytes(self.bytes_written)} written (the raw file as downloaded)"
        return f"the downloaded file (compressed {self.format}, {megabytes(self.file_size)})"


def fetch_text(session: requests.Session, url: str, *, total: float = 60.0,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep, limit: int = 4 * MIB) -> str:
    """GET a small text file (a SUMS file) with the same retry policy as the action fetch."""
    return fetch_small(session, url, total=total, clock=clock, sleep=sleep,
                       limit=limit).decode("utf-8", "replace")


def fetch_small(session: requests.Session, url: str, *, total: float = 60.0,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep, limit: int = 4 * MIB) -> bytes:
    """GET a small file (a SUMS file, a signature) with the same retry policy as the action
    fetch; its bytes exactly as served."""

    def once() -> bytes:
        try:
            resp = session.get(url, timeout=(10, 30), headers={"User-Agent": USER_AGENT})
        except (requests.ConnectionError, requests.Timeout) as exc:
            why = unreachable_reason(exc, urlsplit(url).hostname)
            raise FetchError(url, f"unreachable: {why}", retryable=True) from exc
        if resp.status_code in RETRYABLE_STATUS:
            raise FetchError(url, f"HTTP {resp.status_code}", retryable=True,
                             status=resp.status_code)
        if resp.status_code >= 400:
            raise FetchError(url, f"HTTP {resp.status_code}", status=resp.status_code)
        if len(resp.content) > limit:
            raise FetchError(url, f"more than {limit} bytes: not a checksum file or signature")
        return resp.content

    data: bytes = retry(once, what=f"GET {url}", total=total, clock=clock, sleep=sleep)
    return data


def expected_checksum(req: WriteRequest, *, session: requests.Session) -> tuple[str, str] | None:
    """(algorithm, hex) the served file must match: ``checksum``, else the image's line in
    ``checksum_url``."""
    return _expected(req, session=session, sums_signature=None)[0]


def _expected(req: WriteRequest, *, session: requests.Session, sums_signature: str | None
              ) -> tuple[tuple[str, str] | None, str | None]:
    """:func:`expected_checksum`, and the fingerprint that signed ``checksum_url`` when
    ``sums_signature`` (its detached signature) is given: checked before any disk is
    touched."""
    if req.checksum is not None:
        algo, digest = req.checksum[0].lower(), req.checksum[1].lower()
        if len(digest) != DIGEST_SIZES.get(algo, -1) or not re.fullmatch(r"[0-9a-f]+", digest):
            raise ImageError(req.url, f"bad checksum {algo}:{digest} (sha256 or sha512 hex)")
        return (algo, digest), None
    if req.checksum_url is None:
        return None, None
    signer = None
    raw = fetch_small(session, req.checksum_url)
    if sums_signature is not None:
        assert req.keyring is not None
        sig = signature.fetch_signature(lambda u: fetch_small(session, u), req.checksum_url,
                                        sums_signature)
        verdict = signature.check(Path(req.keyring), sig, raw, url=req.checksum_url,
                                  signature_url=sums_signature)
        log.info(f"provision: {req.checksum_url} signed by {verdict.fingerprint}")
        signer = verdict.fingerprint
    text = raw.decode("utf-8", "replace")
    name = image_name(req.url)
    try:
        return find_checksum(text, name, algo=sums_algorithm(req.checksum_url)), signer
    except ValueError as exc:
        raise ImageError(req.url, f"{req.checksum_url}: {exc}") from exc


def write_image(req: WriteRequest, *, session: requests.Session,
                allow_regular_file: bool = False, proc: Path = Path("/proc"),
                sysfs: Path = Path("/sys"), direct: bool | None = None,
                connect_timeout: float = 10.0, read_timeout: float = 30.0,
                max_attempts: int = 8, delays: Callable[[], Iterator[float]] = backoff,
                io_threads: int = IO_THREADS, progress_interval: float = 1.0,
                clock: Callable[[], float] = time.monotonic,
                before_open: Callable[[], None] | None = None) -> WriteResult:
    """Stream ``req.url`` onto ``req.device`` (see :mod:`pyinit.image` for the guarantees).

    ``direct``: O_DIRECT for block devices (default :data:`DIRECT_DEFAULT`: 1 GiB, 30 % data,
    zstd, onto a loop device with direct I/O: 0.89 s with O_DIRECT, 1.32 s through the page
    cache, median of 5, and 1.06 vs 1.58 CPU seconds; progress is honest too).
    ``read_timeout``: seconds without a byte before a connection counts as stalled and is
    resumed. ``max_attempts``: consecutive failed attempts (without progress) before giving up.
    ``before_open``: run once every refusal that needs no disk has passed (checksum file and
    signatures checked), right before the disk is opened: a RAID1 root's members are wiped
    there (:func:`pyinit.raid.wipe`), so a refused image leaves them untouched too.
    """
    start = clock()
    check_destination(req.device, proc=proc, sysfs=sysfs, allow_regular_file=allow_regular_file)
    sigs = signature.plan(keyring=req.keyring, url=req.url, checksum_url=req.checksum_url,
                          signature_url=req.signature_url,
                          checksum_signature_url=req.checksum_signature_url,
                          conventional=req.auth is None)  # auth: an OCI registry's blob
    expected, signer = _expected(req, session=session, sums_signature=sigs.sums_signature)
    verifier = _stream_verifier(req, sigs.image_signature, session)
    if before_open is not None:
        before_open()
    target = Target.open(req.device, allow_regular_file=allow_regular_file, direct=direct,
                         sysfs=sysfs)
    try:
        if req.size is not None and target.capacity is not None and req.size > target.capacity:
            raise DiskError(req.device, f"image is larger than the disk: {req.size} bytes > "
                            f"{target.capacity} bytes")
        log.info(f"provision: writing {req.url} to {target.describe()}")
        pipe = Pipeline(req, session=session, target=target, expected=expected,
                         connect_timeout=connect_timeout, read_timeout=read_timeout,
                         max_attempts=max_attempts, delays=delays, io_threads=io_threads,
                         verifier=verifier)
        progress = Progress(interval=progress_interval, clock=clock)
        try:
            pipe.stream(progress)
            verified = pipe.check()
            pipe.writer.write_head()
            progress.tick(pipe.writer.offset, pipe.transfer.fetched, pipe.raw_total,
                          pipe.transfer.total, done=True)  # the last byte is on the disk
            readback = False
            if req.verify:
                assert pipe.raw_sha256 is not None
                disk = readback_sha256(req.device, pipe.writer.offset, direct=target.direct,
                                       buffers=pipe.spare_buffers(),
                                       sector=target.sector)
                if disk != pipe.raw_sha256:
                    raise DiskError(req.device, f"read-back verification failed: sha256 "
                                    f"{disk} on the disk, {pipe.raw_sha256} decoded")
                readback = True
                log.info(f"provision: read-back of {pipe.writer.offset} bytes verified")
        except BaseException as exc:
            _fail_safe(target, req, exc)
            raise
        if pipe.writer.zero_bytes and target.offload_refused():
            log.info("provision: the device advertised Write Zeroes and then refused them: "
                     "the kernel wrote the zero runs itself")
        target.reread_partitions()
    finally:
        target.close()
        if verifier is not None:
            verifier.cleanup()
    if pipe.signer is not None:
        signer = pipe.signer
    t = pipe.transfer
    return WriteResult(device=req.device, url=req.url, format=pipe.format,
                       bytes_written=pipe.writer.offset, bytes_fetched=t.fetched,
                       sha256=pipe.digests["sha256"], file_size=pipe.hashed,
                       checksum_verified=verified,
                       zero_bytes=pipe.writer.zero_bytes, resumes=t.resumes,
                       restarts=t.restarts, seconds=clock() - start,
                       verified_readback=readback, signer=signer)


def _stream_verifier(req: WriteRequest, signature_url: str | None,
                     session: requests.Session) -> signature.StreamVerifier | None:
    """The image's own signature: fetched and prechecked (garbage, a key not in the keyring,
    an expired or revoked key fail here, before the disk is opened), then handed to the
    pipeline to check the bytes as they stream."""
    if signature_url is None:
        return None
    assert req.keyring is not None
    keyring = Path(req.keyring)
    sig = signature.fetch_signature(lambda u: fetch_small(session, u), req.url, signature_url)
    signature.precheck(keyring, sig, url=req.url, signature_url=signature_url)
    return signature.StreamVerifier(keyring, sig, url=req.url, signature_url=signature_url)


def _fail_safe(target: Target, req: WriteRequest, exc: BaseException) -> None:
    if not target.touched:
        return
    if req.preserve_on_error:
        log.error(f"provision: write failed ({exc}); preserveOnError: leaving {req.device} "
                  f"as it is")
        return
    log.error(f"provision: write failed; wiping the partition tables on {req.device}")
    try:
        target.wipe_tables()
        target.reread_partitions()  # forget partitions the kernel may have seen
    except (OSError, PyinitError) as wipe_exc:
        log.error(f"provision: wiping {req.device} failed too: {wipe_exc}")
