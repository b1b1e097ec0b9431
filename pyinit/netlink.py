"""pyroute2, imported for what pyinit uses of it and nothing more.

``import pyroute2`` runs the package's ``__init__``, which imports every API the library has
(NDB and its SQLite schema, IPDB, conntrack, nftables, IPVS, WireGuard, 9p, ...): about 0.2 s
on a host and 2.6 s of a TCG guest's boot, while pyinit uses rtnetlink, netlink errors and the
DHCPv4 client. Importing this module registers the ``pyroute2`` package *without* running its
``__init__`` (its ``__path__`` only), so that importing a submodule loads that submodule and its
own dependencies; the classes pyinit uses are taken from the submodules that define them
(the DHCPv4 client's on first use: static addressing does not load it).

Nothing else changes for anyone: the first access to any other name of the package
(``from pyroute2 import NDB``) runs the real ``__init__`` then, once, and returns it. Modules of
pyinit import pyroute2 only through here (``from pyinit.netlink import IPRoute``);
a unit test keeps ``pyroute2`` imports out of the rest of the runtime.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any


def _register() -> None:
    if "pyroute2" in sys.modules:  # already imported, lean or whole: nothing to do
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # not installed: the imports below fail with the usual error
    package = importlib.util.module_from_spec(spec)
    lock = threading.RLock()
    state = {"ran": False}

    def __getattr__(name: str) -> Any:  # PEP 562: a name the lean package does not have yet
        # dunders, and submodules (``from pyroute2 import config``): the import system asks
        # here first and imports the submodule itself on AttributeError
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)
        with lock:
            if not state["ran"]:
                state["ran"] = True
                assert spec.loader is not None
                spec.loader.exec_module(package)  # the package's own __init__, now
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    setattr(package, "__getattr__", __getattr__)  # noqa: B010 -- a module, not a class
    sys.modules["pyroute2"] = package


_register()

# ruff: noqa: E402 -- after the registration on purpose
from pyroute2.iproute.linux import AsyncIPRoute, IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

# imported on first use: name -> the submodule that defines it
_ON_USE = {"AsyncDHCPClient": "pyroute2.dhcp.client", "ClientConfig": "pyroute2.dhcp.client",
           "Hook": "pyroute2.dhcp.hooks", "Trigger": "pyroute2.dhcp.hooks",
           "Lease": "pyroute2.dhcp.leases"}

__all__ = ["RTNH_F_ONLINK", "AsyncIPRoute", "IPRoute", "NetlinkError", *_ON_USE]


def __getattr__(name: str) -> Any:  # PEP 562: the DHCPv4 client's names, on first use
    if name in _ON_USE:
        return getattr(importlib.import_module(_ON_USE[name]), name)
    raise AttributeError(f"module 'pyinit.netlink' has no attribute {name!r}")
