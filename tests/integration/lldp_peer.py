"""Both ends of the LLDP netns tests, run inside a namespace with ``ip netns exec``.

``listen``: :class:`pyinit.lldp.Listener` on the given NICs (the down ones raised through its
own netlink seam); prints ``READY <nic>`` once each socket is open, then one JSON line with
what it heard, the malformed-frame counts and its console. ``send``: writes raw Ethernet
frames (hex) onto a NIC through an AF_PACKET socket, the way a broken switch would.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import time
from typing import Any


def listen(args: dict[str, Any]) -> dict[str, Any]:
    from pyinit import lldp, log

    console = io.StringIO()
    log.configure(console=console)

    def opener(name: str) -> socket.socket:
        sock = lldp.open_socket(name)
        print(f"READY {name}", flush=True)
        return sock

    t0 = time.monotonic()
    listener = lldp.Listener(args["interfaces"], down=args.get("down", ()),
                             timeout=args.get("timeout", 20), opener=opener).start()
    listener.join(args.get("timeout", 20) + 5)
    return {"heard": {k: v.as_dict() for k, v in listener.heard.items()},
            "malformed": listener.malformed, "alive": listener.is_alive(),
            "elapsed": time.monotonic() - t0, "console": console.getvalue()}


def send(args: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((args["interface"], 0))
        sizes = [sock.send(bytes.fromhex(frame)) for frame in args["frames"]]
    return {"sent": sizes}


if __name__ == "__main__":
    mode, raw = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(listen(raw) if mode == "listen" else send(raw)), flush=True)
