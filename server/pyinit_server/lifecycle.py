"""A machine's lifecycle as the server sees it (issue #16, docs/lifecycle.md): which state it is
in, since when, and the evidence — every state one the machine reported or the server observed.

    new ──action fetched (writeImage)──▶ deploying ──result ok──▶ deployed ──first boot──▶ booted
                                              │                      │
                                              └──result failed──▶ failed ◀── (any run)
    any ──result ok (inspect)──▶ inspected        any ──action fetched (erase)──▶ cleaning
    cleaning ──result ok──▶ available

:func:`advance` is pure: one event (with the server's receive time) and the current state give
the next state, or the same one when the event moves nothing. :func:`warning` says what an
operator should look at (a deployment whose first boot never came). Events are the machine's
word; their fields are cut and never interpreted beyond these few names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

State = Literal["new", "inspected", "deploying", "deployed", "booted", "cleaning", "available",
                "failed"]
STATES: tuple[State, ...] = ("new", "inspected", "deploying", "deployed", "booted", "cleaning",
                             "available", "failed")
CONFIRM_TIMEOUT = 15 * 60.0  # seconds a deployment may wait for its first boot before a warning
MAX_EVIDENCE = 200
PENDING = ("redeploy",)
#: The states whose machine boots its local disk from PXE (deploy once), until a redeploy.
# Deploy once, and clean once: an erased machine powered on again does not erase again (nor
# does it find a system on its disk: the firmware's next boot entry runs).
LOCAL_BOOT: tuple[State, ...] = ("deployed", "booted", "available")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: What an ``action fetched`` event's ``action`` moves the machine into.
_RUNS: dict[str, State] = {"writeImage": "deploying", "erase": "cleaning"}
#: What a ``result ok`` moves it into, by the state its run started in.
_DONE: dict[State, State] = {"deploying": "deployed", "cleaning": "available"}


@dataclass(frozen=True)
class Lifecycle:
    state: State
    since: float        # the server's clock when the machine entered ``state``
    evidence: str       # the event that moved it, in words
    previous: State | None = None
    action_sha256: str | None = None  # the action its last run fetched (deploy once)
    pending: str | None = None        # "redeploy": the operator asked; the next boot provisions

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "evidence": self.evidence,
                "previous": self.previous, "action_sha256": self.action_sha256,
                "pending": self.pending}

    @staticmethod
    def from_json(value: Any) -> Lifecycle | None:
        if not isinstance(value, dict) or value.get("state") not in STATES:
            return None
        since = value.get("since")
        previous = value.get("previous")
        sha = value.get("action_sha256")
        pending = value.get("pending")
        return Lifecycle(value["state"], float(since) if isinstance(since, int | float) else 0.0,
                         str(value.get("evidence") or "")[:MAX_EVIDENCE],
                         previous if previous in STATES else None,
                         sha if isinstance(sha, str) and _SHA256.match(sha) else None,
                         pending if pending in PENDING else None)


def _text(value: Any, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _move(current: Lifecycle | None, state: State, now: float, evidence: str, *,
          action_sha256: str | None = None) -> Lifecycle:
    if current is not None and current.state == state:
        return current  # a repeated event does not restart the clock
    sha = action_sha256 or (current.action_sha256 if current is not None else None)
    pending = current.pending if current is not None and state not in ("deploying",) else None
    return Lifecycle(state, now, evidence[:MAX_EVIDENCE],
                     current.state if current is not None else None, sha, pending)


def advance(current: Lifecycle | None, event: dict[str, Any], now: float) -> Lifecycle | None:
    """The state after ``event`` (received at ``now``). Pure."""
    step, status = event.get("step"), event.get("status")
    if step == "action" and status == "fetched":
        kind = event.get("action")
        if event.get("dry_run") is True:
            return current
        target = _RUNS.get(kind) if isinstance(kind, str) else None
        if target is not None:
            sha = event.get("action_sha256")
            sha = sha if isinstance(sha, str) and _SHA256.match(sha) else None
            if current is not None and current.state == target:  # a retried boot: new hash
                return replace(current, action_sha256=sha or current.action_sha256)
            return _move(current, target, now, f"action {kind} fetched", action_sha256=sha)
        return current
    if step == "operator" and status == "redeploy":  # only the server writes these
        if current is None:
            return None
        return replace(current, pending="redeploy",
                       evidence=f"{current.evidence}; redeploy requested by the operator"
                       [:MAX_EVIDENCE])
    if step == "result" and status == "ok":
        kind = event.get("action")
        if kind == "inspect":
            return _move(current, "inspected", now, "inspection posted")
        if current is not None and current.state in _DONE:
            done = _DONE[current.state]
            how = f", handoff {_text(event['handoff'], 20)}" if event.get("handoff") else ""
            return _move(current, done, now, f"result ok{how}")
        return current
    if step == "result" and status == "failed":
        where = _text(event.get("failed_step") or "?", 20)
        return _move(current, "failed", now,
                     f"{where}: {_text(event.get('error') or 'failed', 150)}")
    if step == "firstboot" and status == "booted":
        if not confirms(current):
            return current  # no deployment on record: the server says so (firstboot_refusal)
        kernel = _text(event.get("kernel") or "?", 60)
        return _move(current, "booted", now, f"first boot confirmed by the target "
                                             f"(kernel {kernel})")
    return current


#: The states a first-boot confirmation can move: a deployment on record (``failed`` too: a
#: step after the write failed and the policy rebooted into the written disk anyway).
CONFIRMABLE: tuple[State, ...] = ("deployed", "booted", "failed")


def confirms(current: Lifecycle | None) -> bool:
    """Whether a ``firstboot booted`` event moves a machine in ``current``. Pure."""
    return current is not None and current.state in CONFIRMABLE


def firstboot_refusal(current: Lifecycle | None) -> str | None:
    """The server's one line for a confirmation it does not count, or None. Pure."""
    if confirms(current):
        return None
    where = current.state if current is not None else "no state"
    return (f"a first-boot confirmation without a deployment on record ({where}): kept as an "
            "event, the state is unchanged")


#: The filter and count of ``/api/machines`` for the machines :func:`warning` names.
UNCONFIRMED = "unconfirmed"
#: What ``/api/machines?lifecycle=`` (and the dashboard's buttons) filter by.
FILTERS: tuple[str, ...] = (*STATES, UNCONFIRMED)


def unconfirmed(state: str | None, since: float | None, now: float,
                confirm_timeout: float = CONFIRM_TIMEOUT) -> bool:
    """Whether a machine ``state`` since ``since`` is a deployment whose first boot never came
    (the index's two columns are enough: the server counts and filters by it). Pure."""
    return state == "deployed" and since is not None and now - since > confirm_timeout


def warning(current: Lifecycle | None, now: float,
            confirm_timeout: float = CONFIRM_TIMEOUT) -> str | None:
    """What the operator should look at, or None. Pure."""
    if current is not None and unconfirmed(current.state, current.since, now, confirm_timeout):
        minutes = int((now - current.since) // 60)
        return f"deployed {minutes} min ago and no first boot confirmed"
    return None


def local_boot(current: Lifecycle | None, served_sha256: str) -> str | None:
    """Why this machine's next PXE boot should boot its local disk instead of provisioning
    (deploy once), or None. ``served_sha256``: the action the server would serve now; a
    changed machine file provisions again, as does a redeploy. Pure."""
    if current is None or current.state not in LOCAL_BOOT or current.pending is not None:
        return None
    if current.action_sha256 is None or current.action_sha256 != served_sha256:
        return None
    return f"{current.state} since {current.since:.0f} with this machine file's action"


def redeploy_refusal(current: Lifecycle | None) -> str | None:
    """Why a redeploy cannot be asked now, or None. Pure."""
    if current is not None and current.state in ("deploying", "cleaning"):
        return (f"it is {current.state} now ({current.evidence}); ask again once that run "
                "has its result")
    return None
