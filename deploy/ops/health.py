"""The health check on a board (host end of ``board/health.py``): ask for the verdict, say it in one line.

After a push switches ``current``, the board proves the release works: its agent classifies the probe image
shipped in the release (``release/probe.py`` chose it and computed the host's answer), and the top-1 must be
the host's. On a failure the board switches back by itself before it answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..board import protocol
from ..errors import HealthCheckFailed, RemoteError
from ..inventory import App
from ..link.remote import REPLY_TIMEOUT, session

if TYPE_CHECKING:  # the type only: paramiko is imported when a connection is made
    from ..link.ssh import Connection


@dataclass(frozen=True)
class HealthResult:
    """One board's verdict; ``ran`` is False when nothing ran (skipped, or passed on an earlier push)."""

    status: str  # passed | failed | skipped
    ran: bool = False
    seconds: float = 0.0  # what the check added to the push, round trip included
    agent_seconds: float = 0.0
    probe: str = ""
    source: str = ""
    expected: list | None = None
    got: list | None = None
    error: str | None = None
    reason: str = ""
    current: str | None = None
    pruned: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"status": self.status, "ran": self.ran, "seconds": round(self.seconds, 3),
                "agent_seconds": round(self.agent_seconds, 3), "probe": self.source or self.probe,
                "expected": self.expected, "got": self.got, "error": self.error, "reason": self.reason}


# ---------------------------------------------------------------- the check on a board


def skipped(reason: str) -> HealthResult:
    return HealthResult(status="skipped", reason=reason)


def check(conn: Connection, app: App, board: str, release: str, keep: int) -> HealthResult:
    """Run the board's check of ``release`` (just made current); HealthCheckFailed when it fails.

    The board has switched back (or removed ``current``) before it answers "failed".
    """
    t0 = time.perf_counter()
    req = protocol.HealthRequest(app=app.name, release=release, timeout=float(app.health_timeout), keep=keep)
    try:
        with session(conn, "health", req, app=app.name) as c:  # the agent may take its timeout
            reply = c.read(protocol.HealthReply, timeout=max(REPLY_TIMEOUT, app.health_timeout + 30.0))
            c.close()
    except RemoteError as exc:
        raise HealthCheckFailed(f"{board}: release {release} is current but its health check gave no verdict "
                                f"({_one_line(str(exc))}); if it failed there the board switched back by itself "
                                f"(see `deploy releases {board}`); push again to check it") from None
    result = HealthResult(status=reply.status, ran=reply.status != "skipped", seconds=time.perf_counter() - t0,
                          agent_seconds=reply.seconds, probe=reply.probe, source=reply.source,
                          expected=reply.expected, got=reply.got, error=reply.agent_error, reason=reply.reason,
                          current=reply.current, pruned=list(reply.pruned))
    if result.status == "failed":
        raise HealthCheckFailed(failure_line(board, release, result), result)
    return result


def failure_line(board: str, release: str, r: HealthResult) -> str:
    """One line: the board, the probe, expected against got (or the agent's error), where the board is now."""
    if r.got is not None and r.expected is not None:
        what = (f"top-1 {r.got[0]} {str(r.got[1])!r} ({float(r.got[2]):.2f}), "
                f"expected {r.expected[0]} {str(r.expected[1])!r}")
    else:
        what = _one_line(r.error or "the agent classified nothing")
    where = f"rolled back to {r.current}" if r.current else "no earlier release to roll back to: current removed"
    return f"{board}: release {release} failed its health check: probe {r.source or r.probe}: {what}; {where}"


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else text)[:300]
