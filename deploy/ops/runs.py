"""Agent runs on a board (host end of ``board/runs.py``): start detached, stream events, re-attach, stop.

A run is started by the board-side helper with ``start_new_session``: it survives the SSH
session, so a dropped link costs the live view, not the run (``deploy run --attach ID``
picks it up again, ``--resume ID`` restarts a killed run and the agent skips finished
images). Events arrive as JSON lines defined once in ``agent.protocol``. What a run leaves
is brought home by ``ops/outputs.py``.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent import protocol as events

from .. import fleet
from ..board import protocol
from ..errors import ConnectError, RemoteError, RunError, UsageError
from ..inventory import Board, Inventory
from ..link.remote import Call, call, session

if TYPE_CHECKING:  # the type only: paramiko is imported when a connection is made
    from ..link.ssh import Connection


def check_run_id(run_id: str, what: str = "run id") -> str:
    """A run id the user gave (or a board sent): one safe path component that is not a reserved name
    (``outputs/<board>/service/`` is the collected journal); UsageError otherwise, before any board is touched."""
    if not protocol.valid_run_id(run_id):
        reserved = " (a reserved name)" if protocol.valid_id(run_id) else ""
        raise UsageError(f"invalid {what} {run_id!r}{reserved}: letters, digits, '.', '_', '-', at most 128, "
                         "starting with a letter or digit")
    return run_id


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(2).hex()


@dataclass
class RunResult:
    board: str
    run_id: str
    release: str = ""
    ok: int = 0
    failed: int = 0
    total: int = 0
    ended: bool = False
    exit_code: int | None = None
    summary: dict = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = "agent"  # "command": an own app's run (its exit status decides)

    @property
    def success(self) -> bool:
        return self.ended and self.failed == 0 and self.exit_code in (0, None) and self.summary.get("status", "ok") == "ok"


def _upload_images(writer, images: Path) -> int:
    if images.is_file():
        files = [(images, images.name)]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(images):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath, fn)
                if p.is_file() and not p.is_symlink():
                    files.append((p, p.relative_to(images).as_posix()))
    # dereference: a file hard-linked to another is sent as itself (tarfile would make it a link member,
    # which the board refuses); symbolic links were left out above
    with tarfile.open(fileobj=writer, mode="w|", bufsize=1 << 20, format=tarfile.PAX_FORMAT, dereference=True) as tf:
        for path, arcname in files:
            tf.add(path, arcname=arcname, recursive=False)
    writer.flush()
    return len(files)


class _Interruptible:
    """A writer that stops when the command is interrupted (the board then removes the half-received run)."""

    def __init__(self, writer, board: str):
        self.writer = writer
        self.board = board

    def write(self, data) -> int:
        if fleet.CANCEL.is_set():
            raise RunError(f"{self.board}: upload interrupted; the board keeps no part of it")
        return self.writer.write(data)

    def flush(self) -> None:
        self.writer.flush()


def upload(c: Call, board: Board, images: Path) -> int:
    """Send the images of a run; a board that stopped reading says why (a full disk: no run was made)."""
    try:
        return _upload_images(_Interruptible(c.writer(), board.name), images)
    except OSError as exc:
        transport = c.chan.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectError(f"{board.name}: connection lost while the images were sent ({exc})") from None
        raise RunError(c.error_after_stream() or f"{board.name}: upload failed: {exc}") from None


def run(
    inv: Inventory,
    board: Board,
    conn: Connection,
    *,
    images: Path | None = None,
    run_id: str | None = None,
    resume: bool = False,
    mode: str = "run",
    overrides: dict | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> RunResult:
    """Start (or resume) a run and follow it to its end event."""
    if images is not None and not images.exists():
        raise RunError(f"images not found: {images}")
    run_id = check_run_id(run_id) if run_id else new_run_id()
    t0 = time.perf_counter()
    req = protocol.RunRequest(app=inv.app.name, run_id=run_id, resume=resume, mode=mode, overrides=overrides or {},
                              upload=images is not None, follow=True)
    with session(conn, "run", req, app=inv.app.name) as c:
        if images is not None:
            upload(c, board, images)
        started = c.read(protocol.RunStarted)
        if started.run_id != run_id:
            raise RemoteError(f"{board.name}: the board started run {started.run_id[:200]!r}, not {run_id!r}")
        result = RunResult(board=board.name, run_id=run_id, release=started.release)
        _follow(c, result, on_event)
    result.seconds = time.perf_counter() - t0
    return result


def attach(inv: Inventory, board: Board, conn: Connection, run_id: str, on_event=None) -> RunResult:
    check_run_id(run_id)
    with session(conn, "attach", protocol.AttachRequest(app=inv.app.name, run_id=run_id)) as c:
        info = c.read(protocol.Attached)
        if info.run_id != run_id:
            raise RemoteError(f"{board.name}: the board attached run {info.run_id[:200]!r}, not {run_id!r}")
        result = RunResult(board=board.name, run_id=run_id)
        _follow(c, result, on_event)
    return result


FOLLOW_TIMEOUT = 600.0  # the agent writes progress events often; minutes of silence means a lost link


def _follow(c: Call, result: RunResult, on_event) -> None:
    """Count the agent's events into ``result`` until the board's FollowEnd line."""
    while True:
        try:
            line = c.readline(timeout=FOLLOW_TIMEOUT)
        except RemoteError:
            line = b""
        if not line:
            raise RunError(
                f"{result.board}: lost the connection while following run {result.run_id}; it goes on on the board: "
                f"deploy run {result.board} --attach {result.run_id}"
            )
        if line.startswith(b'{"helper"') or line.startswith(b'{"error"'):
            try:
                obj = json.loads(line)
                if "error" in obj:
                    raise RemoteError(f"{result.board}: {str(obj['error'])[:2000]}")
                end = protocol.decode(protocol.FollowEnd, obj) if obj.get("helper") == "exit" else None
            except (ValueError, TypeError, RecursionError) as exc:
                raise RunError(f"{result.board}: bad line from the board: {str(exc)[:300]}") from None
            if end is not None:
                result.exit_code = end.code
                break
            continue
        try:
            ev = checked_event(events.decode(line))
        except (events.ProtocolError, RecursionError) as exc:
            raise RunError(f"{result.board}: bad event from the agent: {str(exc)[:300]}") from None
        kind = ev["event"]
        if kind == "start":
            result.total = ev.get("total", 0)
            result.kind = "command" if ev.get("mode") == "command" else "agent"
        elif kind == "result":
            result.ok += 1
        elif kind == "error":
            result.failed += 1
            result.errors.append(ev)
        elif kind == "end":
            result.ended = True
            result.summary = ev["summary"]
        if on_event:
            on_event(ev)
    c.close()


NUMBER = (int, float)
# the fields the host reads of each event, and their JSON types (the agent's own schema: agent/protocol.py)
EVENT_TYPES = {
    "start": {"run_id": str, "mode": str, "total": int, "skipped": int},
    "result": {"image": str, "topk": list},
    "error": {"image": str, "kind": str, "message": str},
    "progress": {"done": int, "total": int, "ips": NUMBER},
    "end": {"summary": dict},
}


def checked_event(ev: dict) -> dict:
    """An event whose fields the host uses have their types (a top-k row is [index, label, score], a bench
    row a mapping); ProtocolError otherwise, so nothing downstream formats a string as a number."""
    for key, kind in EVENT_TYPES.get(ev["event"], {}).items():
        value = ev.get(key)
        if key in ev and (isinstance(value, bool) or not isinstance(value, kind)):
            raise events.ProtocolError(f"{ev['event']} event: {key} is {type(value).__name__}")
    rows = ev.get("topk", [])
    if ev["event"] == "result" and not all(isinstance(r, list) and len(r) >= 3 and isinstance(r[0], int)
                                           and isinstance(r[1], str) and isinstance(r[2], NUMBER) for r in rows):
        raise events.ProtocolError("result event: topk rows are not [index, label, score]")
    if ev["event"] == "end" and not _bench_rows_ok(ev["summary"]):
        raise events.ProtocolError("end event: bench rows are not {batch, throughput, latency_ms: {...}} mappings")
    return ev


def _bench_rows_ok(summary: dict) -> bool:
    """A bench summary's rows and unsupported sizes, as charts and tables read them."""
    rows, unsupported = summary.get("bench", []), summary.get("unsupported", [])
    if not isinstance(rows, list) or not isinstance(unsupported, list):
        return False
    for r in rows:
        lat = r.get("latency_ms") if isinstance(r, dict) else None
        if not (isinstance(lat, dict) and isinstance(r.get("batch"), int) and isinstance(r.get("throughput"), NUMBER)
                and all(isinstance(v, NUMBER) for v in lat.values()) and isinstance(r.get("mode") or "", str)):
            return False
    return all(isinstance(u, dict) and isinstance(u.get("batch"), int) for u in unsupported)


def stop(inv: Inventory, conn: Connection, run_id: str) -> protocol.StopReply:
    """SIGTERM the run's agent: it ends the run as partial, keeping every finished result."""
    check_run_id(run_id)
    return call(conn, "stop", protocol.StopRequest(app=inv.app.name, run_id=run_id))
