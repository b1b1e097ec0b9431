"""The first-boot one-shot's plan (pure) and how it lands in a target (pyinit.firstboot,
pyinit.identity.write_symlink); tests/integration/test_firstboot.py runs the script itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyinit import firstboot, identity
from pyinit.identity import IdentityError

URL = "http://10.0.2.2:8080/events/52-54-00-5e-16-03"


def test_the_plan_follows_the_targets_init_system() -> None:
    systemd = firstboot.plan(systemd=True, rcs=True, rc_local=True, url=URL, token="m1.x")
    assert systemd.method == "systemd" and systemd.symlinks == {
        firstboot.WANTS: f"/{firstboot.UNIT}"}
    assert set(systemd.files) == {firstboot.SCRIPT, firstboot.UNIT}
    assert systemd.files[firstboot.SCRIPT][1] == 0o700  # it holds the machine's token
    assert "Type=simple" in systemd.files[firstboot.UNIT][0]
    rcs = firstboot.plan(systemd=False, rcs=True, rc_local=True, url=URL, token=None)
    assert rcs.method == "rcS" and firstboot.RCS_SCRIPT in rcs.files and not rcs.rc_local
    local = firstboot.plan(systemd=False, rcs=False, rc_local=True, url=URL, token=None)
    assert local.method == "rc.local" and local.rc_local and set(local.files) == {
        firstboot.SCRIPT}
    script = systemd.files[firstboot.SCRIPT][0]
    assert f"URL='{URL}'" in script and "TOKEN='m1.x'" in script
    assert "TOKEN=''" in rcs.files[firstboot.SCRIPT][0]


def test_detect_reads_the_target_as_it_sees_itself(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_text("")
    os.symlink("usr/lib", root / "lib")
    assert firstboot.detect(root) == {"systemd": True, "rcs": False, "rc_local": False}
    (root / "etc").mkdir()
    os.symlink("/elsewhere/rc.local", root / "etc/rc.local")  # dangles inside the target
    assert firstboot.detect(root)["rc_local"] is False


def test_write_symlink_replaces_links_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    link = identity.write_symlink(root, firstboot.WANTS, f"/{firstboot.UNIT}")
    assert os.readlink(link) == f"/{firstboot.UNIT}"
    identity.write_symlink(root, firstboot.WANTS, "/etc/other")
    assert os.readlink(link) == "/etc/other"
    (root / "etc/file").write_text("x")
    with pytest.raises(IdentityError, match="not a symlink"):
        identity.write_symlink(root, "etc/file", "/x")


def test_a_token_the_script_cannot_carry_is_a_warning_after_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line takes a token with a backslash; the one-shot cannot: configure says so
    in one warning line that does not show the token, installs nothing, and goes on."""
    import io

    from pyinit import init, log
    from pyinit.cmdline import parse_cmdline

    root = tmp_path / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "sbin" / "init").symlink_to("/lib/systemd/systemd")
    console = io.StringIO()
    monkeypatch.setattr(log, "_console", console)
    log.configure()
    params = parse_cmdline("MYURL=http://10.0.2.2:8080 pyinit.token=s3cr\\et")
    ctx = init.Context(params=params)
    init._install_firstboot(ctx, root, "52:54:00:5e:16:03")
    out = console.getvalue()
    assert "configure: first-boot confirmation: the token has characters a shell script must " \
           "not carry: (not shown); no first-boot confirmation" in out, out
    assert "s3cr" not in out
    assert "firstboot" not in ctx.summary
    assert not any((root / "etc" / "systemd" / "system").iterdir())
