"""The first-boot confirmation (issue #16, docs/lifecycle.md): a one-shot the configure step
installs into the target, which on the target's first boot tells the provisioning server that
the deployed system came up (kernel, host name, machine-id, uptime), then removes itself.

"deployed" only says pyinit handed off; "booted" is the target's own word. The one-shot posts
the same ``POST /events/<mac>`` pyinit uses, with the machine's token (``pyinit.token=``): an
event ``{"step": "firstboot", "status": "booted", ...}``. It never blocks the target's boot
(systemd: ``Type=simple``, nothing waits for it; init scripts: run in the background), tries
a bounded number of times (:data:`ATTEMPTS`, backing off to a minute: about 6 minutes, plus
up to 15 s per try), and removes itself whether or not the server answered. A target with no
way to post (no curl, wget or bash) is said so once, without retries.

How it runs, chosen from what the target has (:func:`plan`, pure):

* ``systemd``: ``/etc/systemd/system/pyinit-firstboot.service``, wanted by multi-user.target;
* ``rcS``: busybox-style ``/etc/init.d/rcS`` that runs ``/etc/init.d/S??*``:
  ``/etc/init.d/S99pyinit-firstboot``;
* ``rc.local``: a line appended to ``/etc/rc.local``;
* none of them: nothing installed, and the step says so.

How it posts: ``curl``, else ``wget`` (GNU's or busybox's; ``-T`` only where ``wget --help``
lists it: Debian's busybox wget has no timeout option and crashes on one), else bash's
``/dev/tcp`` (plain HTTP only); whichever the target has when it boots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyinit import rootpath

Method = Literal["systemd", "rcS", "rc.local"]

SCRIPT = "usr/local/sbin/pyinit-firstboot"
UNIT = "etc/systemd/system/pyinit-firstboot.service"
WANTS = "etc/systemd/system/multi-user.target.wants/pyinit-firstboot.service"
RCS_SCRIPT = "etc/init.d/S99pyinit-firstboot"
RC_LOCAL = "etc/rc.local"
RC_LOCAL_LINE = f"/{SCRIPT} &  # pyinit: first-boot confirmation, removes itself"
ATTEMPTS = 10
_SAFE = re.compile(r"^[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+$")

Files = dict[str, tuple[str, int]]


class FirstBootError(ValueError):
    """The confirmation cannot be written (a URL or token that a shell script must not carry)."""


@dataclass(frozen=True)
class Plan:
    method: Method | None
    files: Files
    symlinks: dict[str, str]  # path -> link target
    rc_local: bool            # append RC_LOCAL_LINE to /etc/rc.local


def _quote(value: str, what: str) -> str:
    if not _SAFE.match(value) or "'" in value:
        shown = "(not shown)" if what == "token" else repr(value)  # a token is never logged
        raise FirstBootError(f"first-boot confirmation: the {what} has characters a shell "
                             f"script must not carry: {shown}")
    return f"'{value}'"


def script(url: str, token: str | None, *, attempts: int = ATTEMPTS) -> str:
    """The one-shot (POSIX sh). ``url``: the machine's events URL. Pure."""
    token_arg = _quote(token, "token") if token else "''"
    cleanup = " ".join(f'"$R/{p}"' for p in (UNIT, WANTS, RCS_SCRIPT))
    return f"""#!/bin/sh
# Written by pyinit (docs/lifecycle.md): tells the provisioning server that this machine's
# first boot came up, then removes itself. Never blocks the boot; gives up after {attempts} tries.
URL={_quote(url, "server URL")}
TOKEN={token_arg}
R=${{PYINIT_FIRSTBOOT_ROOT:-}}  # tests run it outside a target; empty on the machine
AUTH=${{TOKEN:+Authorization: Bearer $TOKEN}}

body() {{
    printf '{{"step":"firstboot","status":"booted","kernel":"%s","hostname":"%s",' \\
        "$(uname -r)" "$(hostname 2>/dev/null || cat /etc/hostname)"
    printf '"machine_id":"%s","uptime":%s}}' \\
        "$(cat /etc/machine-id 2>/dev/null)" "$(cut -d' ' -f1 /proc/uptime)"
}}

post_tcp() {{  # bash's /dev/tcp: plain HTTP only
    rest=${{URL#http://}}; hostport=${{rest%%/*}}; path=/${{rest#*/}}
    host=${{hostport%:*}}; port=${{hostport##*:}}; [ "$port" = "$hostport" ] && port=80
    B=$1 H=$host P=$port PA=$path A=$AUTH bash -c '
        exec 3<>/dev/tcp/$H/$P || exit 1
        printf "POST %s HTTP/1.0\\r\\nHost: %s\\r\\n" "$PA" "$H" >&3
        printf "Content-Type: application/json\\r\\n" >&3
        [ -n "$A" ] && printf "%s\\r\\n" "$A" >&3
        printf "Content-Length: %s\\r\\n\\r\\n%s" "${{#B}}" "$B" >&3
        read -r _ code _ <&3; [ "$code" = 204 ] || [ "$code" = 200 ]'
}}

post() {{
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 15 -o /dev/null -H 'Content-Type: application/json' \\
            ${{AUTH:+-H "$AUTH"}} --data "$1" "$URL"
    elif command -v wget >/dev/null 2>&1; then
        # -T only where wget lists it: Debian's busybox wget has no timeout and dies of -T
        case "$(wget --help 2>&1)" in *"-T "*|*--timeout*) T="-T 15" ;; *) T= ;; esac
        wget -q $T -O /dev/null --header='Content-Type: application/json' \\
            ${{AUTH:+--header="$AUTH"}} --post-data="$1" "$URL"
    elif command -v bash >/dev/null 2>&1 && [ "${{URL#http://}}" != "$URL" ]; then
        post_tcp "$1"
    else
        echo "pyinit-firstboot: no curl, wget or bash to reach $URL" >&2; NOCLIENT=1; return 1
    fi
}}

cleanup() {{
    rm -f {cleanup}
    [ -f "$R/{RC_LOCAL}" ] && sed -i '/pyinit-firstboot/d' "$R/{RC_LOCAL}"
    rm -f "$0"
}}

i=1; wait=5; NOCLIENT=
while :; do
    if post "$(body)"; then
        echo "pyinit-firstboot: told $URL that this machine booted"
        cleanup; exit 0
    fi
    [ -n "$NOCLIENT" ] && {{ cleanup; exit 0; }}  # said so once: nothing a retry would change
    [ $i -ge {attempts} ] && break
    sleep $wait; i=$((i + 1)); wait=$((wait * 2)); [ $wait -gt 60 ] && wait=60
done
echo "pyinit-firstboot: $i tries to post to $URL failed; giving up" >&2
cleanup; exit 0
"""


UNIT_TEXT = f"""# Written by pyinit (docs/lifecycle.md); removes itself after the first boot.
[Unit]
Description=Tell the provisioning server this machine booted (pyinit, once)
Wants=network-online.target
After=network-online.target

[Service]
# simple, not oneshot: multi-user.target must not wait for the server
Type=simple
ExecStart=/{SCRIPT}

[Install]
WantedBy=multi-user.target
"""

RCS_TEXT = f"""#!/bin/sh
# Written by pyinit (docs/lifecycle.md): the first-boot confirmation, in the background.
[ "$1" = stop ] || /{SCRIPT} &
"""


def plan(*, systemd: bool, rcs: bool, rc_local: bool, url: str, token: str | None) -> Plan:
    """What to write for a target with these init systems. Pure."""
    files: Files = {SCRIPT: (script(url, token), 0o700)}
    if systemd:
        files[UNIT] = (UNIT_TEXT, 0o644)
        return Plan("systemd", files, {WANTS: f"/{UNIT}"}, False)
    if rcs:
        files[RCS_SCRIPT] = (RCS_TEXT, 0o755)
        return Plan("rcS", files, {}, False)
    if rc_local:
        return Plan("rc.local", files, {}, True)
    return Plan(None, {}, {}, False)


def detect(root: Path) -> dict[str, bool]:
    """Which init systems the target at ``root`` has (paths as the target sees them)."""
    def there(rel: str) -> bool:
        return rootpath.resolve(root, rel).is_file()
    return {"systemd": there("usr/lib/systemd/systemd") or there("lib/systemd/systemd"),
            "rcs": there("etc/init.d/rcS"), "rc_local": there(RC_LOCAL)}
