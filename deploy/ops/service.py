"""``deploy service start|status|stop|logs`` and ``deploy collect``: the agent as a supervised service.

The board keeps the agent running on what arrives in its inbox (``agent/service.py``), supervised
without root (``deploy/board/supervisor.py``: a systemd user unit, else the crontab's ``@reboot``),
and appends one record per image to a journal with contiguous sequence numbers
(``agent/journal.py``). The host collects:

``collect`` asks for the records after the last sequence number in its own
``outputs/<board>/service/journal.jsonl``, appends exactly the bytes announced, fsyncs, and only
then acknowledges; the board then drops the journal segments wholly acknowledged. So a collect cut
off anywhere either left nothing (the torn tail of the local file is cut before the next append)
or left records the board still has but the host will not ask for again: resumable, never twice.

``push`` moves a running service to the release it made current once the health check passed
(:func:`follow_push`); the agent switches between two chunks of images, never within one.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..board import protocol
from ..errors import RemoteError, ServiceError
from ..inventory import Board, Inventory
from ..link.remote import call, session

if TYPE_CHECKING:  # the type only: paramiko is imported when a connection is made
    from ..link.ssh import Connection

JOURNAL = "journal.jsonl"
PIECE = 1 << 20
MAX_RECORD = 1 << 20  # a journal record is a few hundred bytes; the first and last are parsed, no longer than this


def _request(inv: Inventory, action: str, **fields) -> protocol.ServiceRequest:
    return protocol.ServiceRequest(app=inv.app.name, action=action, **fields)


def _call(conn: Connection, req: protocol.ServiceRequest) -> protocol.ServiceInfo:
    try:
        return call(conn, "service", req, app=req.app)
    except RemoteError as exc:
        raise ServiceError(str(exc)) from None


def start(inv: Inventory, conn: Connection, inbox: str | None = None, method: str = "auto",
          wait: float = 60.0) -> protocol.ServiceInfo:
    """Install and start the service (or apply a new configuration to a running one); waits until the agent
    runs. ServiceError when it does not (the reason the board gives: model, backend, crash loop)."""
    s = inv.app.service
    info = _call(conn, _request(inv, "start", inbox=inbox or s.inbox, policy=s.policy, settle=s.settle,
                                max_disk=s.max_disk, rotate=s.rotate, log_max=s.log_max, method=method, wait=wait))
    if info.agent_pid is None or info.state not in ("running", "idle", "disk-full"):
        why = info.last_error or info.reason or f"supervisor {info.supervisor}, agent {info.state or 'not running'}"
        raise ServiceError(f"{conn.endpoint.name}: the service did not come up: {why} (deploy service logs)")
    return info


def stop(inv: Inventory, conn: Connection) -> protocol.ServiceInfo:
    return _call(conn, _request(inv, "stop"))


def status(inv: Inventory, conn: Connection) -> protocol.ServiceInfo:
    return _call(conn, _request(inv, "status"))


def follow_push(inv: Inventory, conn: Connection, release: str, wait: float = 60.0) -> dict:
    """After a push (and its health check): move the service to ``release``; what happened, for the push's row."""
    info = _call(conn, _request(inv, "switch", release=release, wait=wait))
    moved = info.release == release and info.agent_pid is not None
    return {"moved": moved, "release": info.release, "state": info.state, "supervisor": info.supervisor}


# ---------------------------------------------------------------- collect


@dataclass(frozen=True)
class CollectResult:
    board: str
    path: Path
    first: int  # the first record received (records first..last), or 0 with none
    last: int  # the host's last sequence number afterwards
    records: int
    bytes: int
    seconds: float
    acked: int
    removed: tuple[str, ...]
    missing: int  # records the board no longer had (acknowledged earlier, then removed): a fresh outputs/

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["removed"] = list(self.removed)
        d["records_per_s"] = round(self.rate, 1)
        d["seconds"] = round(self.seconds, 3)
        return d


def local_journal(inv: Inventory, board: Board, dest_root: Path | None = None) -> Path:
    root = dest_root or inv.outputs
    return root / board.name / "service" / JOURNAL


def last_local_seq(path: Path) -> int:
    """The last sequence number in the host's journal copy, after cutting a torn tail (an interrupted collect)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    with open(path, "r+b") as f:
        back = min(size, 1 << 16)
        while True:
            f.seek(size - back)
            tail = f.read(back)
            end = tail.rfind(b"\n")
            if end < 0 and back < size:
                back = min(size, back * 4)
                continue
            if end + 1 < len(tail):  # a torn line after the last complete one
                f.truncate(size - back + end + 1)
            if end < 0:
                return 0
            start = tail.rfind(b"\n", 0, end) + 1
            if start == 0 and back < size:
                back = min(size, back * 4)
                continue
            try:
                return int(json.loads(tail[start:end])["seq"])
            except (ValueError, KeyError, TypeError):
                raise ServiceError(f"{path}: its last line is not a journal record; move the file away to "
                                   "collect again from the board's oldest record") from None


def collect(inv: Inventory, board: Board, conn: Connection, dest_root: Path | None = None,
            on_bytes=None) -> CollectResult:
    """Append the board's new journal records to ``outputs/<board>/service/journal.jsonl``; see the module doc."""
    path = local_journal(inv, board, dest_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    after = last_local_seq(path)
    t0 = time.perf_counter()
    try:
        with session(conn, "collect", protocol.CollectRequest(app=inv.app.name, after=after)) as c:
            head = c.read(protocol.CollectHead)
            got = _receive(c, path, head, after, on_bytes)
            c.send(protocol.CollectAck(seq=head.last if got else after))
            done = c.read(protocol.CollectDone)
            c.close()
    except RemoteError as exc:
        raise ServiceError(str(exc)) from None
    records = max(0, head.last - head.first + 1) if got else 0
    return CollectResult(board=board.name, path=path, first=head.first if records else 0,
                         last=head.last if records else after, records=records, bytes=head.bytes,
                         seconds=time.perf_counter() - t0, acked=done.acked, removed=tuple(done.removed),
                         missing=max(0, head.oldest - after - 1) if records else 0)


def _receive(c, path: Path, head: protocol.CollectHead, after: int, on_bytes) -> bool:
    """Read exactly ``head.bytes`` bytes, check they are records first..last, append and fsync them.

    The bytes go to a file beside the journal as they arrive (memory stays flat whatever the board
    announces; the host's free space is checked first), are checked, and only then appended."""
    if head.last < head.first or head.bytes == 0:
        return False
    if head.first <= after or head.bytes < 0:
        raise ServiceError(f"{c.board}: the board announced records {head.first}..{head.last} ({head.bytes} bytes), "
                           f"the host has up to {after}")
    free = shutil.disk_usage(path.parent).free
    if head.bytes > free:
        raise ServiceError(f"{c.board}: {head.bytes / 2**20:,.1f} MiB of records to collect, {path.parent} has "
                           f"{free / 2**20:,.1f} MiB free: nothing was collected")
    part = path.with_name(f".{JOURNAL}.incoming-{os.getpid()}")
    try:
        with open(part, "wb") as f:
            shape = _copy_records(c.bulk(head.bytes, on_bytes), f, head.bytes, c.board, head.last - head.first + 1)
        _check_shape(c.board, shape, head)
        with open(part, "rb") as src, open(path, "ab") as f:
            shutil.copyfileobj(src, f, PIECE)
            f.flush()
            os.fsync(f.fileno())
    finally:
        part.unlink(missing_ok=True)
    return True


def _copy_records(stream, f, size: int, board: str, want: int) -> tuple[int, bytes, bytes, bool]:
    """Copy ``size`` bytes of ``stream`` into ``f``; (newlines, first line, last line, ends with a newline),
    keeping at most ``MAX_RECORD`` bytes of each line in memory. A line longer than that, or more lines than
    the ``want`` records announced, ends it at once: whatever the board announced, garbage is not copied."""
    count, first, tail, left = 0, b"", b"", size
    while left:
        data = stream.read(min(PIECE, left))
        if not data:
            raise ServiceError(f"{board}: the journal stream ended {left} bytes early; collect again to resume")
        f.write(data)
        left -= len(data)
        if not count and len(first) <= MAX_RECORD:
            first += data[: MAX_RECORD + 1]
        count += data.count(b"\n")
        tail = (tail + data)[-(MAX_RECORD + 1):] if len(data) <= MAX_RECORD else data[-(MAX_RECORD + 1):]
        if count > want or b"\n" not in tail[:-1] and len(tail) > MAX_RECORD:
            raise ServiceError(f"{board}: the journal stream is not {want} records of at most {MAX_RECORD >> 20} MiB; "
                               "nothing was appended")
    end = first.find(b"\n")
    last_start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
    return count, first[:end] if end >= 0 else b"", tail[last_start:-1], tail.endswith(b"\n")


def _check_records(board: str, data: bytes, head: protocol.CollectHead) -> None:
    """``data``, a whole journal stream in memory, checked as :func:`_receive` checks what it copies."""
    _check_shape(board, _copy_records(io.BytesIO(data), io.BytesIO(), len(data), board, head.last - head.first + 1),
                 head)


def _check_shape(board: str, shape: tuple[int, bytes, bytes, bool], head: protocol.CollectHead) -> None:
    """The stream must be whole lines, one per record, starting at ``first`` and ending at ``last``
    (sequence numbers are contiguous, so count + both ends prove it)."""
    count, first, last, whole = shape
    want = head.last - head.first + 1
    if not whole or count != want:
        raise ServiceError(f"{board}: the journal stream does not hold {want} whole records; nothing was appended")
    try:
        a = json.loads(first)["seq"]
        b = json.loads(last)["seq"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ServiceError(f"{board}: the journal stream is not journal records; nothing was appended") from None
    if (a, b) != (head.first, head.last):
        raise ServiceError(f"{board}: the journal stream holds records {a!r}..{b!r}, not {head.first}..{head.last}")


# ---------------------------------------------------------------- logs


def logs(inv: Inventory, conn: Connection, lines: int = 50, follow: bool = False, out=None) -> None:
    """Copy the agent's log to ``out`` (binary); with ``follow`` until interrupted."""
    out = out or sys.stdout.buffer
    try:
        with session(conn, "logs", protocol.LogsRequest(app=inv.app.name, lines=lines, follow=follow)) as c:
            c.read(protocol.LogsHead)
            wait = math.inf if follow else None  # a quiet service writes nothing for hours
            while True:
                line = c.readline(wait, limit=MAX_RECORD)  # line by line, so a followed log shows each as it comes
                if not line:
                    break
                out.write(line)
                out.flush()
    except RemoteError as exc:
        raise ServiceError(str(exc)) from None
