"""The last step, ``handoff``: the result, what happens now, and a last call that fails.

The result has to go out before the point of no return (after kexec nothing can be sent), so a
hand-off whose last call fails reports ``handoff failed`` and ``result failed
failed_step=handoff`` after its ``result ok``: the server's summary starts a new run with the
failure (pyinit_server.status.fold), and the failure policy runs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pyinit import init, log, policy
from pyinit.action import parse_action
from pyinit.errors import HandoffError

KEXEC_ERROR = ("reboot(LINUX_REBOOT_CMD_KEXEC): Operation not permitted (the kernel was "
               "loaded; filesystems are already unmounted)")


@dataclass
class Boot:
    events: list[dict[str, Any]]
    console: str
    policies: list[tuple[str, str]]
    powers: list[tuple[str, bool]]

    def trail(self) -> list[tuple[str, str]]:
        return [(e["step"], e["status"]) for e in self.events
                if e["step"] in ("prepare", "handoff", "result")]

    def result(self, status: str) -> dict[str, Any]:
        (found,) = [e for e in self.events if e["step"] == "result" and e["status"] == status]
        return found


@pytest.fixture
def boot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Boot]]:
    def run(prepare: Callable[[init.Context], None], action: dict[str, Any] | None = None,
            ) -> Boot:
        buf = io.StringIO()
        events: list[dict[str, Any]] = []
        policies: list[tuple[str, str]] = []
        powers: list[tuple[str, bool]] = []
        monkeypatch.setattr(log, "_console", buf)
        log.configure()
        log.clear_sinks()
        log.add_sink(events.append)
        monkeypatch.setattr(policy, "apply", lambda pol, why: policies.append((pol, why)))
        monkeypatch.setattr(policy, "power",
                            lambda kind, *, announce=True: powers.append((kind, announce)))
        ctx = init.Context()
        if action is not None:
            ctx.action = parse_action(action, base_url="http://server.invalid")
        steps = (("prepare", prepare), ("handoff", init.step_handoff))
        try:
            init.run_steps(ctx, steps)
        except BaseException as exc:  # what main() does
            init.fail(ctx, exc)
        finally:
            log.clear_sinks()
            ctx.session.close()
        return Boot(events, buf.getvalue(), policies, powers)

    yield run


def test_kexec_that_fails_at_the_last_call_reports_the_handoff_step(
        boot: Callable[..., Boot]) -> None:
    calls: list[str] = []

    def kexec_reboot() -> None:
        calls.append("kexec")
        raise HandoffError(KEXEC_ERROR)

    def prepare(ctx: init.Context) -> None:
        ctx.boot, ctx.boot_kind = kexec_reboot, "kexec"

    b = boot(prepare)
    assert calls == ["kexec"]
    assert b.trail() == [("prepare", "start"), ("prepare", "ok"), ("handoff", "start"),
                         ("handoff", "now"), ("result", "ok"), ("handoff", "failed"),
                         ("result", "failed")]
    assert b.result("ok")["handoff"] == "kexec"
    now = [e for e in b.events if e["status"] == "now"]
    assert now[0]["how"] == "kexec"
    failed = b.result("failed")
    assert (failed["failed_step"], failed["error"]) == ("handoff", KEXEC_ERROR)
    assert b.console.count("pyinit: kexec now") == 1
    assert f"handoff: FAILED: {KEXEC_ERROR}" in b.console
    assert "Traceback" not in b.console  # an expected failure: one line
    assert b.policies == [(init.BootParams().on_failure, "handoff failed")]


def test_reboot_that_returns_fails_the_handoff(boot: Callable[..., Boot]) -> None:
    b = boot(lambda ctx: None, {"action": "writeImage", "sourceImage": "images/a.img",
                                "destinationDevice": "/dev/vda", "finish": "reboot"})
    assert b.powers == [("reboot", False)]  # "pyinit: reboot now" said once, by the step
    assert b.console.count("pyinit: reboot now") == 1
    failed = b.result("failed")
    assert (failed["failed_step"], failed["error"]) == (
        "handoff", "reboot failed: reboot(2) returned")


def test_kexec_without_a_written_target_reboots(boot: Callable[..., Boot]) -> None:
    b = boot(lambda ctx: None, {"action": "writeImage", "sourceImage": "images/a.img",
                                "destinationDevice": "/dev/vda", "finish": "kexec",
                                "dryRun": True})
    assert b.result("ok")["handoff"] == "reboot"
    assert "handoff: kexec needs a written target; rebooting instead" in b.console
    assert b.powers == [("reboot", False)]


def test_shell_is_the_handoff(boot: Callable[..., Boot]) -> None:
    b = boot(lambda ctx: None, {"action": "writeImage", "sourceImage": "images/a.img",
                                "destinationDevice": "/dev/vda", "finish": "shell"})
    assert b.policies == [("shell", "finished")]  # the real one never returns
    assert b.trail()[-3:] == [("handoff", "now"), ("result", "ok"), ("handoff", "ok")]
    assert b.powers == []


def test_the_servers_summary_of_a_handoff_is_the_result(boot: Callable[..., Boot]) -> None:
    """What the dashboard shows for a machine that went away: ok, not a new run (any event
    after a result starts one: pyinit_server.status.fold)."""
    from pyinit_server.status import Summary, fold

    b = boot(lambda ctx: None, {"action": "writeImage", "sourceImage": "images/a.img",
                                "destinationDevice": "/dev/vda", "finish": "shell"})
    summary = Summary("52-54-00-12-34-56")
    for i, ev in enumerate(b.events[:-1]):  # the last: the runner's "ok" the real shell never
        fold(summary, ev, float(i))         # reaches
    assert (summary.result, summary.phase, summary.state) == ("ok", "handoff", "now")


class Gone(BaseException):
    """reboot(2) that worked: the machine is gone, nothing after it runs."""


@pytest.mark.parametrize(("how", "cmd"), [
    ("kexec", "LINUX_REBOOT_CMD_KEXEC"), ("reboot", "LINUX_REBOOT_CMD_RESTART"),
    ("poweroff", "LINUX_REBOOT_CMD_POWER_OFF")])
def test_each_handoff_line_once_down_to_reboot2(monkeypatch: pytest.MonkeyPatch, how: str,
                                                cmd: str) -> None:
    """#15: ``pyinit: kexec now`` was seen twice. The real path, down to reboot(2) (the real
    kexec_reboot and policy.power, only the syscall and the unmount faked), says each line
    once."""
    from pyinit import kexec, syscalls

    buf = io.StringIO()
    monkeypatch.setattr(log, "_console", buf)
    log.configure()
    log.clear_sinks()
    calls: list[object] = []

    def reboot(command: int) -> None:
        calls.append(command)
        raise Gone

    monkeypatch.setattr(syscalls, "reboot", reboot)
    monkeypatch.setattr(policy, "quiesce", lambda *a, **kw: calls.append("quiesce"))
    ctx = init.Context()
    ctx.action = parse_action({"action": "writeImage", "sourceImage": "images/a.img",
                               "destinationDevice": "/dev/vda", "finish": how},
                              base_url="http://server.invalid")
    if how == "kexec":  # what the prepare step leaves once the kernel is loaded
        ctx.boot, ctx.boot_kind = kexec.kexec_reboot, "kexec"
    try:
        with pytest.raises(Gone):
            init.step_handoff(ctx)
    finally:
        ctx.session.close()
    assert calls == ["quiesce", getattr(syscalls, cmd)]
    console = buf.getvalue()
    assert console.count(f"{how} now") == 1, console
    assert console.count("pyinit: RESULT ok ") == 1
    assert console.count('"status": "now"') == 1


def test_result_line_quotes_what_has_spaces() -> None:
    """The RESULT line names what the sha256 covers; each field reads back with shlex."""
    import shlex

    summary = {"image": "http://10.0.2.2:8080/images/golden.img.zst", "format": "zstd",
               "bytes_written": 762_000_000, "bytes_downloaded": 312_000_000,
               "sha256": "ab" * 32, "sha256_of": "the downloaded file (compressed zstd, 312 MB)",
               "checksum_verified": None, "grow": "partition 3 640 MiB -> 4030 MiB"}
    line = init.result_fields(summary)
    assert "sha256_of='the downloaded file (compressed zstd, 312 MB)'" in line
    assert "bytes_written=762000000 bytes_downloaded=312000000" in line
    assert dict(f.split("=", 1) for f in shlex.split(line)) == \
        {k: str(v) for k, v in summary.items()}
