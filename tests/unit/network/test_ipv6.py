"""pyinit.network.ipv6: address choice, when to start DHCPv6, the sysctls, the bounded wait
(fakes, a fake clock)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyinit.errors import NetworkError
from pyinit.network import ipv6

# ---------------------------------------------------------------------------------------------
# IPv6: address choice, when to start DHCPv6, sysctls, the bounded wait (fakes, fake clock)

LL = ipv6.Addr6("fe80::5054:ff:fe12:3456", 64, ipv6.RT_SCOPE_LINK, 0x80)
LL_TENTATIVE = ipv6.Addr6("fe80::5054:ff:fe12:3456", 64, ipv6.RT_SCOPE_LINK,
                          ipv6.IFA_F_TENTATIVE)
# the kernel gives QEMU slirp's fec0::/64 site scope (200), a ULA or global prefix scope 0
SLAAC = ipv6.Addr6("fec0::5054:ff:fe12:3456", 64, ipv6.RT_SCOPE_SITE, 0x100)
ULA = ipv6.Addr6("fd00:77::5054:ff:fe12:3456", 64, ipv6.RT_SCOPE_UNIVERSE, 0x100)
HOST = ipv6.Addr6("::1", 128, 254, 0x80)
SLAAC_TENTATIVE = ipv6.Addr6(SLAAC.address, 64, 0, ipv6.IFA_F_TENTATIVE)
DEPRECATED = ipv6.Addr6("fd00:1::5", 64, 0, ipv6.IFA_F_DEPRECATED)
DADFAILED = ipv6.Addr6("fd00:2::5", 64, 0, ipv6.IFA_F_DADFAILED)
LEASED = ipv6.Addr6("fd00:77::142", 128, 0, 0x80)


@pytest.mark.parametrize(("addrs", "prefer", "expected"), [
    ((), None, None),
    ((LL,), None, None),  # link-local never counts
    ((LL, SLAAC_TENTATIVE), None, None),  # DAD still running
    ((LL, DADFAILED), None, None),
    ((LL, SLAAC), None, SLAAC),  # site-local (slirp) counts
    ((LL, ULA), None, ULA),
    ((HOST, LL), None, None),  # host scope never
    ((DEPRECATED, SLAAC), None, SLAAC),  # a preferred address before a deprecated one
    ((DEPRECATED,), None, DEPRECATED),  # … but a deprecated one still works
    ((SLAAC, LEASED), None, SLAAC),  # kernel order
    ((SLAAC, LEASED), LEASED.address, LEASED),  # the DHCPv6 lease first
])
def test_global_address(addrs: tuple[ipv6.Addr6, ...], prefer: str | None,
                        expected: ipv6.Addr6 | None) -> None:
    assert ipv6.global_address(addrs, prefer) == expected


RA = ipv6.IF_RA_RCVD
RA_M = ipv6.IF_RA_RCVD | ipv6.IF_RA_MANAGED


@pytest.mark.parametrize(("addrs", "flags", "mode", "elapsed", "expected"), [
    ((LL,), 0, "auto6", 0.0, False),  # wait for the RA / SLAAC
    ((LL,), RA, "auto6", 3.0, False),  # RA without M: SLAAC is on its way
    ((LL,), RA_M, "auto6", 0.5, True),  # RA says managed
    ((LL,), 0, "auto6", 8.0, True),  # no RA in the grace time: try DHCPv6 anyway
    ((LL,), 0, "dhcp6", 0.0, True),  # ip=dhcp6: at once
    ((LL_TENTATIVE,), RA_M, "dhcp6", 9.0, False),  # never before link-local DAD is done
    ((), 0, "dhcp6", 9.0, False),
])
def test_v6_wants_dhcp(addrs: tuple[ipv6.Addr6, ...], flags: int, mode: str,
                       elapsed: float, expected: bool) -> None:
    state = ipv6.V6State(addresses=addrs, ra_flags=flags)
    assert ipv6.v6_wants_dhcp(state, mode=mode, elapsed=elapsed) is expected


@pytest.mark.parametrize(("values", "fixes"), [
    ({"disable_ipv6": "0", "accept_ra": "1", "autoconf": "1", "forwarding": "0"}, {}),
    ({"disable_ipv6": "1", "accept_ra": "1", "autoconf": "1", "forwarding": "0"},
     {"disable_ipv6": "0"}),
    ({"disable_ipv6": "0", "accept_ra": "0", "autoconf": "0", "forwarding": "0"},
     {"accept_ra": "1", "autoconf": "1"}),
    ({"disable_ipv6": "0", "accept_ra": "1", "autoconf": "1", "forwarding": "1"},
     {"accept_ra": "2"}),  # forwarding makes accept_ra=1 ignore RAs
    ({"disable_ipv6": "0", "accept_ra": "2", "autoconf": "1", "forwarding": "0"}, {}),
])
def test_ipv6_sysctl_fixes(values: dict[str, str], fixes: dict[str, str]) -> None:
    assert ipv6.ipv6_sysctl_fixes(values) == fixes


def test_ensure_ipv6_sysctls_writes_only_what_is_wrong(tmp_path: Path) -> None:
    conf = tmp_path / "sys/net/ipv6/conf/eth0"
    conf.mkdir(parents=True)
    for key, value in (("disable_ipv6", "0"), ("accept_ra", "0"), ("autoconf", "1"),
                       ("forwarding", "0")):
        (conf / key).write_text(value + "\n")
    assert ipv6.ensure_ipv6_sysctls("eth0", tmp_path) == {"accept_ra": "1"}
    assert (conf / "accept_ra").read_text() == "1\n"
    assert ipv6.ensure_ipv6_sysctls("eth0", tmp_path) == {}


def test_ensure_ipv6_sysctls_without_ipv6_in_the_kernel(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="no IPv6 in this kernel"):
        ipv6.ensure_ipv6_sysctls("eth0", tmp_path)


class V6Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


class FakeDhcp6:
    """Stands in for Dhcp6Thread: its lease appears ``after`` s of fake time."""

    def __init__(self, clock: V6Clock, lease: Any = None, after: float = 0.0) -> None:
        self.clock, self._lease, self.after = clock, lease, after
        self.started_at: float | None = None
        self.stopped = False
        self.state = "SOLICITING"

    def start(self) -> FakeDhcp6:
        self.started_at = self.clock.now
        return self

    @property
    def lease(self) -> Any:
        if self._lease is None or self.started_at is None:
            return None
        return self._lease if self.clock.now - self.started_at >= self.after else None

    def stop(self) -> None:
        self.stopped = True


def _wait(timeline: Callable[[float], ipv6.V6State], *, mode: str = "auto6",
          dhcp: FakeDhcp6 | None = None, clock: V6Clock | None = None,
          timeout: float = 30) -> tuple[Any, ...]:
    clock = clock or V6Clock()
    t0 = clock.now
    started: list[FakeDhcp6] = []

    def start() -> Any:
        fake = dhcp or FakeDhcp6(clock)
        started.append(fake)
        return fake.start()

    out = ipv6.wait_for_ipv6(mode=mode, timeout=timeout,
                             observe=lambda: timeline(clock.now - t0), start_dhcp6=start,
                             clock=clock, sleep=clock.sleep)
    return (*out, started, clock.now - t0)


def test_wait_slaac_after_dad_without_dhcpv6() -> None:
    def timeline(t: float) -> ipv6.V6State:  # RA at 1 s, DAD of the SLAAC address to 2 s
        if t < 1:
            return ipv6.V6State((LL,))
        return ipv6.V6State((LL, SLAAC_TENTATIVE if t < 2 else SLAAC), ra_flags=RA,
                            gateway="fe80::2")

    addr, source, state, dhcp, started, took = _wait(timeline)
    assert (addr, source, dhcp, started, state.gateway) == (SLAAC, "slaac", None, [], "fe80::2")
    assert 2.0 <= took < 2.2


def test_wait_managed_ra_starts_dhcpv6_and_takes_its_address() -> None:
    clock = V6Clock()
    lease = type("L", (), {"address": LEASED.address})()
    fake = FakeDhcp6(clock, lease, after=1.0)

    def timeline(t: float) -> ipv6.V6State:
        addrs: tuple[ipv6.Addr6, ...] = (LL,)
        if fake.lease is not None:  # applied by the client, then DAD (0.5 s)
            addrs += (LEASED if t >= 1.5 + 0.5 else ipv6.Addr6(
                LEASED.address, 128, 0, ipv6.IFA_F_TENTATIVE),)
        return ipv6.V6State(addrs, ra_flags=RA_M if t >= 0.5 else 0)

    addr, source, _state, dhcp, started, took = _wait(timeline, dhcp=fake, clock=clock)
    assert (addr, source, dhcp) == (LEASED, "dhcpv6", fake)
    assert fake.started_at is not None and 0.5 <= fake.started_at - 100.0 < 0.6
    assert started == [fake] and not fake.stopped
    assert 2.0 <= took < 2.2


def test_wait_no_ra_tries_dhcpv6_after_the_grace_time_and_names_everything_on_timeout() -> None:
    with pytest.raises(NetworkError) as info:
        _wait(lambda t: ipv6.V6State((LL, SLAAC_TENTATIVE)), timeout=12)
    assert str(info.value) == ("network: no global IPv6 address within 12 s (no router "
                               "advertisement; DHCPv6 SOLICITING; DAD not done: "
                               f"{SLAAC.address})")


def test_wait_slaac_wins_over_a_dhcpv6_client_without_lease_which_is_stopped() -> None:
    clock = V6Clock()
    fake = FakeDhcp6(clock)  # never gets a lease

    def timeline(t: float) -> ipv6.V6State:
        return ipv6.V6State((LL, SLAAC) if t >= 3 else (LL,), ra_flags=RA_M)

    addr, source, _state, dhcp, started, _took = _wait(timeline, dhcp=fake, clock=clock)
    assert (addr, source, dhcp, started) == (SLAAC, "slaac", None, [fake])
    assert fake.stopped


def test_wait_a_dhcpv6_address_without_any_ra_is_not_usable() -> None:
    clock = V6Clock()
    lease = type("L", (), {"address": LEASED.address})()
    fake = FakeDhcp6(clock, lease)

    def timeline(t: float) -> ipv6.V6State:
        return ipv6.V6State((LL, LEASED) if fake.lease is not None else (LL,))

    with pytest.raises(NetworkError, match=r"within 10 s \(no router advertisement to route "
                                           r"DHCPv6's fd00:77::142; DHCPv6 SOLICITING\)"):
        _wait(timeline, mode="dhcp6", dhcp=fake, clock=clock, timeout=10)
    assert fake.stopped
