"""``pyinit export``: machine files rendered into a static tree, the nginx block, all or
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyinit_build.cli import main
from pyinit_server.export import MARKER, ExportError, export, nginx_conf, render

ACTION = {"action": "writeImage", "sourceImage": "images/disk.img",
          "destinationDevice": "/dev/vda"}
JSON_BYTES = (b'{"action":"writeImage", "sourceImage":"images/disk.img",'
              b'"destinationDevice":"/dev/vda"}')


def machines(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / "root"
    (root / "machines").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        data = text.encode() if isinstance(text, str) else text
        (root / "machines" / name).write_bytes(data)
    return root


YAML = "action: writeImage\nsourceImage: images/disk.img\ndestinationDevice: /dev/vda\n"


@pytest.mark.parametrize(("name", "expected"), [
    ("52-54-00-12-34-56.yaml", "52-54-00-12-34-56.json"),
    ("52:54:00:AB:CD:EF.yml", "52-54-00-ab-cd-ef.json"),
    ("52-54-00-AB-CD-EF.YAML", "52-54-00-ab-cd-ef.json"),
    ("default.yaml", "default.json"),
    ("DEFAULT.yml", "default.json"),
])
def test_machine_file_names_become_lower_case_dashes(tmp_path: Path, name: str,
                                                     expected: str) -> None:
    out = render(machines(tmp_path, {name: YAML}))
    assert list(out.files) == [expected]
    assert json.loads(out.files[expected]) == ACTION


@pytest.mark.parametrize("name", [
    "README.md", ".52-54-00-12-34-56.yaml.swp", "52-54-00-12-34.yaml", "52-54:00-12-34-56.yaml",
    "52-54-00-12-34-56.yaml~", "52-54-00-12-34-56.txt",
])
def test_other_files_are_not_exported(tmp_path: Path, name: str) -> None:
    out = render(machines(tmp_path, {name: YAML}))
    assert out.files == {} and out.macs == [] and not out.has_default


@pytest.mark.parametrize(("files", "macs", "has_default"), [
    ({"default.json": JSON_BYTES}, [], True),
    ({"52-54-00-12-34-56.json": JSON_BYTES}, ["52-54-00-12-34-56"], False),
    ({"52-54-00-12-34-56.json": JSON_BYTES, "52-54-00-12-34-57.yaml": YAML,
      "default.yml": YAML}, ["52-54-00-12-34-56", "52-54-00-12-34-57"], True),
])
def test_default_only_when_present(tmp_path: Path, files: dict[str, str | bytes],
                                   macs: list[str], has_default: bool) -> None:
    out = render(machines(tmp_path, files))
    assert out.macs == macs
    assert out.has_default is has_default
    assert ("default.json" in out.files) is has_default


def test_bytes_are_what_pyinit_serve_answers(tmp_path: Path) -> None:
    """A .json file byte for byte; YAML as the server's JSON; the pxe: key stripped."""
    out = render(machines(tmp_path, {
        "52-54-00-12-34-56.json": JSON_BYTES,
        "52-54-00-12-34-57.yaml": YAML + "pxe:\n  cmdline: quiet\n"}))
    assert out.files["52-54-00-12-34-56.json"] == JSON_BYTES
    assert out.files["52-54-00-12-34-57.json"] == (json.dumps(ACTION, indent=2) + "\n").encode()


@pytest.mark.parametrize(("files", "message"), [
    ({"52-54-00-00-00-0b.json": '{"action": "writeImage",\n  "sourceImage": 7, '},
     "machines/52-54-00-00-00-0b.json:2: Expecting property name enclosed in double quotes"),
    ({"52-54-00-00-00-0b.yaml": "action: writeImage\n  bad: [\n"},
     "machines/52-54-00-00-00-0b.yaml:2: "),
    ({"default.yaml": "- a list\n"},
     "machines/default.yaml: the file is a list, expected a mapping of action fields"),
    ({"52-54-00-00-00-0b.yaml": YAML, "52:54:00:00:00:0B.json": JSON_BYTES},
     "machines/52-54-00-00-00-0b.yaml and machines/52:54:00:00:00:0B.json: two files for "
     "52-54-00-00-00-0b: remove all but one"),
    ({"52-54-00-00-00-0b.yaml": YAML + "pxe: {kernel: x}\n"},
     "machines/52-54-00-00-00-0b.yaml: pxe: unknown key 'kernel' (known: cmdline)"),
])
def test_malformed_file_fails_with_the_servers_line(tmp_path: Path, files: dict[str, str],
                                                    message: str) -> None:
    root = machines(tmp_path, {"52-54-00-12-34-56.yaml": YAML, **files})
    with pytest.raises(ExportError) as err:
        render(root)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_file_writes_nothing(tmp_path: Path) -> None:
    root = machines(tmp_path, {"52-54-00-12-34-56.yaml": YAML})
    out = tmp_path / "www"
    export(root, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (root / "machines" / "52-54-00-12-34-57.json").write_text("{")
    (root / "machines" / "52-54-00-12-34-58.yaml").write_text(YAML)
    with pytest.raises(ExportError, match=r"^machines/52-54-00-12-34-57.json:1: "):
        export(root, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "www"]  # no temp dirs left


def test_action_warnings_are_exported_anyway(tmp_path: Path) -> None:
    out = render(machines(tmp_path, {"52-54-00-12-34-56.yaml": YAML + "growPartition: true\n"}))
    assert "52-54-00-12-34-56.json" in out.files
    assert len(out.warnings) == 1 and "growPartition" in out.warnings[0]


@pytest.mark.parametrize(("public_url", "names"), [
    (None, {"52-54-00-12-34-56.json", "default.json"}),
    ("http://10.0.0.1:8080/", {"52-54-00-12-34-56.json", "default.json", "boot.ipxe",
                               "52-54-00-12-34-56.ipxe", "default.ipxe"}),
])
def test_ipxe_scripts_need_a_public_url(tmp_path: Path, public_url: str | None,
                                        names: set[str]) -> None:
    root = machines(tmp_path, {"52-54-00-12-34-56.yaml": YAML + "pxe:\n  cmdline: [quiet]\n",
                               "default.yaml": YAML})
    out = render(root, public_url=public_url, kernel_args="console=ttyS0")
    assert set(out.files) == names
    if public_url is None:
        return
    assert out.files["boot.ipxe"].decode() == (
        "#!ipxe\n# pyinit: chain to this machine's script, by the MAC of the NIC iPXE booted "
        "from\nchain http://10.0.0.1:8080/${netX/mac:hexhyp}.ipxe\n")
    script = out.files["52-54-00-12-34-56.ipxe"].decode().splitlines()
    assert script[2] == ("kernel http://10.0.0.1:8080/boot/vmlinuz console=ttyS0 "
                         "BOOTYURL=http://10.0.0.1:8080 BOOTIF=01-52-54-00-12-34-56 quiet")
    default = out.files["default.ipxe"].decode().splitlines()
    assert default[2].endswith("BOOTIF=01-${netX/mac:hexhyp}")  # iPXE fills in the MAC


@pytest.mark.parametrize("url", ["10.0.0.1:8080", "ftp://x", "http://a b", "http://x/$foo",
                                 "http://x;"])
def test_bad_public_url_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ExportError, match=r"^--public-url "):
        render(machines(tmp_path, {"default.yaml": YAML}), public_url=url)


# -- the nginx block -----------------------------------------------------------------------


def conf(**kw: str) -> str:
    return nginx_conf(Path("/srv/www"), Path("/srv/root/images"), Path("/srv/boot"), **kw)


def test_nginx_block_routes() -> None:
    text = conf(listen="127.0.0.1:8081")
    assert text.startswith(MARKER)
    assert "listen 127.0.0.1:8081;" in text
    assert 'root "/srv/www";' in text
    assert 'alias "/srv/root/images/";' in text and 'alias "/srv/boot/";' in text
    assert "try_files /$1-$3-$4-$5-$6-$7.json /default.json @nomachine;" in text
    assert "try_files /$1-$3-$4-$5-$6-$7.ipxe /default.ipxe @nomachine;" in text
    assert "return 204;" in text and "proxy_pass" not in text
    assert text.count("{") == text.count("}")


def test_nginx_block_can_proxy_events() -> None:
    text = conf(events_upstream="http://127.0.0.1:8080/")
    assert "proxy_pass http://127.0.0.1:8080;" in text
    assert "return 204;" not in text


@pytest.mark.parametrize(("kw", "message"), [
    ({"listen": "80; include /etc/passwd"}, "--listen "),
    ({"listen": "localhost"}, "--listen "),
    ({"events_upstream": "127.0.0.1:8080"}, "--events-upstream "),
])
def test_nginx_block_refuses_bad_options(kw: dict[str, str], message: str) -> None:
    with pytest.raises(ExportError, match=f"^{message}"):
        conf(**kw)


def test_unsafe_paths_are_refused(tmp_path: Path) -> None:
    root = machines(tmp_path, {"default.yaml": YAML})
    with pytest.raises(ExportError, match="cannot name a path with spaces"):
        export(root, tmp_path / "my www")
    assert not (tmp_path / "my www").exists()


# -- replacing OUT -------------------------------------------------------------------------


def test_export_replaces_an_earlier_export(tmp_path: Path) -> None:
    root = machines(tmp_path, {"52-54-00-12-34-56.yaml": YAML, "default.yaml": YAML})
    out = tmp_path / "www"
    export(root, out)
    (root / "machines" / "default.yaml").unlink()
    export(root, out)
    assert sorted(p.name for p in out.iterdir()) == ["52-54-00-12-34-56.json", "nginx.conf"]
    assert oct(out.stat().st_mode & 0o777) == "0o755"


def test_export_refuses_to_replace_another_directory(tmp_path: Path) -> None:
    root = machines(tmp_path, {"default.yaml": YAML})
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ExportError, match="is not an earlier export"):
        export(root, out)
    assert (out / "thesis.tex").read_text() == "precious"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = machines(tmp_path, {"52-54-00-12-34-56.yaml": YAML})
    out = tmp_path / "www"
    assert main(["export", "--root", str(root), "--out", str(out),
                 "--public-url", "http://10.0.2.2:8080"]) == 0
    assert (out / "52-54-00-12-34-56.ipxe").exists()
    assert "1 machine(s) ->" in capsys.readouterr().out
    (root / "machines" / "default.json").write_text("[1,")
    assert main(["export", "--root", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pyinit export: machines/default.json:1: ")
