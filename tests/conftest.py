"""Shared test fixtures.

Unit tests are forbidden to run real commands: an autouse fixture replaces ``pyinit.proc.run``'s
runner with one that raises. Tests marked ``integration`` or ``vm`` use the real runner; unit tests
that need commands opt in to the ``recorder`` fixture and assert exact argv lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit import proc
from tests.serverkit import ObservedServer

pytest_plugins = ["pyinit_qemu.pytest_plugin"]


class RealCommandInUnitTest(AssertionError):
    pass


def _forbidden(argv: Sequence[str], **_: Any) -> proc.Completed:
    raise RealCommandInUnitTest(f"unit test tried to run a real command: {list(argv)}")


@pytest.fixture(autouse=True)
def _no_real_commands(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("vm"):
        # the real ones, whatever an earlier unit test of this worker may have left behind
        proc.set_runner(None)
        proc.set_spawner(None)
        yield
        return
    previous = proc.set_runner(_forbidden)
    previous_spawner = proc.set_spawner(_forbidden)
    try:
        yield
    finally:
        proc.set_runner(previous)
        proc.set_spawner(previous_spawner)


class RawSocketInUnitTest(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _no_raw_sockets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never open an AF_PACKET socket on a host NIC or bring a host link up or
    down (the LLDP listener the action step starts): its seams raise, which the listener
    reports as one warning line per NIC. Tests of the listener pass their own."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("vm"):
        return
    from pyinit import lldp

    def forbidden(*args: object) -> Any:
        raise RawSocketInUnitTest(f"unit test tried to use a host NIC: {args}")

    monkeypatch.setattr(lldp, "open_socket", forbidden)
    monkeypatch.setattr(lldp, "set_link", forbidden)


@pytest.fixture(autouse=True)
def _no_host_devices(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests that run the boot's step table must not read the host's /sys/block or make
    links under the host's /dev (the disks step does both): the step module's roots point at
    empty directories unless a test sets its own."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("vm"):
        return
    from pyinit import init

    guard = tmp_path_factory.mktemp("host-guard")
    (guard / "sys").mkdir()
    (guard / "dev").mkdir()
    monkeypatch.setattr(init, "SYSFS", guard / "sys")
    monkeypatch.setattr(init, "DEV", guard / "dev")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Any]:
    """Network namespaces with veth pairs and real dnsmasq (tests.integration.netns_dhcp.Lab),
    torn down whatever happens."""
    from tests.integration.netns_dhcp import lab_in

    with lab_in(tmp_path) as lab:
        yield lab


@dataclass
class Recorder:
    """Records argv lists; answers from ``responses`` (argv[0] -> Completed or callable)."""

    calls: list[list[str]] = field(default_factory=list)
    responses: dict[str, Callable[[list[str]], proc.Completed] | proc.Completed] = field(
        default_factory=dict)

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> proc.Completed:
        args = [str(a) for a in argv]
        if kwargs.get("chroot") is not None:
            args = ["chroot", str(kwargs["chroot"]), *args]
        self.calls.append(args)
        answer = self.responses.get(args[0])
        if callable(answer):
            return answer(args)
        if answer is not None:
            return answer
        return proc.Completed(tuple(args), 0, "", "")


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    previous = proc.set_runner(rec)
    try:
        yield rec
    finally:
        proc.set_runner(previous)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ObservedServer]:
    """A provisioning server on 127.0.0.1 with an empty images/ (the VM tests override it).
    Writes open, asked for by name: the tests using it are about what the agent sends;
    tokens have their own tests (test_server_auth.py, test_token.py)."""
    (tmp_path / "srv" / "images").mkdir(parents=True)
    with ObservedServer(tmp_path / "srv", open_writes=True) as srv:
        yield srv


@pytest.fixture(scope="session")
def _postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.pgcluster import PostgresCluster

    with PostgresCluster(tmp_path_factory.mktemp("postgres")) as cluster:
        yield cluster


@pytest.fixture
def postgres(_postgres_cluster: Any) -> Any:
    """A real PostgreSQL (tests.pgcluster.PostgresCluster) whose ``url`` names an empty
    database. One cluster per session (per xdist worker); a test may stop or restart it, the
    next one finds it running. Skipped when the PostgreSQL binaries are absent."""
    _postgres_cluster.reset()
    return _postgres_cluster


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s
