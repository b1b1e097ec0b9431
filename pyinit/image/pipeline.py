"""The pipeline that ties the stages together: threads joined by bounded
:class:`~pyinit.channel.Channel`\\ s, one abort event for all of them::

    fetch ──chunks──► decode ──4 MiB aligned blocks (pool of 8)──► write ──4 I/O threads──► disk
      │                                 │
      ├──chunks──► hash                 └──blocks──► raw hash (only with verify: for the read-back)
      │            (the file as served)
      └──chunks──► signature (only with a signed image: gpgv on its stdin, the file as served)

zlib, lzma, bz2, zstandard, hashlib, socket reads and pwrite all release the GIL, so the stages
overlap on separate cores. Memory is bounded by the channels and the block pool, not the image.
The first stage to fail aborts the others; :meth:`Pipeline.stream` raises its error."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
import zstandard

from pyinit.channel import END, Aborted, Channel, End
from pyinit.errors import ChecksumMismatch, DiskError, FetchError, ImageError, unreachable_reason
from pyinit.fetch import tls_failure
from pyinit.image.decode import NET_CHUNK, RESET, Restarted, Rewind, StreamInput, decoder_for
from pyinit.image.destination import Target, aligned
from pyinit.image.diskio import IO_THREADS, SyncIO, ThreadedIO
from pyinit.image.formats import SNIFF_BYTES, sniff
from pyinit.image.progress import Progress
from pyinit.image.transfer import Transfer
from pyinit.image.writer import Writer
from pyinit.log import get_logger
from pyinit.units import MIB

if TYPE_CHECKING:  # the request is write.py's, which runs the pipeline
    from pyinit.image.signature import StreamVerifier
    from pyinit.image.write import WriteRequest

log = get_logger("pyinit.image")

BLOCK = 4 * MIB  # unit of decode → write hand-off; aligned (mmap) for O_DIRECT
POOL_BLOCKS = 8  # 32 MiB of blocks in flight at most
NET_QUEUE = 16  # network chunks queued per consumer (4 MiB)


class Block:
    """A 4 MiB page-aligned buffer from the pool, shared by the writer and the raw hasher."""

    def __init__(self, pool: Channel[Block]) -> None:
        self.buf = aligned(BLOCK)
        self.view = memoryview(self.buf)
        self.offset = 0
        self.length = 0
        self._pool = pool
        self._refs = 0
        self._lock = threading.Lock()

    def share(self, refs: int) -> None:
        self._refs = refs

    def acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def give_back(self) -> None:
        """Unused: straight back to the pool."""
        self._refs = 0
        self._pool.put_nowait(self)

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self._pool.put_nowait(self)


class Pipeline:
    """One write's stages, the channels and the block pool between them, and what the stages
    found out (the format, the digests of the file as served, the decoded bytes' sha256)."""

    def __init__(self, req: WriteRequest, *, session: requests.Session, target: Target,
                 expected: tuple[str, str] | None, connect_timeout: float, read_timeout: float,
                 max_attempts: int, delays: Callable[[], Iterator[float]],
                 io_threads: int = IO_THREADS, verifier: StreamVerifier | None = None
                 ) -> None:
        self.req = req
        self.url = req.url
        self.session = session
        self.target = target
        self.expected = expected
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.delays = delays
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.transfer = Transfer(req.url, allow_unvalidated_resume=expected is not None)
        self.io_threads = io_threads
        self.io: ThreadedIO | None = None
        self.writer = Writer(target, url=req.url, size=req.size)
        self.dec_ch: Channel[bytes | Rewind | End] = Channel(NET_QUEUE, self.abort)
        self.hash_ch: Channel[bytes | Rewind | End] = Channel(NET_QUEUE, self.abort)
        self.write_ch: Channel[Block | Rewind | End] = Channel(POOL_BLOCKS, self.abort)
        self.verifier = verifier
        self.sig_ch: Channel[bytes | Rewind | End] | None = \
            Channel(NET_QUEUE, self.abort) if verifier is not None else None
        self.signer: str | None = None  # the fingerprint gpgv said VALIDSIG for
        self.raw_ch: Channel[Block | Rewind | End] | None = \
            Channel(POOL_BLOCKS, self.abort) if req.verify else None
        self.pool: Channel[Block] = Channel(POOL_BLOCKS, self.abort)
        self._blocks = [Block(self.pool) for _ in range(POOL_BLOCKS)]
        for blk in self._blocks:
            self.pool.put_nowait(blk)
        self.format = "raw"
        self.raw_total: int | None = req.size
        # Set once the decoder has decided what the raw size is (or is not): no progress line
        # before that, so the first one cannot say "of unknown size" for an image whose zstd
        # frame declares its size a moment later.
        self.size_decided = threading.Event()
        self.digests: dict[str, str] = {}
        self.hashed = 0  # bytes of the file as served that the digests cover
        self.raw_sha256: str | None = None
        self._hash_names = sorted({"sha256", *([expected[0]] if expected else [])})

    # -- running ------------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.abort.set()

    def _stage(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Aborted:
            pass
        except BaseException as exc:  # handed to the coordinator
            self.fail(exc)

    def stream(self, progress: Progress) -> None:
        """Run every stage to the end of the stream. Afterwards everything but the head is on
        the disk and fsynced; raises the first stage's error."""
        stages = [("fetch", self._fetch), ("hash", self._hash), ("decode", self._decode),
                  ("write", self._write)]
        if self.raw_ch is not None:
            stages.append(("rawhash", self._raw_hash))
        if self.sig_ch is not None:
            stages.append(("signature", self._signature))
        threads = [threading.Thread(target=self._stage, args=(fn,), name=f"pyinit-{name}",
                                    daemon=True) for name, fn in stages]
        self.io = ThreadedIO(self.io_threads, abort=self.abort, fail=self.fail)
        self.writer.io = self.io
        for t in threads:
            t.start()
        try:
            alive = threads
            while alive and not self.abort.is_set():
                alive[0].join(0.2)
                alive = [t for t in alive if t.is_alive()]
                if self.size_decided.is_set():
                    progress.tick(self.writer.offset, self.transfer.fetched, self.raw_total,
                                  self.transfer.total)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: stop the stages
            self.fail(exc)
        if self.error is not None:
            # Nothing may touch the disk once the caller starts wiping: wait for every stage
            # but the fetcher (it never writes; a stalled read ends at its timeout), and for
            # the writes in flight.
            for t in threads:
                t.join(None if t.name != "pyinit-fetch" else 1.0)
        self.io.close()
        self.writer.io = SyncIO()  # the head and anything after run in this thread
        if self.error is not None:
            raise self.error

    # -- fetch --------------------------------------------------------------------------------

    def _emit(self, item: bytes | Rewind | End) -> None:
        self.dec_ch.put(item)
        self.hash_ch.put(item)
        if self.sig_ch is not None:
            self.sig_ch.put(item)

    def _restart(self, reason: str) -> None:
        self.transfer.restart(reason)
        log.warning(f"provision: {reason}; restarting {self.url} from byte 0")
        self._emit(RESET)

    def _fetch(self) -> None:
        t = self.transfer
        delays = self.delays()
        failures = 0

        def failed(reason: str) -> None:
            nonlocal failures
            failures += 1
            if failures >= self.max_attempts:
                raise FetchError(self.url, f"{reason} (gave up after {failures} attempts)",
                                 retryable=True)
            delay = next(delays)
            log.warning(f"provision: {reason}; attempt {failures + 1}/{self.max_attempts} "
                        f"from byte {t.offset} in {delay:.1f} s")
            if self.abort.wait(delay):
                raise Aborted

        while True:
            if self.abort.is_set():
                raise Aborted
            if t.offset and not t.can_resume():
                self._restart("the server sent no ETag or Last-Modified to resume against")
            try:
                resp = self.session.get(self.url, headers=t.request_headers(), stream=True,
                                        timeout=self.timeout, auth=self.req.auth)
            except requests.exceptions.SSLError as exc:
                raise tls_failure(self.url, exc, self.session.verify) from exc
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema) as exc:
                raise FetchError(self.url, f"{type(exc).__name__}: {exc}") from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                host = urlsplit(self.url).hostname
                failed(f"unreachable: {unreachable_reason(exc, host)}")
                continue
            except FetchError as exc:  # from req.auth: a token server that may come back
                if not exc.retryable:
                    raise
                failed(str(exc))
                continue
            with contextlib.closing(resp):
                decision = t.on_response(resp.status_code, resp.headers)
                if decision.action == "fatal":
                    raise FetchError(self.url, decision.reason, status=resp.status_code)
                if decision.action == "retry":
                    failed(decision.reason)
                    continue
                if decision.action == "refetch":
                    self._restart(decision.reason)
                    continue
                if decision.action == "restart":
                    log.warning(f"provision: {decision.reason}; restarting {self.url} "
                                f"from byte 0")
                    self._emit(RESET)
                elif decision.action == "continue":
                    log.info(f"provision: resuming {self.url} at byte {t.offset}")
                got = 0
                try:
                    while True:
                        data = resp.raw.read(NET_CHUNK, decode_content=False)
                        if not data:
                            break
                        got += len(data)
                        t.on_data(len(data))
                        self._emit(data)
                except (urllib3.exceptions.HTTPError, requests.RequestException,
                        OSError) as exc:
                    if got:  # progress since the last failure: a fresh budget
                        failures, delays = 0, self.delays()
                    stalled = isinstance(exc, urllib3.exceptions.ReadTimeoutError)
                    failed(f"stalled for {self.timeout[1]:g} s" if stalled
                           else f"connection lost ({type(exc).__name__})")
                    continue
            if not t.complete():
                if got:
                    failures, delays = 0, self.delays()
                failed(f"the server ended the body at byte {t.offset} of {t.total}")
                continue
            self._emit(END)
            return

    # -- hash ---------------------------------------------------------------------------------

    def _hash(self) -> None:
        hashes = [hashlib.new(name) for name in self._hash_names]
        hashed = 0
        while True:
            item = self.hash_ch.get()
            if item is RESET:
                hashes = [hashlib.new(name) for name in self._hash_names]
                hashed = 0
            elif item is END:
                self.digests = {h.name: h.hexdigest() for h in hashes}
                self.hashed = hashed
                return
            else:
                for h in hashes:
                    h.update(item)
                hashed += len(item)

    # -- signature ----------------------------------------------------------------------------

    def _signature(self) -> None:
        """gpgv over the file as served; a new gpgv when the stream starts over. Its verdict
        fails the pipeline (and so the write, before the head) unless VALIDSIG."""
        assert self.sig_ch is not None and self.verifier is not None
        v = self.verifier
        try:
            v.start()
            while True:
                item = self.sig_ch.get()
                if item is RESET:
                    v.restart()
                elif item is END:
                    self.signer = v.finish().fingerprint
                    return
                else:
                    v.feed(item)
        finally:
            v.close()

    # -- decode -------------------------------------------------------------------------------

    def _send(self, item: Block | Rewind | End) -> None:
        if isinstance(item, Block):
            item.share(2 if self.raw_ch is not None else 1)
        self.write_ch.put(item)
        if self.raw_ch is not None:
            self.raw_ch.put(item)

    def _check_declared_size(self, kind: str, head: bytes) -> None:
        """Learn the raw size (progress is measured against it) and refuse an image known to be
        larger than the disk before its first byte is written."""
        frame: int | None = None
        if kind == "zstd":
            try:
                frame = zstandard.frame_content_size(head)  # -1: the frame does not say
            except zstandard.ZstdError:
                frame = None
            frame = frame if frame is not None and frame >= 0 else None
        if self.req.size is not None:
            self.raw_total, source = self.req.size, "the action's size"
        elif kind == "raw" and self.transfer.total is not None:
            self.raw_total, source = self.transfer.total, "its Content-Length"
        elif frame is not None:
            self.raw_total, source = frame, "its zstd frame header"
        else:
            self.raw_total = None
            source = ("no Content-Length" if kind == "raw" else
                      "the zstd frame does not declare it" if kind == "zstd" else
                      f"{kind} does not declare it")
        self.size_decided.set()
        if self.raw_total is not None:
            log.info(f"provision: raw size {self.raw_total} bytes ({source})")
        else:
            log.info(f"provision: raw size unknown ({source}; no size in the action): "
                     f"progress in bytes written")
        cap = self.target.capacity
        if cap is None:
            return
        if kind == "raw" and self.transfer.total is not None and self.transfer.total > cap:
            raise DiskError(self.target.path, f"image is larger than the disk: "
                            f"{self.transfer.total} bytes > {cap} bytes")
        if frame is not None and frame > cap:
            raise DiskError(self.target.path, f"image is larger than the disk: its first "
                            f"zstd frame alone is {frame} bytes > {cap} bytes")

    def _decode(self) -> None:
        src = StreamInput(self.dec_ch.get)
        while True:
            try:
                head = src.peek(SNIFF_BYTES)
                if not head:
                    raise ImageError(self.url, "empty image")
                kind = sniff(head)
                decoder = decoder_for(kind, src, self.url)
                log.info(f"provision: {self.url} is {kind}")
                self.format = kind
                self._check_declared_size(kind, head)
                offset = 0
                while True:
                    blk: Block = self.pool.get()
                    try:
                        n = decoder.readinto(blk.view)
                    except BaseException:
                        blk.give_back()
                        raise
                    if n:
                        blk.offset, blk.length = offset, n
                        offset += n
                        self._send(blk)
                    else:
                        blk.give_back()
                    if n < BLOCK:
                        break
                decoder.finish()
                self._send(END)
                return
            except Restarted:
                self._send(RESET)

    # -- write --------------------------------------------------------------------------------

    def _write(self) -> None:
        w = self.writer
        while True:
            item = self.write_ch.get()
            if item is RESET:
                w.reset()
            elif item is END:
                w.finish()
                return
            else:
                try:
                    w.block(item.buf, item.offset, item.length, item)
                finally:
                    item.release()

    def _raw_hash(self) -> None:
        assert self.raw_ch is not None
        h = hashlib.sha256()
        while True:
            item = self.raw_ch.get()
            if item is RESET:
                h = hashlib.sha256()
            elif item is END:
                self.raw_sha256 = h.hexdigest()
                return
            else:
                try:
                    h.update(item.view[:item.length])
                finally:
                    item.release()

    # -- after the stream ---------------------------------------------------------------------

    def spare_buffers(self) -> list[mmap.mmap]:
        """The block buffers, free once the stream is done (read-back reuses them)."""
        return [blk.buf for blk in self._blocks[:4]]

    def check(self) -> str | None:
        """The declared size and the checksum; returns the algorithm verified, if any."""
        written = self.writer.offset
        if self.req.size is not None and written != self.req.size:
            raise ImageError(self.url, f"image is {written} bytes, its declared size is "
                             f"{self.req.size}")
        if self.expected is None:
            return None
        algo, want = self.expected
        got = self.digests[algo]
        if got != want:
            raise ChecksumMismatch(self.url, f"{algo}:{want}", f"{algo}:{got}")
        log.info(f"provision: {algo} of {self.url} verified")
        return algo
