"""pyinit.netlink: pyroute2 registered without its package __init__ (in a fresh interpreter),
transparent for any other user of pyroute2, and the only way the runtime imports it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "pyinit"
# what `import pyroute2` drags in and pyinit never uses (NDB loads sqlite3)
HEAVY = ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.conntrack", "pyroute2.nftables",
         "pyroute2.plan9", "pyroute2.iwutil", "sqlite3")


def _fresh(code: str) -> dict[str, object]:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def test_what_pyinit_uses_loads_none_of_the_rest() -> None:
    got = _fresh(f"""
import json, sys
from pyinit.netlink import AsyncIPRoute, IPRoute, NetlinkError, RTNH_F_ONLINK
from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
from pyroute2.dhcp.hooks import Hook, Trigger
from pyroute2.dhcp.leases import Lease
print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules],
                  "iproute": IPRoute.__module__, "onlink": RTNH_F_ONLINK}}))
""")
    assert got == {"heavy": [], "iproute": "pyroute2.iproute.linux", "onlink": 4}


def test_any_other_name_runs_the_package_init_once() -> None:
    got = _fresh("""
import json, sys
import pyinit.netlink
import pyroute2
from pyroute2 import NDB, IPRoute
print(json.dumps({"version": pyroute2.__version__, "ndb": NDB.__module__,
                  "same": IPRoute is pyinit.netlink.IPRoute,
                  "loaded": "pyroute2.ndb.main" in sys.modules}))
""")
    assert got["ndb"] == "pyroute2.ndb.main" and got["same"] is True and got["loaded"] is True
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", str(got["version"]))


def test_an_unknown_name_is_an_attribute_error() -> None:
    got = _fresh("""
import json
import pyinit.netlink
import pyroute2
try:
    pyroute2.NoSuchThing
    print(json.dumps({"error": None}))
except AttributeError as exc:
    print(json.dumps({"error": str(exc)}))
""")
    assert got == {"error": "module 'pyroute2' has no attribute 'NoSuchThing'"}


def test_the_runtime_imports_pyroute2_only_through_netlink() -> None:
    pattern = re.compile(r"^\s*(from pyroute2 import|import pyroute2\b)", re.M)
    offenders = [str(p.relative_to(RUNTIME)) for p in sorted(RUNTIME.rglob("*.py"))
                 if p.name != "netlink.py" and pattern.search(p.read_text())]
    assert offenders == []
