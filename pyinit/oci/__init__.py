"""Disk images stored as OCI artifacts in a registry (docs/image.md "OCI registry").

:mod:`pyinit.oci.parse` is pure: the ``oci://`` reference, ``WWW-Authenticate`` challenges and
the manifest's one layer. :mod:`pyinit.oci.registry` does the I/O: the registry's token flow (a
``requests`` auth object, so every request of the write pipeline carries it, Range resumes
included) and the manifest GET. The blob itself is streamed by the ordinary write pipeline."""
