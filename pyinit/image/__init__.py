"""writeImage: stream an image over HTTP onto a block device — fast, verified, resumable, fail-safe.

The modules, in the order the data goes through them (``python -m pyinit.image URL DEVICE`` runs
the writer on a host)::

    formats      which format an image is, from its magic bytes (pure)
    decode       decoders: served bytes in, raw image out, straight into the block
    transfer     the HTTP resume state machine: Range/If-Range and what each answer means (pure)
    sums         SHA256SUMS/SHA512SUMS parsing (pure)
    signature    detached OpenPGP signatures: which are needed (pure), gpgv's verdict (pure),
                 the precheck, and the verifier fed the stream
    zeros        zero runs in a block: which to zero instead of write (pure)
    destination  the target block device: checks, O_EXCL/O_DIRECT open, zeroing, wiping
    diskio       disk writes in flight: on I/O threads, or at once
    writer       blocks onto the target; the first and last MiB held back until verified
    progress     the progress line and event
    pipeline     the stages' threads and the channels between them (fetch, hash, decode, write)
    readback     read-back verification of what was written
    write        the entry point: write_image(WriteRequest) -> WriteResult, and the fail-safe
    __main__     the command line

Memory is bounded by the channels and the block pool, not the image: ~75 MB peak RSS for the CLI
whether the image is 16 MiB or 8 GiB.

* **Formats** by magic bytes: raw, gzip, zstd, xz, bzip2; concatenated members/frames are one
  stream. A truncated stream, a corrupt one and trailing garbage are errors, never success.
  qcow2/vmdk/vhdx/lz4/lzip/7z are refused rather than written raw.
* **Checksums** (``checksum`` or a ``SHA256SUMS``-style ``checksum_url``) of the file as served,
  computed while streaming; sha256 is always computed and reported.
* **Signatures** (with a keyring, docs/security.md "The signature chain"): a signed
  ``checksum_url`` checked before the disk is opened, or the image's own detached signature
  checked by gpgv on the stream as served; the head waits for its ``VALIDSIG``.
* **Zero runs** never go through write(): they are zeroed with ``BLKZEROOUT`` (regular files:
  ``fallocate`` ZERO_RANGE, else PUNCH_HOLE), coalesced across blocks and issued in batches.
  Runs shorter than 1 MiB in the middle of data are written with it (one pwrite instead of
  three syscalls). Nothing is ever skipped without being zeroed: the old contents would show.
* **Resume**: a dropped or stalled connection continues with ``Range: bytes=N-`` validated by
  ``If-Range``; the decoder and the hashes never see the break. A server that ignores ranges, or a
  file that changed, restarts the whole stream from byte 0 (decoder, hashes, offsets reset).
* **Fail-safe**: before the first byte lands, the first and last MiB (MBR, GPT and its backup) are
  zeroed, so a half-written disk never looks bootable, even after a power cut. The image's first
  MiB, and whatever it holds for the disk's last MiB (an image the size of the disk: its GPT
  backup), are written last, after the checksum verified and everything else was fsynced. Any
  failure after writing began zeroes both areas again, unless ``preserve_on_error``.
* **Safety** before the first byte: an existing block device, neither it nor a partition mounted,
  used as swap or held (LVM/MD/dm), opened ``O_EXCL``; an image known to be larger than the disk is
  refused up front (``size``, a raw image's Content-Length, a zstd frame's content size), and in
  any case at the first byte past the end.
"""
