"""`pyinit iso` without running anything: the command line (composed, quoted for GRUB, checked
by the runtime's parser), the ISO's dates, the exact argv of every tool, the atomic write, the
masked token, and the bad inputs of docs/bad-inputs.md (section ``pyinit iso``), row by row.

The real ISO is built and booted in tests/vm/test_iso.py (SeaBIOS and OVMF from a CD-ROM,
SeaBIOS from a USB stick) and checked for reproducibility and layout in
tests/integration/test_iso_build.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from pyinit import proc
from pyinit.errors import CommandError
from pyinit_build import cli, iso, preflight
from pyinit_build.errors import BuildError
from pyinit_build.golden import grub
from tests.conftest import Recorder

from .test_bad_inputs import DOC

EPOCH = 1704067200  # 2024-01-01 00:00:00 UTC
URL = "http://10.0.0.1:8080"
TOKEN = "s3cret-T0ken"


# --- the command line ---------------------------------------------------------------------------

def test_compose_puts_the_flags_after_the_line_and_quotes_what_needs_it() -> None:
    assert iso.compose("ip=dhcp quiet", url=URL, token=TOKEN, append=["pyinit.debug", " x=1 "]) \
        == f"ip=dhcp quiet MYURL={URL} pyinit.token={TOKEN} pyinit.debug x=1"
    assert iso.compose(url=URL, ip="10.0.0.5::10.0.0.1:255.255.255.0:n1:eth0:none") == \
        f"MYURL={URL} ip=10.0.0.5::10.0.0.1:255.255.255.0:n1:eth0:none"
    assert iso.compose(token="a b") == 'pyinit.token="a b"'
    assert iso.compose(token="") == 'pyinit.token=""'
    assert iso.compose() == ""


def test_kernel_args_put_both_consoles_first_unless_given() -> None:
    assert iso.kernel_args(f"MYURL={URL}") == ["console=tty0", "console=ttyS0,115200",
                                               f"MYURL={URL}"]
    assert iso.kernel_args(f"console=ttyS0,115200 MYURL={URL}", "ttyS0,115200") == [
        "console=tty0", "console=ttyS0,115200", f"MYURL={URL}"]
    assert iso.kernel_args(f"MYURL={URL}", "ttyS1,57600")[:2] == ["console=tty0",
                                                                 "console=ttyS1,57600"]


def test_an_argument_with_spaces_reaches_the_kernel_as_one() -> None:
    """GRUB single quotes keep ``$`` and spaces literal; GRUB then wraps an argument with a space
    in double quotes for the kernel, which the kernel and pyinit read as one argument."""
    args = iso.kernel_args('root=/dev/vda1 "entrypoint=/bin/echo $HOME; x" -- a')
    assert args[2:] == ["root=/dev/vda1", "entrypoint=/bin/echo $HOME; x", "--", "a"]
    assert [iso.grub_word(a) for a in args[2:]] == [
        "root=/dev/vda1", "'entrypoint=/bin/echo $HOME; x'", "--", "a"]
    assert iso.kernel_view(args[2:]) == 'root=/dev/vda1 "entrypoint=/bin/echo $HOME; x" -- a'
    params = iso.validate(args)
    assert params.entrypoint == ("/bin/echo", "$HOME;", "x")
    assert params.init_args == ("a",)


@pytest.mark.parametrize(("line", "shown"), [
    ("MYURL=http://h/ entrypoint=/bin/it's", "entrypoint=/bin/it's"),
    (f"MYURL=http://h/ pyinit.token={TOKEN}\\", "pyinit.token=***"),
])
def test_quotes_and_backslashes_are_refused_token_masked(line: str, shown: str) -> None:
    with pytest.raises(BuildError) as err:
        iso.kernel_args(line)
    assert str(err.value) == (f"cmdline: {shown}: GRUB passes ' and \\ to the kernel with a "
                              "backslash added; leave them out")
    assert TOKEN not in str(err.value)


def test_validate_uses_the_runtime_parser() -> None:
    params = iso.validate(iso.kernel_args(f"MYURL={URL} ip=dhcp pyinit.token={TOKEN}"))
    assert params.myurl == URL and params.token == TOKEN and params.mode == "provision"
    assert params.consoles == ("tty0", "ttyS0,115200")
    assert iso.validate(["root=/dev/sda1", "entrypoint=/bin/sh"]).mode == "ginit"
    assert iso.validate(["pyinit.break=network"]).mode == "none"  # a shell to look around
    with pytest.raises(BuildError, match=r"^cmdline: MYURL: not an http\(s\) URL: 'ftp://x/'$"):
        iso.validate(["MYURL=ftp://x/"])
    with pytest.raises(BuildError, match=r"^cmdline: nothing to do: give MYURL="):
        iso.validate(["console=tty0", "quiet"])


def test_dates_and_uuid() -> None:
    assert iso.modification_date(EPOCH) == "2024010100000000"
    assert iso.iso_uuid(EPOCH) == "2024-01-01-00-00-00-00"
    assert iso.iso_uuid(EPOCH + 86400 + 3723) == "2024-01-02-01-02-03-00"


def test_xorriso_argv() -> None:
    assert iso.xorriso_argv(Path("/s"), Path("/o/.x.iso.tmp"), epoch=EPOCH, volume_id="PYINIT",
                            grub_lib=Path("/g")) == [
        "xorriso", "-as", "mkisofs", "-quiet", "--modification-date=2024010100000000",
        "-volid", "PYINIT", "-rational-rock",
        "-b", "boot/grub/i386-pc/eltorito.img", "-no-emul-boot", "-boot-load-size", "4",
        "-boot-info-table", "--grub2-boot-info", "--grub2-mbr", "/g/i386-pc/boot_hybrid.img",
        "--efi-boot", "boot/grub/efi.img", "-efi-boot-part", "--efi-boot-image",
        "--protective-msdos-label", "-o", "/o/.x.iso.tmp", "/s"]


# --- the build, with every command recorded -----------------------------------------------------

@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake host: the tools in a bin/ that is the whole search path, GRUB's platform files,
    a kernel and an initramfs. Returns the directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in preflight.ISO_TOOLS:
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(preflight, "SAFE_PATH", "")
    grub_lib = tmp_path / "grub"
    for name, _ in iso.GRUB_FILES:
        (grub_lib / name).parent.mkdir(parents=True, exist_ok=True)
        (grub_lib / name).write_bytes(b"")
    monkeypatch.setattr(grub, "GRUB_LIB", grub_lib)
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd.zst").write_bytes(b"initrd")
    return tmp_path


def _fake_tools(recorder: Recorder, seen: dict[str, str]) -> None:
    """grub-mkimage and xorriso write their -o file; xorriso also shows what it was given."""
    def mkimage(argv: list[str]) -> proc.Completed:
        Path(argv[argv.index("-o") + 1]).write_bytes(b"\x7fIMG" * 1000)
        return proc.Completed(tuple(argv), 0, "", "")

    def xorriso(argv: list[str]) -> proc.Completed:
        staging = Path(argv[-1])
        seen["grub.cfg"] = (staging / iso.GRUB_CFG_PATH).read_text()
        seen["files"] = " ".join(sorted(str(p.relative_to(staging))
                                        for p in staging.rglob("*") if p.is_file()))
        seen["mtimes"] = " ".join(sorted({str(int(p.stat().st_mtime))
                                          for p in [staging, *staging.rglob("*")]}))
        Path(argv[argv.index("-o") + 1]).write_bytes(b"ISO" * 100)
        return proc.Completed(tuple(argv), 0, "", "")

    recorder.responses["grub-mkimage"] = mkimage
    recorder.responses["xorriso"] = xorriso


def _spec(host: Path, **kw: Any) -> iso.IsoSpec:
    base = iso.IsoSpec(output=host / "out" / "pyinit.iso", kernel=host / "vmlinuz",
                       initrd=host / "initrd.zst", cmdline=f"MYURL={URL} pyinit.token={TOKEN}",
                       source_date_epoch=EPOCH)
    return dataclasses.replace(base, **kw)


def test_build_runs_grub_fat_and_xorriso_then_renames(host: Path, recorder: Recorder) -> None:
    seen: dict[str, str] = {}
    _fake_tools(recorder, seen)
    result = iso.build_iso(_spec(host))
    out = host / "out" / "pyinit.iso"
    assert result.path == out and out.read_bytes() == b"ISO" * 100
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it carries the token
    assert not (host / "out" / ".pyinit.iso.tmp").exists()
    assert result.cmdline == f"console=tty0 console=ttyS0,115200 MYURL={URL} pyinit.token=***"
    assert result.uuid == "2024-01-01-00-00-00-00"
    calls = recorder.calls
    assert [c[0] for c in calls] == ["grub-mkimage", "grub-mkimage", "mkfs.fat", "mmd", "mcopy",
                                     "xorriso"]
    grub_lib = str(grub.GRUB_LIB)
    assert calls[0][:4] == ["grub-mkimage", "-O", "i386-pc-eltorito", "-d"]
    assert calls[0][4] == f"{grub_lib}/i386-pc"
    assert calls[0][-2:] == ["biosdisk", "iso9660"]
    assert calls[1][:5] == ["grub-mkimage", "-O", "x86_64-efi", "-d", f"{grub_lib}/x86_64-efi"]
    assert calls[1][-2:] == ["efi_gop", "iso9660"]
    assert calls[2][:8] == ["mkfs.fat", "--invariant", "-F", "12", "-i", f"{EPOCH:08X}", "-n",
                            "PYINIT EFI"]
    assert calls[4][-1] == "::/EFI/BOOT/BOOTX64.EFI"
    staging = Path(calls[5][-1])
    assert calls[5] == iso.xorriso_argv(staging, host / "out" / ".pyinit.iso.tmp", epoch=EPOCH,
                                        volume_id="PYINIT")
    assert seen["files"] == ("boot/grub/efi.img boot/grub/grub.cfg "
                             "boot/grub/i386-pc/eltorito.img boot/initramfs.cpio.zst boot/vmlinuz")
    assert seen["mtimes"] == str(EPOCH)
    cfg = seen["grub.cfg"]
    assert cfg.splitlines()[:6] == [
        "# Written by pyinit iso. Rebuild the ISO to change it.", "set timeout=1",
        "set default=0", "serial --unit=0 --speed=115200", "terminal_input serial console",
        "terminal_output serial console"]
    assert "    search --no-floppy --fs-uuid --set=root 2024-01-01-00-00-00-00" in cfg
    assert (f"    linux /boot/vmlinuz console=tty0 console=ttyS0,115200 MYURL={URL} "
            f"pyinit.token={TOKEN}") in cfg
    assert "    initrd /boot/initramfs.cpio.zst" in cfg


def test_build_without_a_token_is_world_readable_and_serial_is_configurable(
        host: Path, recorder: Recorder) -> None:
    seen: dict[str, str] = {}
    _fake_tools(recorder, seen)
    iso.build_iso(_spec(host, cmdline=f"MYURL={URL}", serial="ttyS1,57600", timeout=3))
    assert stat.S_IMODE((host / "out" / "pyinit.iso").stat().st_mode) == 0o644
    assert "serial --unit=1 --speed=57600" in seen["grub.cfg"]
    assert "set timeout=3" in seen["grub.cfg"]
    assert "linux /boot/vmlinuz console=tty0 console=ttyS1,57600 MYURL=" in seen["grub.cfg"]


def test_a_failed_xorriso_leaves_no_iso_and_no_temporary_file(host: Path,
                                                               recorder: Recorder) -> None:
    out = host / "out" / "pyinit.iso"
    out.parent.mkdir()
    out.write_bytes(b"the previous ISO")
    _fake_tools(recorder, {})

    def fail(argv: list[str]) -> proc.Completed:
        Path(argv[argv.index("-o") + 1]).write_bytes(b"half")
        raise CommandError(argv, 5, "xorriso : FAILURE : Image size exceeds free space")

    recorder.responses["xorriso"] = fail
    with pytest.raises(CommandError):
        iso.build_iso(_spec(host))
    assert out.read_bytes() == b"the previous ISO"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pyinit.iso"]


@pytest.mark.parametrize(("kw", "error"), [
    ({"serial": "ttyUSB0"}, "serial: 'ttyUSB0': expected ttyS<N>[,<speed>]"),
    ({"volume_id": "pyinit"}, "volume-id: 'pyinit': 1 to 32 of A-Z 0-9 _"),
    ({"timeout": -1}, "timeout: -1: expected 0 to 3600 seconds"),
])
def test_other_options_are_checked_before_any_work(host: Path, recorder: Recorder,
                                                   kw: dict[str, Any], error: str) -> None:
    with pytest.raises(BuildError, match=f"^{re.escape(error)}$"):
        iso.build_iso(_spec(host, **kw))
    assert recorder.calls == []


def test_the_cli_masks_the_token(host: Path, recorder: Recorder, capsys: pytest.CaptureFixture[str],
                                 caplog: pytest.LogCaptureFixture) -> None:
    _fake_tools(recorder, {})
    (host / "token").write_text(TOKEN + "\n")
    rc = cli.main(["iso", "--out", str(host / "x.iso"), "--kernel", str(host / "vmlinuz"),
                   "--initrd", str(host / "initrd.zst"), "--url", URL, "--ip", "dhcp",
                   "--token-file", str(host / "token"), "--source-date-epoch", str(EPOCH)])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.splitlines()[1] == (f"kernel command line: console=tty0 console=ttyS0,115200 "
                                   f"MYURL={URL} ip=dhcp pyinit.token=***")
    assert TOKEN not in out + err + caplog.text


# --- the bad inputs of docs/bad-inputs.md ---------------------------------------------------------

# id -> the arguments after `pyinit iso --out X --kernel K --initrd I --source-date-epoch E`,
# and the tools hidden from the search path.
ROWS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "ISO1": (["--cmdline", f"MYURL={URL} ip=foo"], ()),
    "ISO2": (["--cmdline", "quiet"], ()),
    "ISO3": (["--url", URL, "--token", "a b"], ()),
    "ISO4": (["--url", URL, "--token", "it's"], ()),
    "ISO5": (["--url", URL, "--kernel", "/nonexistent/vmlinuz"], ()),
    "ISO6": (["--url", URL, "--initrd", "/nonexistent/initramfs.cpio.zst"], ()),
    "ISO7": (["--url", URL], ("xorriso",)),
}


def doc_iso_rows() -> dict[str, list[str]]:
    """Row id → cells of the ``pyinit iso`` table in docs/bad-inputs.md."""
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*(ISO\d+)\s*\|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in line.strip().strip("|").split(" | ")]
    return rows


def test_doc_and_test_tables_agree() -> None:
    documented = doc_iso_rows()
    assert set(documented) == set(ROWS)
    for row_id, cells in documented.items():
        assert cells[-1] == f"`tests/unit/test_iso.py::test_bad_input[{row_id}]`"


@pytest.mark.parametrize("row_id", sorted(ROWS))
def test_bad_input(row_id: str, host: Path, recorder: Recorder,
                   capsys: pytest.CaptureFixture[str]) -> None:
    extra, hidden = ROWS[row_id]
    for tool in hidden:
        (host / "bin" / tool).unlink()
    out = host / "out" / "pyinit.iso"
    argv = ["iso", "--out", str(out), "--kernel", str(host / "vmlinuz"),
            "--initrd", str(host / "initrd.zst"), "--source-date-epoch", str(EPOCH)]
    assert cli.main([*argv, *extra]) == 1
    stdout, stderr = capsys.readouterr()
    lines = stderr.splitlines()
    assert len(lines) == 1 and stdout == "", (stdout, stderr)
    assert "Traceback" not in stderr
    assert "it's" not in stderr and not re.search(r"\ba b\b", stderr)  # ISO3/4's tokens
    documented = doc_iso_rows()[row_id]
    assert documented[2] == f"`{lines[0]}`", f"doc line differs from the real one: {lines[0]}"
    assert recorder.calls == []  # nothing ran
    assert not out.parent.exists()  # no ISO, no temporary file, not even the directory
    assert os.environ["PATH"] == str(host / "bin")
