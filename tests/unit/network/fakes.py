"""Fakes for the network tests: a ``class/net`` entry laid out as the kernel does, and a DHCP
client standing in for pyroute2's (with the lease it hands out)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyinit.network import dhcp4

# --- fake sysfs --------------------------------------------------------------------------------


def add_nic(sysfs: Path, name: str, mac: str, *, ifindex: int, carrier: str | None = "1",
            physical: bool = True, arptype: int = 1, flags: str = "0x1003",
            driver: str | None = "virtio_net") -> Path:
    """One ``class/net/<name>`` entry, laid out as the kernel does."""
    d = sysfs / "class" / "net" / name
    d.mkdir(parents=True)
    (d / "address").write_text(mac + "\n")
    (d / "type").write_text(f"{arptype}\n")
    (d / "ifindex").write_text(f"{ifindex}\n")
    (d / "flags").write_text(flags + "\n")
    if carrier is not None:
        (d / "carrier").write_text(carrier + "\n")
    if physical:
        dev = sysfs / "devices" / "pci0000:00" / f"0000:00:0{ifindex}.0"
        dev.mkdir(parents=True)
        (d / "device").symlink_to(dev)
        if driver:
            drv = sysfs / "bus" / "pci" / "drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            (dev / "driver").symlink_to(drv)
    return d


# --- a lease ------------------------------------------------------------------------------------


def make_lease(**options: Any) -> Any:
    opts: dict[str, Any] = {
        "message_type": 5, "server_id": "10.0.2.2", "subnet_mask": "255.255.255.0",
        "router": ["10.0.2.1", "10.0.2.254"], "name_server": ["10.0.2.3"], "lease_time": 600,
        **options}
    ack = {"yiaddr": "10.0.2.15", "options": {k: v for k, v in opts.items() if v is not None}}
    return dhcp4._memory_lease_type()(ack=ack, interface="eth0",
                                      server_mac="52:55:0a:00:02:02")


# --- a DHCP client ----------------------------------------------------------------------------


class FakeClient:
    """Stands in for AsyncDHCPClient: binds ``bind_after`` s after bootstrap (never if None)."""

    instances: list[FakeClient] = []

    def __init__(self, config: Any, *, bind_after: float | None = 0.01,
                 fail: BaseException | None = None) -> None:
        self.config = config
        self.state = "INIT"
        self.bind_after = bind_after
        self.fail = fail
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exited = False
        FakeClient.instances.append(self)

    async def __aenter__(self) -> FakeClient:
        if self.fail:
            raise self.fail
        self.loop = asyncio.get_running_loop()
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.state = "OFF"
        self.exited = True

    async def bootstrap(self) -> None:
        self.state = "SELECTING"
        if self.bind_after is not None:
            asyncio.get_running_loop().call_later(
                self.bind_after, lambda: asyncio.ensure_future(self.fire("bound")))

    async def fire(self, trigger: str) -> None:
        self.state = "BOUND"
        for hook in self.config.hooks:
            if trigger in hook.triggers:
                await hook(make_lease())

    def fire_threadsafe(self, trigger: str) -> None:
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.fire(trigger), self.loop).result(5)


def factory(**kwargs: Any) -> Callable[[Any], FakeClient]:
    return lambda config: FakeClient(config, **kwargs)
