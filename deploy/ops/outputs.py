"""What runs leave on a board, brought home (host end of ``board/outputs.py``): ``pull`` and ``status``.

``pull`` extracts a tar stream into ``outputs/<board>/<run-id>/`` and refuses anything
that could land outside it: absolute names, ``..``, links, devices. It unpacks into a
temporary sibling and renames, so an interrupted pull never leaves a half directory
under the final name.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import fleet
from ..board import protocol
from ..errors import RunError
from ..inventory import Board, Inventory
from ..link.remote import call, session
from ..link.ssh import Connection
from .runs import check_run_id


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
    keep: tuple[str, ...] = (),
) -> PullResult:
    """Fetch a run directory (default: the newest run) into ``<dest_root>/<board>/<run-id>/``.

    Extracted into a temporary sibling and renamed: an interrupted pull never leaves a half
    directory under the final name, and a pull never writes outside ``<dest_root>/<board>/``.
    ``keep``: names the host wrote into an earlier pull of this run (verify.json, report.html ...)
    that the board does not have; they are carried over into the new directory.
    """
    t0 = time.perf_counter()
    if run_id is not None:
        check_run_id(run_id)
    req = protocol.PullRequest(app=inv.app.name, run_id=run_id, exclude=[] if include_inputs else ["inputs"])
    with session(conn, "pull", req) as c:
        rid = c.read(protocol.PullHead).run_id
        if not protocol.valid_run_id(rid) or (run_id is not None and rid != run_id):
            raise RunError(f"{board.name}: the board answered run {rid!r} to a pull of {run_id or 'the latest run'!r}")
        root = (dest_root or inv.outputs).resolve() / board.name
        final = root / rid
        tmp = root / f".{rid}.partial-{os.getpid()}"
        root.mkdir(parents=True, exist_ok=True)
        clean_partials(root)
        tmp.mkdir()
        try:
            files, size = _extract(_CountingReader(c.out, on_bytes, board.name), tmp)
            c.close()
            _carry_over(final, tmp, keep)
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


def clean_partials(root: Path) -> list[str]:
    """Remove the half-extracted pulls under ``outputs/<board>/`` whose process is gone (killed: SIGKILL leaves
    them) and this process's own; returns their names."""
    removed = []
    for p in root.glob(".*.partial-*"):
        pid = p.name.rpartition("-")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not _running(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _carry_over(old: Path, new: Path, names: tuple[str, ...]) -> None:
    """Host-made files of an earlier pull that the new one lacks, copied into it."""
    for name in names:
        src, dst = old / name, new / name
        if src.is_file() and not src.is_symlink() and not dst.exists():
            shutil.copy2(src, dst)


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
    """The pull's stream, counted for the progress bar; it stops when the command is interrupted."""

    def __init__(self, f, on_bytes, board: str = ""):
        self.f = f
        self.on_bytes = on_bytes
        self.board = board

    def read(self, n=-1):
        if fleet.CANCEL.is_set():
            raise RunError(f"{self.board}: pull interrupted")
        data = self.f.read(n)
        if data and self.on_bytes:
            self.on_bytes(len(data))
        return data


def status(inv: Inventory, conn: Connection, runs: int = 5) -> protocol.StatusReply:
    """The board's current release, releases, env.sh and .bashrc block count, and the last ``runs`` runs."""
    from ..release.envblock import markers

    return call(conn, "status", protocol.StatusRequest(app=inv.app.name, runs=runs, marker_begin=markers(inv.app.name)[0]))
