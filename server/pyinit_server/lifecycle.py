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

from dataclasses import dataclass
from typing import Any, Literal

State = Literal["new", "inspected", "deploying", "deployed", "booted", "cleaning", "available",
                "failed"]
STATES: tuple[State, ...] = ("new", "inspected", "deploying", "deployed", "booted", "cleaning",
                             "available", "failed")
CONFIRM_TIMEOUT = 15 * 60.0  # seconds a deployment may wait for its first boot before a warning
MAX_EVIDENCE = 200

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

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "evidence": self.evidence,
                "previous": self.previous}

    @staticmethod
    def from_json(value: Any) -> Lifecycle | None:
        if not isinstance(value, dict) or value.get("state") not in STATES:
            return None
        since = value.get("since")
        previous = value.get("previous")
        return Lifecycle(value["state"], float(since) if isinstance(since, int | float) else 0.0,
                         str(value.get("evidence") or "")[:MAX_EVIDENCE],
                         previous if previous in STATES else None)


def _text(value: Any, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _move(current: Lifecycle | None, state: State, now: float, evidence: str) -> Lifecycle:
    if current is not None and current.state == state:
        return current  # a repeated event does not restart the clock
    return Lifecycle(state, now, evidence[:MAX_EVIDENCE],
                     current.state if current is not None else None)


def advance(current: Lifecycle | None, event: dict[str, Any], now: float) -> Lifecycle | None:
    """The state after ``event`` (received at ``now``). Pure."""
    step, status = event.get("step"), event.get("status")
    if step == "action" and status == "fetched":
        kind = event.get("action")
        if event.get("dry_run") is True:
            return current
        target = _RUNS.get(kind) if isinstance(kind, str) else None
        if target is not None:
            return _move(current, target, now, f"action {kind} fetched")
        return current
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
        kernel = _text(event.get("kernel") or "?", 60)
        return _move(current, "booted", now, f"first boot confirmed by the target "
                                             f"(kernel {kernel})")
    return current


def warning(current: Lifecycle | None, now: float,
            confirm_timeout: float = CONFIRM_TIMEOUT) -> str | None:
    """What the operator should look at, or None. Pure."""
    if current is not None and current.state == "deployed" and \
            now - current.since > confirm_timeout:
        minutes = int((now - current.since) // 60)
        return f"deployed {minutes} min ago and no first boot confirmed"
    return None
