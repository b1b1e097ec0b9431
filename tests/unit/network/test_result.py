"""pyinit.network.result: what the network step hands the boot."""

from __future__ import annotations

import json

from pyinit.network.dhcp4 import DhcpThread
from pyinit.network.result import NetworkResult


def test_network_result_as_dict_is_json() -> None:
    result = NetworkResult(interface="eth0", mac="52:54:00:00:00:01", address="10.0.2.15",
                           prefixlen=24, gateway="10.0.2.1", dns=("10.0.2.3",), source="dhcp",
                           server="10.0.2.2", dhcp=DhcpThread("eth0"))
    out = json.loads(json.dumps(result.as_dict()))
    assert "dhcp" not in out
    assert out["dns"] == ["10.0.2.3"] and out["gateway"] == "10.0.2.1"
