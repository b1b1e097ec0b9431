"""PID 1's orphan reaper never steals the exit status of a command pyinit waits for.

The reaper (``policy._reap_orphans``) collects zombies with ``waitid(P_ALL)``; a child of
``proc.run()`` that it collected first would read as exit status 0 (subprocess finds no child
left to wait for). Registration of a new child and the reaper's pick happen under one lock
(``proc.spawn_lock``); without it this test saw 164 of 2000 failing commands read as success.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

COMMANDS = 2000

STRESS = textwrap.dedent("""
    import sys, threading
    from pyinit import policy, proc

    stop = threading.Event()

    def reap() -> None:  # flat out: no sleep between rounds
        while not stop.is_set():
            policy._reap_orphans()

    threading.Thread(target=reap, daemon=True).start()
    n = int(sys.argv[1])
    statuses = [proc.run(["false"], check=False).rc for _ in range(n)]
    stop.set()
    print(" ".join(map(str, statuses)))
""")


def test_reaper_running_flat_out_never_steals_a_status() -> None:
    # its own process: the reaper waits for any child, pytest's included
    done = subprocess.run([sys.executable, "-c", STRESS, str(COMMANDS)], capture_output=True,
                          text=True, timeout=300, check=True)
    statuses = done.stdout.split()
    assert len(statuses) == COMMANDS
    wrong = [s for s in statuses if s != "1"]
    assert wrong == [], f"{len(wrong)} of {COMMANDS} failed commands read as {set(wrong)}"
