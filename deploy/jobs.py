"""Agent runs on a board: start detached, stream events, re-attach, pull outputs back.

A run is started by the board-side helper with ``start_new_session``: it survives the SSH
session, so a dropped link costs the live view, not the run (``deploy run --attach ID``
picks it up again, ``--resume ID`` restarts a killed run and the agent skips finished
images). Events arrive as JSON lines defined once in ``agent.protocol``.

``pull`` extracts a tar stream into ``outputs/<board>/<run-id>/`` and refuses anything
that could land outside it: absolute names, ``..``, links, devices. It unpacks into a
temporary sibling and renames, so an interrupted pull never leaves a half directory
under the final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from agent import protocol as events

from .board import protocol
from .errors import RemoteError, RunError
from .inventory import Board, Inventory
from .remote import Call, call, session
from .ssh import Connection

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


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
    with tarfile.open(fileobj=writer, mode="w|", bufsize=1 << 20, format=tarfile.PAX_FORMAT) as tf:
        for path, arcname in files:
            tf.add(path, arcname=arcname, recursive=False)
    writer.flush()
    return len(files)


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
    run_id = run_id or new_run_id()
    if not RUN_ID_RE.match(run_id):
        raise RunError(f"invalid run id {run_id!r}")
    t0 = time.perf_counter()
    req = protocol.RunRequest(app=inv.app.name, run_id=run_id, resume=resume, mode=mode, overrides=overrides or {},
                              upload=images is not None, follow=True)
    with session(conn, "run", req, app=inv.app.name) as c:
        if images is not None:
            _upload_images(c.writer(), images)
        started = c.read(protocol.RunStarted)
        result = RunResult(board=board.name, run_id=run_id, release=started.release)
        _follow(c, result, on_event)
    result.seconds = time.perf_counter() - t0
    return result


def attach(inv: Inventory, board: Board, conn: Connection, run_id: str, on_event=None) -> RunResult:
    if not RUN_ID_RE.match(run_id):
        raise RunError(f"invalid run id {run_id!r}")
    with session(conn, "attach", protocol.AttachRequest(app=inv.app.name, run_id=run_id)) as c:
        info = c.read(protocol.Attached)
        result = RunResult(board=board.name, run_id=info.run_id)
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
            obj = json.loads(line)
            if "error" in obj:
                raise RemoteError(f"{result.board}: {obj['error']}")
            if obj.get("helper") == "exit":
                result.exit_code = protocol.decode(protocol.FollowEnd, obj).code
                break
            continue
        try:
            ev = events.decode(line)
        except events.ProtocolError as exc:
            raise RunError(f"{result.board}: bad event from the agent: {exc}") from None
        kind = ev["event"]
        if kind == "start":
            result.total = ev.get("total", 0)
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


def stop(inv: Inventory, conn: Connection, run_id: str) -> protocol.StopReply:
    """SIGTERM the run's agent: it ends the run as partial, keeping every finished result."""
    if not RUN_ID_RE.match(run_id):
        raise RunError(f"invalid run id {run_id!r}")
    return call(conn, "stop", protocol.StopRequest(app=inv.app.name, run_id=run_id))


@dataclass(frozen=True)
class PullResult:
    board: str
    run_id: str
    path: Path
    files: int
    bytes: int
    seconds: float


def _safe_member(member: tarfile.TarInfo) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if name.is_absolute() or any(part in ("..", "") for part in name.parts) or not name.parts:
        raise RunError(f"refusing unsafe path in pulled outputs: {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise RunError(f"refusing link or special file in pulled outputs: {member.name!r}")
    return name


def pull(
    inv: Inventory,
    board: Board,
    conn: Connection,
    run_id: str | None = None,
    *,
    dest_root: Path | None = None,
    include_inputs: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> PullResult:
    """Fetch a run directory (default: the newest run) into ``<dest_root>/<board>/<run-id>/``.

    Extracted into a temporary sibling and renamed: an interrupted pull never leaves a half
    directory under the final name, and a pull never writes outside ``<dest_root>/<board>/``.
    """
    t0 = time.perf_counter()
    if run_id is not None and not RUN_ID_RE.match(run_id):
        raise RunError(f"invalid run id {run_id!r}")
    req = protocol.PullRequest(app=inv.app.name, run_id=run_id, exclude=[] if include_inputs else ["inputs"])
    with session(conn, "pull", req) as c:
        rid = c.read(protocol.PullHead).run_id
        if not RUN_ID_RE.match(rid):
            raise RunError(f"{board.name}: board sent an invalid run id {rid!r}")
        root = (dest_root or inv.root / "outputs").resolve() / board.name
        final = root / rid
        tmp = root / f".{rid}.partial-{os.getpid()}"
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            files, size = _extract(_CountingReader(c.out, on_bytes), tmp)
            c.close()
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunError(f"{board.name}: pull of run {rid} failed: {exc}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return PullResult(board=board.name, run_id=rid, path=final, files=files, bytes=size, seconds=time.perf_counter() - t0)


def _extract(stream, dest: Path) -> tuple[int, int]:
    """Unpack a tar stream into ``dest``, refusing anything that could land outside it; (files, bytes)."""
    files = size = 0
    inside = dest.resolve()
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            rel = _safe_member(member)
            out = dest.joinpath(*rel.parts)
            if not out.resolve().is_relative_to(inside):
                raise RunError(f"refusing path outside the target directory: {member.name!r}")
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as f:
                shutil.copyfileobj(tf.extractfile(member), f, 1 << 20)
            os.chmod(out, 0o644)
            files += 1
            size += member.size
    return files, size


class _CountingReader:
    def __init__(self, f, on_bytes):
        self.f = f
        self.on_bytes = on_bytes

    def read(self, n=-1):
        data = self.f.read(n)
        if data and self.on_bytes:
            self.on_bytes(len(data))
        return data


def status(inv: Inventory, conn: Connection, runs: int = 5) -> protocol.StatusReply:
    """The board's current release, releases, env.sh and .bashrc block count, and the last ``runs`` runs."""
    from .envblock import markers

    return call(conn, "status", protocol.StatusRequest(app=inv.app.name, runs=runs, marker_begin=markers(inv.app.name)[0]))
