"""What runs leave on a board, brought home (host end of ``board/outputs.py``): ``pull`` and ``status``.

``pull`` unpacks a tar stream into ``outputs/<board>/<run-id>/`` with ``link/untar.py``, which trusts
nothing in it: only regular files and directories inside the run's directory, no larger than the board
announced (and the host must have that much free first), small headers, no sparse member. It unpacks into
a temporary sibling and renames, so an interrupted pull never leaves a half directory under the final name.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import fleet
from ..board import protocol
from ..errors import RemoteError, RunError
from ..inventory import Board, Inventory
from ..link.remote import call, session
from ..proc import pid_running

if TYPE_CHECKING:  # the type only: paramiko is imported when a connection is made
    from ..link.ssh import Connection

SLACK = 4096  # disk a file may take beyond its size (its last block), for the free-space check
RESERVE = 1 << 30  # what a pull leaves free on the host's disk at least


@dataclass(frozen=True)
class PullResult:
    board: str
    run_id: str
    path: Path
    files: int
    bytes: int
    seconds: float


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
    from ..link import untar  # a pull's own (status, the other op here, needs neither)
    from .runs import check_run_id

    t0 = time.perf_counter()
    if run_id is not None:
        check_run_id(run_id)
    req = protocol.PullRequest(app=inv.app.name, run_id=run_id, exclude=[] if include_inputs else ["inputs"])
    with session(conn, "pull", req) as c:
        head = c.read(protocol.PullHead)
        rid = head.run_id
        if not protocol.valid_run_id(rid) or (run_id is not None and rid != run_id):
            raise RunError(f"{board.name}: the board answered run {rid!r} to a pull of {run_id or 'the latest run'!r}")
        root = (dest_root or inv.outputs).resolve() / board.name
        final = root / rid
        tmp = root / f".{rid}.partial-{os.getpid()}"
        root.mkdir(parents=True, exist_ok=True)
        clean_partials(root)
        _check_room(board, root, head)
        tmp.mkdir()
        stream = c.bulk(head.bytes + untar.overhead(head.files), on_bytes)
        try:
            files, size = untar.extract(_cancellable(stream.read, board.name), tmp, head.bytes, head.files)
            c.close()
            _carry_over(final, tmp, keep)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except (untar.TarRefused, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            more = "; the board sent more than it announced" if stream.exhausted else ""
            raise RunError(f"{board.name}: pull of run {rid} failed: {exc}{more}") from None
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
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_running(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _check_room(board: Board, root: Path, head: protocol.PullHead) -> None:
    """The run must fit on the host's disk as the board announced it, before a byte of it is written."""
    if head.bytes < 0 or head.files < 0:
        raise RemoteError(f"{board.name}: pull: the board announced {head.files} files, {head.bytes} bytes")
    need = head.bytes + SLACK * head.files
    free = shutil.disk_usage(root).free
    if need + RESERVE > free:
        raise RunError(f"{board.name}: run {head.run_id} is {head.bytes / 2**20:,.1f} MiB in {head.files} files; "
                       f"{root} has {free / 2**20:,.1f} MiB free (a pull leaves 1 GiB): not pulled")


def _carry_over(old: Path, new: Path, names: tuple[str, ...]) -> None:
    """Host-made files of an earlier pull that the new one lacks, copied into it."""
    for name in names:
        src, dst = old / name, new / name
        if src.is_file() and not src.is_symlink() and not dst.exists():
            shutil.copy2(src, dst)


def _cancellable(read, board: str):
    """``read``, stopping when the command is interrupted (Ctrl-C, SIGTERM: ``fleet.CANCEL``)."""

    def reader(n=-1):
        if fleet.CANCEL.is_set():
            raise RunError(f"{board}: pull interrupted")
        return read(n)

    return reader


def status(inv: Inventory, conn: Connection, runs: int = 5) -> protocol.StatusReply:
    """The board's current release, releases, env.sh and .bashrc block count, and the last ``runs`` runs."""
    from ..release.envblock import markers

    return call(conn, "status", protocol.StatusRequest(app=inv.app.name, runs=runs, marker_begin=markers(inv.app.name)[0]))
