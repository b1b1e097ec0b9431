"""The golden image's root filesystem as data: Tree, the loaders (directory, tarball, OCI layout,
docker save archive), customisation and kernel discovery. Inputs are built here with tarfile."""

from __future__ import annotations

import base64
import bz2
import errno
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import socket
import stat
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from pyinit.errors import ConfigError
from pyinit_build.errors import BuildError
from pyinit_build.golden import tree as gt
from pyinit_build.golden.tree import Entry, Tree

EPOCH = 1_700_000_000
CAPABILITY = b"\x01\x00\x00\x02\x00\x20\x00\x00\xff\xfe"  # not UTF-8: exercises the round trip

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644,
           uid: int = 0, gid: int = 0, mtime: int = EPOCH, linkname: str = "",
           dev: tuple[int, int] = (0, 0), xattrs: dict[str, bytes] | None = None) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in xattrs.items()}
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    return member(name, tarfile.DIRTYPE, mode=mode)


def tar_bytes(members: list[Member], compress: str = "none") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    compressors: dict[str, Callable[[bytes], bytes]] = {
        "none": lambda b: b, "gzip": lambda b: gzip.compress(b, mtime=0), "bz2": bz2.compress,
        "xz": lzma.compress, "zstd": zstandard.ZstdCompressor().compress}
    return compressors[compress](raw)


LAYER1 = [
    directory("etc/"),
    member("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
    member("etc/old", data=b"stale"),
    directory("usr/"),
    directory("usr/bin/"),
    member("usr/bin/su", data=b"su binary", mode=0o4755),
    member("usr/bin/su2", tarfile.LNKTYPE, linkname="usr/bin/su", mode=0o4755),
    member("usr/bin/ping", data=b"ping", mode=0o755, xattrs={"security.capability": CAPABILITY}),
    member("bin", tarfile.SYMTYPE, linkname="usr/bin", mode=0o777),
    directory("dev/"),
    member("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
    member("dev/initctl", tarfile.FIFOTYPE, mode=0o600),
    directory("opt/"),
    member("opt/a", data=b"a"),
    directory("opt/sub/"),
    member("opt/sub/b", data=b"b"),
    member("home/user/notes", data=b"notes", mode=0o600, uid=1000, gid=1000, mtime=EPOCH - 5),
]
LAYER2 = [
    member("etc/.wh.old"),
    directory("opt/", mode=0o750),
    member("opt/new", data=b"new"),
    member("opt/.wh..wh..opq"),  # after its new sibling: must not hide it
    member("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home:/bin/sh\n"),
]
EXPECTED = [
    "/ dir 755 0:0",
    "/bin symlink 777 0:0 -> usr/bin",
    "/dev dir 755 0:0",
    "/dev/initctl fifo 600 0:0",
    "/dev/null chardev 666 0:0 (1, 3)",
    "/etc dir 755 0:0",
    "/etc/passwd file 644 0:0 "
    "b'root:x:0:0:root:/root:/bin/sh\\nuser:x:1000:1000::/home:/bin/sh\\n'",
    "/home dir 755 0:0",
    "/home/user dir 755 0:0",
    "/home/user/notes file 600 1000:1000 b'notes'",
    "/opt dir 750 0:0",
    "/opt/new file 644 0:0 b'new'",
    "/usr dir 755 0:0",
    "/usr/bin dir 755 0:0",
    "/usr/bin/ping file 755 0:0 b'ping' security.capability",
    "/usr/bin/su file 4755 0:0 b'su binary'",
    "/usr/bin/su2 hardlink 4755 0:0 => /usr/bin/su",
]


def entry(tree: Tree, path: str) -> Entry:
    found = tree.get(path)
    assert found is not None, path
    return found


def describe(tree: Tree) -> list[str]:
    lines = []
    for e in tree.entries():
        line = f"{e.path} {e.kind} {e.mode:o} {e.uid}:{e.gid}"
        if e.kind == "file":
            assert e.source is not None
            content = e.source.read_bytes()
            assert (len(content), hashlib.sha256(content).hexdigest()) == (e.size, e.sha256)
            line += f" {content!r}"
        elif e.kind == "symlink":
            line += f" -> {e.target}"
        elif e.kind == "hardlink":
            line += f" => {e.target}"
        elif e.kind in ("chardev", "blockdev"):
            line += f" {e.rdev}"
        lines.append(line + "".join(f" {name}" for name, _ in e.xattrs))
    return lines


# --- image builders -------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(root: Path, data: bytes) -> dict[str, object]:
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / sha(data)[7:]).write_bytes(data)
    return {"digest": sha(data), "size": len(data)}


def put_image(root: Path, layers: list[tuple[list[Member], str]]) -> dict[str, object]:
    """Config, layers and manifest blobs of one image; returns the manifest's descriptor."""
    types = {"none": "tar", "gzip": "tar+gzip", "zstd": "tar+zstd"}
    config = {"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [sha(tar_bytes(m)) for m, _ in layers]}}
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **put_blob(root, json.dumps(config).encode())},
        "layers": [{"mediaType": f"application/vnd.oci.image.layer.v1.{types[c]}",
                    **put_blob(root, tar_bytes(m, c))} for m, c in layers]}
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            **put_blob(root, json.dumps(manifest).encode())}


def oci_layout(root: Path, layers: list[tuple[list[Member], str]]) -> Path:
    root.mkdir(parents=True)
    descriptor = put_image(root, layers)
    descriptor["platform"] = {"os": "linux", "architecture": "amd64"}
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    return root


def legacy_docker_archive(path: Path, layers: list[list[Member]]) -> Path:
    """``docker save`` before Docker 25: <id>/layer.tar, <config>.json, manifest.json last."""
    files: list[Member] = []
    names = []
    for i, layer in enumerate(layers):
        layer_id = hashlib.sha256(str(i).encode()).hexdigest()
        files += [directory(f"{layer_id}/"), member(f"{layer_id}/VERSION", data=b"1.0"),
                  member(f"{layer_id}/layer.tar", data=tar_bytes(layer))]
        names.append(f"{layer_id}/layer.tar")
    config = json.dumps({"rootfs": {"type": "layers",
                                    "diff_ids": [sha(tar_bytes(m)) for m in layers]}}).encode()
    config_name = f"{sha(config)[7:]}.json"
    manifest = [{"Config": config_name, "RepoTags": ["demo:latest"], "Layers": names}]
    files += [member(config_name, data=config),
              member("repositories", data=b"{}"),
              member("manifest.json", data=json.dumps(manifest).encode())]
    path.write_bytes(tar_bytes(files))
    return path


def archive_of(directory_path: Path, path: Path, extra: list[Member], compress: str) -> Path:
    """A tarball of an OCI layout directory (what Docker 25+ ``docker save`` writes)."""
    files: list[Member] = []
    for host in sorted(directory_path.rglob("*")):
        name = host.relative_to(directory_path).as_posix()
        files.append(directory(name + "/") if host.is_dir()
                     else member(name, data=host.read_bytes()))
    path.write_bytes(tar_bytes(files + extra, compress))
    return path


# --- OCI layouts and docker save archives ---------------------------------------------------

def test_oci_layout_applies_layers_with_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    layout = oci_layout(tmp_path / "oci", [(LAYER1, "gzip"), (LAYER2, "zstd")])
    tree = gt.load_rootfs(layout, tmp_path / "work")
    assert describe(tree) == EXPECTED
    assert tree.get("/usr/bin/ping") == Entry(
        "/usr/bin/ping", "file", 0o755, 0, 0, EPOCH, 4, entry(tree, "/usr/bin/ping").source,
        xattrs=(("security.capability", CAPABILITY),), sha256=sha(b"ping")[7:])
    sources = [e.source for e in tree.entries() if e.kind == "file"]
    assert len(set(sources)) == len(sources)
    assert all(s is not None and s.parent == tmp_path / "work" for s in sources)


def test_legacy_docker_save_archive_gives_the_same_tree(tmp_path: Path) -> None:
    oci = gt.load_rootfs(oci_layout(tmp_path / "oci", [(LAYER1, "gzip"), (LAYER2, "none")]),
                         tmp_path / "w1")
    archive = legacy_docker_archive(tmp_path / "image.tar", [LAYER1, LAYER2])
    docker = gt.load_rootfs(archive, tmp_path / "w2")
    assert describe(docker) == EXPECTED
    assert docker.digest() == oci.digest()


def test_oci_archive_picks_linux_amd64_from_a_nested_index(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    root.mkdir()
    amd64 = put_image(root, [([member("arch", data=b"amd64")], "gzip")])
    arm64 = put_image(root, [([member("arch", data=b"arm64")], "gzip")])
    attestation = put_image(root, [([member("sbom.json", data=b"{}")], "none")])
    image_index = {"schemaVersion": 2, "manifests": [
        {**arm64, "platform": {"os": "linux", "architecture": "arm64"}},
        {**attestation, "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        {**amd64, "platform": {"os": "linux", "architecture": "amd64"}}]}
    top = {"mediaType": "application/vnd.oci.image.index.v1+json",
           **put_blob(root, json.dumps(image_index).encode())}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    docker_manifest = json.dumps([{"Config": "blobs/sha256/" + "0" * 64, "Layers": []}])
    archive = archive_of(root, tmp_path / "image.tar.gz",
                         [member("manifest.json", data=docker_manifest.encode())], "gzip")
    tree = gt.load_rootfs(archive, tmp_path / "work")
    assert describe(tree) == ["/ dir 755 0:0", "/arch file 644 0:0 b'amd64'"]
    assert not list((tmp_path / "work").glob("archive-*"))  # the decompressed copy is gone


def test_an_index_without_linux_amd64_is_refused(tmp_path: Path) -> None:
    root = oci_layout(tmp_path / "oci", [([member("x")], "none")])
    index = json.loads((root / "index.json").read_text())
    other = put_image(root, [([member("y")], "none")])
    index["manifests"] = [{**index["manifests"][0], "platform": {"os": "linux",
                                                                  "architecture": "arm64"}},
                          {**other, "platform": {"os": "linux", "architecture": "s390x"}}]
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(BuildError, match=r"2 images and none for linux/amd64 "
                                         r"\(linux/arm64, linux/s390x\)"):
        gt.load_oci(root, tmp_path / "work")


@pytest.mark.parametrize("damage", ["replace", "flip"])
def test_a_layer_not_matching_its_digest_is_refused(tmp_path: Path, damage: str) -> None:
    layout = oci_layout(tmp_path / "oci", [(LAYER1, "gzip")])
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    digest = json.loads((layout / "blobs/sha256" / manifest[7:]).read_bytes())["layers"][0][
        "digest"]
    blob = layout / "blobs/sha256" / digest[7:]
    data = bytearray(blob.read_bytes())
    if damage == "replace":  # a valid layer, but not the one the manifest names
        data = bytearray(tar_bytes(LAYER2, "gzip"))
    else:  # a corrupted gzip stream: the digest, not the decompressor, is reported
        data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(BuildError, match=f"content does not match digest {digest}"):
        gt.load_rootfs(layout, tmp_path / "work")


def test_a_legacy_layer_not_matching_its_diff_id_is_refused(tmp_path: Path) -> None:
    archive = legacy_docker_archive(tmp_path / "image.tar", [LAYER1])
    with tarfile.open(archive) as tf:
        members = [(m, f.read() if (f := tf.extractfile(m)) else b"") for m in tf.getmembers()]
    layer = next(i for i, (m, _) in enumerate(members) if m.name.endswith("layer.tar"))
    members[layer] = member(members[layer][0].name, data=tar_bytes(LAYER2))
    archive.write_bytes(tar_bytes(members))
    with pytest.raises(BuildError, match=r"layer.tar: content does not match digest sha256:"):
        gt.load_rootfs(archive, tmp_path / "work")


def test_a_layer_is_hashed_to_its_end(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    oci_layout(root, [([member("x", data=b"x")], "none")])
    padded = tar_bytes([member("x", data=b"x")]) + bytes(1 << 20)  # zeros after the end marker
    manifest = {"schemaVersion": 2, "config": put_blob(root, b"{}"), "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", **put_blob(root, padded)}]}
    index = {"schemaVersion": 2, "manifests": [put_blob(root, json.dumps(manifest).encode())]}
    (root / "index.json").write_text(json.dumps(index))
    assert describe(gt.load_oci(root, tmp_path / "work")) == ["/ dir 755 0:0",
                                                              "/x file 644 0:0 b'x'"]


def test_whiteouts_hide_only_lower_layers(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    gt.apply_tar(tree, io.BytesIO(tar_bytes([member("d/x", data=b"1")])), tmp_path, layer=True)
    gt.apply_tar(tree, io.BytesIO(tar_bytes([
        member("d/y", data=b"2"), member("d/.wh.y"), member("d/.wh.x"),
        member("d/.wh..wh..plnk")])), tmp_path, layer=True)
    assert [e.path for e in tree.entries()] == ["/", "/d", "/d/y"]


# --- plain tarballs -------------------------------------------------------------------------

@pytest.mark.parametrize("compress", ["none", "gzip", "bz2", "xz", "zstd"])
def test_a_docker_export_tarball_is_one_plain_layer(tmp_path: Path, compress: str) -> None:
    export = [directory("./"), directory("./etc/"), member("./etc/.wh.keep", data=b"kept"),
              member("./etc//hostname", data=b"box\n"),
              member("./sbin/init", tarfile.SYMTYPE, linkname="/lib/systemd/systemd",
                     mode=0o777)]
    path = tmp_path / "export.tar"
    path.write_bytes(tar_bytes(export, compress))
    tree = gt.load_rootfs(path, tmp_path / "work")
    assert describe(tree) == [
        "/ dir 755 0:0", "/etc dir 755 0:0", "/etc/.wh.keep file 644 0:0 b'kept'",
        "/etc/hostname file 644 0:0 b'box\\n'", "/sbin dir 755 0:0",
        "/sbin/init symlink 777 0:0 -> /lib/systemd/systemd"]


def test_tarballs_are_sniffed_like_images(tmp_path: Path) -> None:
    """One sniffer for images and tarballs (pyinit.image.formats): a zstd stream that starts
    with a skippable frame (pzstd writes one) is zstd here too."""
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    path = tmp_path / "export.tar.zst"
    path.write_bytes(skippable + tar_bytes([member("etc/hostname", data=b"box\n")], "zstd"))
    tree = gt.load_rootfs(path, tmp_path / "work")
    assert "/etc/hostname file 644 0:0 b'box\\n'" in describe(tree)


def test_a_member_with_dotdot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.tar"
    path.write_bytes(tar_bytes([member("etc/../../escape", data=b"x")]))
    with pytest.raises(BuildError, match=r"evil.tar: member 'etc/../../escape': '..'"):
        gt.load_rootfs(path, tmp_path / "work")


def test_a_hard_link_to_a_missing_file_is_refused(tmp_path: Path) -> None:
    data = tar_bytes([member("bin/a", tarfile.LNKTYPE, linkname="bin/missing")])
    with pytest.raises(BuildError, match="/bin/a: hard link target /bin/missing is not a file"):
        gt.apply_tar(Tree(tmp_path), io.BytesIO(data), tmp_path, layer=False)


def test_load_rootfs_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n" * 200)
    with pytest.raises(BuildError, match=r"notes\.txt: not a directory, tarball or OCI/docker"):
        gt.load_rootfs(tmp_path / "notes.txt", tmp_path / "work")
    with pytest.raises(BuildError, match="missing: no such file or directory"):
        gt.load_rootfs(tmp_path / "missing", tmp_path / "work")
    (tmp_path / "broken.tar.gz").write_bytes(gzip.compress(b"not a tar" * 100))
    with pytest.raises(BuildError, match=r"broken\.tar\.gz: not a directory, tarball"):
        gt.load_rootfs(tmp_path / "broken.tar.gz", tmp_path / "work")


# --- directories ----------------------------------------------------------------------------

def test_load_dir_keeps_links_fifos_modes_and_xattrs(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/su").write_bytes(b"su binary")
    os.chmod(root / "usr/bin/su", 0o4755)
    os.link(root / "usr/bin/su", root / "usr/bin/a-link")
    (root / "bin").symlink_to("usr/bin")
    os.mkfifo(root / "fifo", 0o600)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "socket"))
        with caplog.at_level(logging.WARNING):
            tree = gt.load_dir(root, tmp_path / "work")
    assert "socket: skipping a socket" in caplog.text
    owner = "0:0"  # root, or the current user mapped to root
    assert describe(tree) == [
        f"/ dir 755 {owner}",
        f"/bin symlink 777 {owner} -> usr/bin",
        f"/fifo fifo 600 {owner}",
        f"/usr dir 755 {owner}",
        f"/usr/bin dir 755 {owner}",
        f"/usr/bin/a-link file 4755 {owner} b'su binary'",
        f"/usr/bin/su hardlink 4755 {owner} => /usr/bin/a-link"]
    assert entry(tree, "/usr/bin/a-link").source == root / "usr/bin/a-link"


def test_load_dir_reads_xattrs(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "ping").write_bytes(b"ping")
    try:
        os.setxattr(root / "ping", "user.note", b"\x00\xffvalue")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            pytest.skip(f"no user xattrs on {tmp_path}")
        raise
    tree = gt.load_dir(root, tmp_path / "work")
    assert entry(tree, "/ping").xattrs == (("user.note", b"\x00\xffvalue"),)


def test_load_dir_keeps_device_nodes(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    try:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    except PermissionError:
        pytest.skip("creating device nodes needs CAP_MKNOD")
    os.chmod(root / "null", 0o666)  # mknod applies the umask
    os.chmod(root / "sda", 0o660)
    assert describe(gt.load_dir(root, tmp_path / "work"))[1:] == [
        "/null chardev 666 0:0 (1, 3)", "/sda blockdev 660 0:0 (8, 0)"]


def test_load_dir_maps_the_current_user_to_root(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "mine").write_bytes(b"")
    (root / "theirs").write_bytes(b"")
    me = os.geteuid()
    if me == 0:  # pretend to be an ordinary user owning the copy
        me = 4242
        for path in (root, root / "mine"):
            os.chown(path, me, me)
        os.chown(root / "theirs", 2000, 2001)
    monkeypatch.setattr(os, "geteuid", lambda: me)
    tree = gt.load_dir(root, tmp_path / "work")
    assert (entry(tree, "/").uid, entry(tree, "/").gid) == (0, 0)
    assert (entry(tree, "/mine").uid, entry(tree, "/mine").gid) == (0, 0)
    theirs = tree.get("/theirs")
    assert theirs is not None
    st = os.stat(root / "theirs")
    if st.st_uid != me:
        assert (theirs.uid, theirs.gid) == (st.st_uid, st.st_gid)


# --- the Tree -------------------------------------------------------------------------------

def test_add_creates_parents_and_sorts_by_components(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/a-b", b"x", mtime=3)
    tree.write_file("/a/b/c", b"y", mode=0o600, uid=5, gid=6, mtime=7)
    assert [(e.path, e.kind, e.mode, e.uid, e.mtime) for e in tree.entries()] == [
        ("/", "dir", 0o755, 0, 0), ("/a", "dir", 0o755, 0, 7), ("/a/b", "dir", 0o755, 0, 7),
        ("/a/b/c", "file", 0o600, 5, 7), ("/a-b", "file", 0o644, 0, 3)]
    assert [e.path for e in tree.children("/")] == ["/a", "/a-b"]
    assert tree.children("/a-b") == []
    assert len(tree) == 5 and "/a/b" in tree and "/nope" not in tree


def test_replacing_a_dir_drops_its_subtree_unless_by_a_dir(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/d/x", b"x", mtime=1)
    tree.mkdir("/d", mode=0o700, mtime=2)
    assert [e.path for e in tree.entries()] == ["/", "/d", "/d/x"]
    assert tree.get("/d") == Entry("/d", "dir", 0o700, mtime=2)
    tree.symlink("/d", "elsewhere", mtime=3)
    assert [e.path for e in tree.entries()] == ["/", "/d"]
    with pytest.raises(BuildError, match="/d/y: parent /d is a symlink, not a directory"):
        tree.write_file("/d/y", b"", mtime=4)
    tree.mkdir("/d", mtime=5)
    assert tree.get("/d") == Entry("/d", "dir", 0o755, mtime=5)


def test_remove_takes_the_subtree_and_ignores_absent_paths(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/a/b/c", b"", mtime=1)
    tree.write_file("/ab", b"", mtime=1)
    tree.remove("/a")
    tree.remove("/absent")
    assert [e.path for e in tree.entries()] == ["/", "/ab"]
    with pytest.raises(BuildError, match="cannot remove /"):
        tree.remove("/")
    with pytest.raises(BuildError, match="not a normalised absolute path"):
        tree.add(Entry("/a/../b", "dir"))


def test_hard_link_groups_are_canonical(tmp_path: Path) -> None:
    forward = Tree(tmp_path)
    z = forward.write_file("/z", b"data", mode=0o4755, mtime=9)
    forward.add(Entry("/m", "hardlink", target="/z"))
    forward.add(Entry("/a", "hardlink", target="/m"))  # a link to a link joins the group
    assert [(e.path, e.kind, e.target, e.mode) for e in forward.entries()] == [
        ("/", "dir", "", 0o755), ("/a", "file", "", 0o4755), ("/m", "hardlink", "/a", 0o4755),
        ("/z", "hardlink", "/a", 0o4755)]
    backward = Tree(tmp_path)
    backward.add(Entry("/a", "file", 0o4755, mtime=9, size=4, source=z.source,
                       sha256=z.sha256))
    backward.add(Entry("/z", "hardlink", target="/a"))
    backward.add(Entry("/m", "hardlink", target="/a"))
    assert backward.digest() == forward.digest()
    forward.remove("/a")  # the links keep the content
    assert [(e.path, e.kind, e.target) for e in forward.entries()] == [
        ("/", "dir", ""), ("/m", "file", ""), ("/z", "hardlink", "/m")]
    forward.write_file("/m", b"new", mtime=10)  # a new inode: /z keeps the old content
    assert forward.read_bytes("/z") == b"data" and forward.read_bytes("/m") == b"new"
    assert entry(forward, "/z").kind == "file"


def test_sizes_times_and_digest(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/one", b"x", mtime=5)
    tree.write_file("/two", b"y" * 4097, mtime=50)
    tree.symlink("/link", "one", mtime=7)
    assert tree.content_size() == 4096 + 4096 + 8192 + 4096
    assert tree.newest_mtime() == 50
    before = tree.digest()
    tree.clamp_mtimes(10)
    assert [e.mtime for e in tree.entries()] == [0, 7, 5, 10]
    assert tree.digest() != before


def test_digest_is_stable_and_sees_one_byte(tmp_path: Path) -> None:
    layout = oci_layout(tmp_path / "oci", [(LAYER1, "gzip"), (LAYER2, "zstd")])
    first = gt.load_rootfs(layout, tmp_path / "w1")
    assert gt.load_rootfs(layout, tmp_path / "w2").digest() == first.digest()
    reordered = Tree(tmp_path / "w3")
    for e in sorted(first.entries(), key=lambda e: e.kind != "file"):  # files before dirs
        reordered.add(e)
    assert reordered.digest() == first.digest()
    changed = [*LAYER2[:-1], member("etc/passwd", data=LAYER2[-1][1][:-1] + b"!")]
    other = oci_layout(tmp_path / "oci2", [(LAYER1, "gzip"), (changed, "zstd")])
    assert gt.load_rootfs(other, tmp_path / "w4").digest() != first.digest()


def test_materialize_stages_content_links_and_times(tmp_path: Path) -> None:
    layout = oci_layout(tmp_path / "oci", [(LAYER1, "gzip"), (LAYER2, "zstd")])
    tree = gt.load_rootfs(layout, tmp_path / "work")
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"host file")
    os.chmod(foreign, 0o600)
    tree.add(Entry("/etc/foreign", "file", 0o640, mtime=EPOCH - 9, size=9, source=foreign,
                   sha256=sha(b"host file")[7:]))
    staging = tmp_path / "staging"
    tree.materialize(staging)

    def st(path: str) -> os.stat_result:
        return os.lstat(staging / path)

    assert sorted(str(p.relative_to(staging)) for p in staging.rglob("*")) == [
        "bin", "dev", "etc", "etc/foreign", "etc/passwd", "home", "home/user",
        "home/user/notes", "opt", "opt/new", "usr", "usr/bin", "usr/bin/ping", "usr/bin/su",
        "usr/bin/su2"]
    assert os.readlink(staging / "bin") == "usr/bin"
    assert st("usr/bin/su").st_ino == st("usr/bin/su2").st_ino
    assert (staging / "usr/bin/su").read_bytes() == b"su binary"
    assert [stat.S_IMODE(st(p).st_mode) for p in ("usr/bin/su", "home/user/notes", "etc")] == [
        0o755, 0o644, 0o755]
    assert st("home/user/notes").st_mtime == EPOCH - 5
    assert st("bin").st_mtime == EPOCH and st("opt").st_mtime == EPOCH
    assert os.stat(staging).st_mtime == 0
    # Foreign content is copied, so the host file keeps its inode, mode and mtime.
    assert st("etc/foreign").st_ino != os.stat(foreign).st_ino
    assert stat.S_IMODE(os.stat(foreign).st_mode) == 0o600
    assert st("etc/foreign").st_mtime == EPOCH - 9
    with pytest.raises(BuildError, match="staging directory is not empty"):
        tree.materialize(staging)


# --- customisation --------------------------------------------------------------------------

def test_set_hostname_writes_hostname_and_hosts(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/etc/hostname", b"old\n", mode=0o600, uid=3, mtime=1)
    gt.set_hostname(tree, "node-7.example.com", mtime=100)
    assert tree.read_bytes("/etc/hostname") == b"node-7.example.com\n"
    hostname = tree.get("/etc/hostname")
    assert hostname is not None and (hostname.mode, hostname.uid, hostname.mtime) == (0o600, 3,
                                                                                      100)
    assert tree.read_bytes("/etc/hosts") == (
        b"127.0.0.1\tlocalhost\n127.0.1.1\tnode-7.example.com\tnode-7\n"
        b"::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
        b"ff02::2\tip6-allrouters\n")
    tree.write_file("/etc/hosts", b"# mine\n127.0.0.1 localhost\n127.0.1.1 old\n10.0.0.1 db\n",
                    mtime=1)
    gt.set_hostname(tree, "web")
    assert tree.read_bytes("/etc/hosts") == (
        b"# mine\n127.0.0.1 localhost\n127.0.1.1\tweb\n10.0.0.1 db\n")
    assert entry(tree, "/etc/hosts").mtime == 100


@pytest.mark.parametrize("name", ["", "-lead", "trail-", "under_score", "a" * 64, "a..b", "dot.",
                                  "sp ace", "x." * 32 + "x"])
def test_set_hostname_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"^hostname: .* is not a valid hostname"):
        gt.set_hostname(Tree(tmp_path), name, mtime=0)


HASH = "$y$j9T$abcdefghijklmnopqrstu.$0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg"


def test_set_root_password_hash_replaces_roots_field(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/etc/shadow", b"daemon:*:19000:0:99999:7:::\nroot:*:19000:0:99999:7:::\n",
                    mode=0o640, gid=42, mtime=1)
    gt.set_root_password_hash(tree, HASH, mtime=2)
    assert tree.read_bytes("/etc/shadow") == (
        f"daemon:*:19000:0:99999:7:::\nroot:{HASH}:19000:0:99999:7:::\n".encode())
    shadow = tree.get("/etc/shadow")
    assert shadow is not None and (shadow.mode, shadow.gid) == (0o640, 42)


def test_set_root_password_hash_creates_shadow(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/etc/group", b"root:x:0:\nshadow:x:42:\n", mtime=1)
    gt.set_root_password_hash(tree, "!", mtime=86400 * 20000)
    assert tree.read_bytes("/etc/shadow") == b"root:!:20000:0:99999:7:::\n"
    shadow = tree.get("/etc/shadow")
    assert shadow is not None and (shadow.mode, shadow.uid, shadow.gid) == (0o640, 0, 42)


@pytest.mark.parametrize("bad", ["hunter2", "", "$6$salt", "$6$salt$ha:sh", "$6$salt$hash\n",
                                 "$6$salt$ha sh", "!!"])
def test_set_root_password_hash_refuses_non_hashes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^root_password_hash: not a crypt") as info:
        gt.set_root_password_hash(Tree(tmp_path), bad, mtime=0)
    assert not bad or bad.strip() not in str(info.value)


def ssh_key(kind: str, comment: str = "") -> str:
    blob = struct.pack(">I", len(kind)) + kind.encode() + b"\x00\x00\x00\x20" + bytes(32)
    return f"{kind} {base64.b64encode(blob).decode()}" + (f" {comment}" if comment else "")


def test_add_ssh_keys_appends_without_duplicates(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    ed25519, ecdsa = ssh_key("ssh-ed25519", "me@laptop"), ssh_key("ecdsa-sha2-nistp256")
    tree.write_file("/root/.ssh/authorized_keys", f'from="10.0.0.0/8" {ed25519}'.encode(),
                    mode=0o644, uid=7, mtime=1)
    gt.add_ssh_keys(tree, [ed25519, ecdsa, ecdsa + " again"], mtime=5)
    assert tree.read_bytes("/root/.ssh/authorized_keys") == (
        f'from="10.0.0.0/8" {ed25519}\n{ecdsa}\n'.encode())
    keys, ssh_dir = tree.get("/root/.ssh/authorized_keys"), tree.get("/root/.ssh")
    assert keys is not None and (keys.mode, keys.uid, keys.gid) == (0o600, 0, 0)
    assert ssh_dir is not None and (ssh_dir.mode, ssh_dir.uid) == (0o700, 0)


def test_add_ssh_keys_follows_a_root_symlink(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.symlink("/root", "var/roothome", mtime=1)
    gt.add_ssh_keys(tree, [ssh_key("sk-ssh-ed25519@openssh.com")], mtime=1)
    assert [e.path for e in tree.entries()] == [
        "/", "/root", "/var", "/var/roothome", "/var/roothome/.ssh",
        "/var/roothome/.ssh/authorized_keys"]
    assert entry(tree, "/var/roothome").mode == 0o700


@pytest.mark.parametrize("bad", [
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-ed25519", "ssh-ed25519 not*base64",
    ssh_key("ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1),
    ssh_key("ssh-ed25519") + "\n" + ssh_key("ssh-rsa"),
    'command="x" ' + ssh_key("ssh-ed25519")])
def test_add_ssh_keys_refuses_bad_keys(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^ssh_keys\[1\]: "):
        gt.add_ssh_keys(Tree(tmp_path), [ssh_key("ssh-rsa"), bad], mtime=0)


# --- kernels --------------------------------------------------------------------------------

def test_find_kernel_picks_the_highest_version(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"):
        tree.write_file(f"/boot/vmlinuz-{version}", b"k", mtime=1)
        tree.write_file(f"/boot/initrd.img-{version}", b"i", mtime=1)
    tree.symlink("/boot/vmlinuz", "vmlinuz-6.1.0-9-amd64", mtime=1)
    tree.symlink("/boot/vmlinuz-9.9.9", "/boot/missing", mtime=1)  # dangling: ignored
    assert gt.find_kernel(tree) == ("/boot/vmlinuz-6.1.0-10-amd64",
                                    "/boot/initrd.img-6.1.0-10-amd64", "6.1.0-10-amd64")


def test_find_kernel_resolves_symlinks_inside_the_tree(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    version = "5.14.0-427.el9.x86_64"
    tree.write_file(f"/usr/lib/modules/{version}/vmlinuz", b"k", mtime=1)
    tree.symlink("/lib", "usr/lib", mtime=1)
    tree.symlink(f"/boot/vmlinuz-{version}", f"/lib/modules/{version}/vmlinuz", mtime=1)
    tree.write_file(f"/boot/initramfs-{version}.img", b"i", mtime=1)
    assert gt.find_kernel(tree) == (f"/usr/lib/modules/{version}/vmlinuz",
                                    f"/boot/initramfs-{version}.img", version)


def test_find_kernel_falls_back_to_boot_vmlinuz_then_modules(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    for version in ("5.14.0-70", "5.14.0-162"):
        tree.write_file(f"/usr/lib/modules/{version}/vmlinuz", b"k", mtime=1)
        tree.write_file(f"/usr/lib/modules/{version}/initramfs.img", b"i", mtime=1)
    assert gt.find_kernel(tree) == ("/usr/lib/modules/5.14.0-162/vmlinuz",
                                    "/usr/lib/modules/5.14.0-162/initramfs.img", "5.14.0-162")
    header = bytearray(0x400)
    header[0x202:0x206] = b"HdrS"
    header[0x20E:0x210] = (0x100).to_bytes(2, "little")
    header[0x300:0x320] = b"6.6.30-lts (builder@host) #1\0\0\0\0"
    tree.write_file("/boot/vmlinuz", bytes(header), mtime=1)
    tree.write_file("/boot/initrd.img", b"i", mtime=1)
    assert gt.find_kernel(tree) == ("/boot/vmlinuz", "/boot/initrd.img", "6.6.30-lts")


def test_find_kernel_without_a_kernel(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write_file("/boot/grub/grub.cfg", b"", mtime=1)
    with pytest.raises(BuildError, match=r"^kernel: no kernel in the rootfs \(/boot/vmlinuz-\*\) "
                                         "and none given with --kernel$"):
        gt.find_kernel(tree)


def test_paths_through_a_merged_usr_symlink_land_in_the_directory(tmp_path: Path) -> None:
    # Debian 12's /sbin -> usr/sbin: "./sbin/x" appended to its tarball lands in /usr/sbin, as
    # tar -x puts it; a hard link through the symlink points at the real path too.
    t = Tree(tmp_path / "w")
    t.mkdir("/usr/sbin", mtime=1)
    t.symlink("/sbin", "usr/sbin", mtime=1)
    t.write_file("/sbin/marker", b"#!/bin/sh\n", mode=0o755, mtime=1)
    t.add(Entry("/sbin/marker2", "hardlink", target="/sbin/marker"))
    assert t.get("/sbin") is not None and t.get("/sbin").kind == "symlink"
    assert t.get("/usr/sbin/marker") is not None and t.get("/usr/sbin/marker").mode == 0o755
    assert t.get("/usr/sbin/marker2") is not None
    assert t.get("/usr/sbin/marker2").target == "/usr/sbin/marker"
    assert t.get("/sbin/marker") is None
