"""The fan-out engine: one piece of work per board, on a bounded pool, in rollout stages.

Commands say only what happens on one board (``work(board) -> row``); this module decides
when each board starts: stages in order (``--canary N``, then ``--batch N|P%`` or a
``--serial 1,5,25%`` ramp, else one stage of everything), up to ``forks`` boards at a time
within a stage, and no new board once the failures exceed ``--max-fail N|P%`` (exceeded, not
equalled, as Ansible's ``max_fail_percentage``). A board never started gets a ``skipped``
row. Rendering stays with the caller: ``on_skip(board)`` is the only callback.

With stages and no ``--max-fail``, the threshold is 0: a failed stage (the canary above all)
stops the rollout, which is what a canary is for. Without stages there is no threshold:
every board is tried, as ``deploy push all`` always did.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from .errors import UsageError

DEFAULT_FORKS = 8

#: set when the command is interrupted (Ctrl-C; the command face turns SIGTERM into one): work that streams
#: (a pull, an upload) checks it, stops and removes what it half wrote, instead of running on in its thread
CANCEL = threading.Event()


@dataclass(frozen=True)
class Rollout:
    forks: int = DEFAULT_FORKS
    canary: int = 0
    batch: str | None = None  # "N" or "P%"
    serial: str | None = None  # "1,5,25%": successive batch sizes, the last one repeated
    max_fail: str | None = None  # "N" or "P%"
    overlap: bool = True  # a stage's transfers run while the stage before it checks (its switches wait for it)

    @property
    def staged(self) -> bool:
        return bool(self.canary or self.batch or self.serial)


def amount(text: str, total: int, what: str, *, zero_ok: bool = False) -> int:
    """``"3"`` or ``"25%"`` of ``total`` boards (a percentage rounds up, at least 1); UsageError otherwise."""
    text = str(text).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.ceil(total * pct / 100))
        n = int(text)
    except ValueError:
        raise UsageError(f"{what}: expected a number of boards or a percentage (1-100%), not {text!r}") from None
    if n < 0 or (n == 0 and not zero_ok):
        raise UsageError(f"{what}: must be {'0 or more' if zero_ok else 'at least 1'}, not {text!r}")
    return n


def stages(total: int, r: Rollout) -> list[int]:
    """The sizes of the successive stages for ``total`` boards."""
    out: list[int] = []
    left = total
    if r.canary:
        out.append(min(r.canary, left))
        left -= out[-1]
    ramp = [amount(s, total, "--serial") for s in r.serial.split(",") if s.strip()] if r.serial else []
    if r.batch:
        ramp = [amount(r.batch, total, "--batch")]
    while left > 0:
        size = ramp.pop(0) if len(ramp) > 1 else (ramp[0] if ramp else left)
        out.append(min(size, left))
        left -= out[-1]
    return out


def allowed_failures(total: int, r: Rollout) -> float | None:
    """How many failed boards are tolerated (the rollout stops once exceeded); None: no limit."""
    if r.max_fail is None:
        return 0 if r.staged else None
    text = str(r.max_fail).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            pct = -1
        if not 0 <= pct <= 100:
            raise UsageError(f"--max-fail: a percentage must be 0-100%, not {text!r}")
        return total * pct / 100
    return amount(text, total, "--max-fail", zero_ok=True)


def validate(total: int, r: Rollout) -> None:
    """Every flag checked before any board is touched."""
    if r.forks < 1:
        raise UsageError(f"--forks: must be at least 1, not {r.forks}")
    if r.canary < 0:
        raise UsageError(f"--canary: must be 0 or more, not {r.canary}")
    if r.batch and r.serial:
        raise UsageError("--batch and --serial are two ways of saying the same thing: give one")
    stages(total, r)
    allowed_failures(total, r)


class _Stage:
    """One rollout stage's boards and what later stages wait for: ``released`` once every board of it is past
    its transfer (``Turn.release``) or finished, ``done`` once every one finished; ``failed`` counts its failures."""

    def __init__(self, items: list, earlier: Sequence[_Stage] = ()):
        self.items = items
        self.earlier = tuple(earlier)
        self.failed = 0
        self._lock = threading.Lock()
        self._unreleased = self._unfinished = len(items)
        self.released, self.done = threading.Event(), threading.Event()
        self.drop(0)

    def drop(self, n: int = 1, released: bool = True, finished: bool = True) -> None:
        """``n`` boards of the stage are released and/or finished (never started ones: both)."""
        with self._lock:
            self._unreleased -= n if released else 0
            self._unfinished -= n if finished else 0
            if self._unreleased <= 0:
                self.released.set()
            if self._unfinished <= 0:
                self.released.set()
                self.done.set()


class Turn:
    """A board's place in a staged rollout, as its work sees it (:func:`turn`). A push asks :meth:`ready`
    before it switches: True (every earlier stage finished within the failure threshold), False (the rollout
    stopped: do not switch) or None (an earlier stage's boards are still checking: stage the release, then
    :meth:`wait` for the verdict). :meth:`release` says the board is past its transfer (its health check
    runs next): the next stage starts once every board of this one said so or finished."""

    def __init__(self, stage: _Stage | None = None, limit: float | None = None):
        self.stage = stage
        self.limit = limit
        self.released = False

    def _verdict(self) -> bool:
        earlier = self.stage.earlier if self.stage else ()
        return not CANCEL.is_set() and (self.limit is None or sum(s.failed for s in earlier) <= self.limit)

    def ready(self) -> bool | None:
        if self.stage and not all(s.done.is_set() for s in self.stage.earlier):
            return None
        return self._verdict()

    def wait(self) -> bool:
        for s in self.stage.earlier if self.stage else ():
            while not s.done.wait(0.2):
                if CANCEL.is_set():
                    return False
        return self._verdict()

    def release(self) -> None:
        if self.stage is not None and not self.released:
            self.released = True
            self.stage.drop(finished=False)


_local = threading.local()


def turn() -> Turn:
    """The calling board's :class:`Turn` inside ``run``'s work; outside a staged rollout one that never waits."""
    return getattr(_local, "turn", None) or Turn()


def run(boards: Sequence, work: Callable[[object], dict], rollout: Rollout,
        on_skip: Callable[[object], dict] | None = None) -> list[dict]:
    """``work(board)`` for every board (rows in the boards' order); never raises for one board's failure.

    ``work`` returns a row with "ok"; an exception escaping it is a bug and is re-raised after
    the pool drains. Boards not started because the threshold was exceeded get ``on_skip(board)``
    (default: ``{"board", "ok": False, "skipped": True, "exit_code": 1}``). With ``rollout.overlap`` a stage
    starts once the boards of the one before are past their transfer (:meth:`Turn.release`), and its boards
    switch only when :meth:`Turn.ready`/:meth:`Turn.wait` say so; without, it starts once they finished.
    """
    validate(len(boards), rollout)
    limit = allowed_failures(len(boards), rollout)
    rows: dict[int, dict] = {}
    failed = [0]
    lock = threading.Lock()

    def over() -> bool:
        with lock:
            return limit is not None and failed[0] > limit

    def one(i: int, board, stage: _Stage) -> None:
        _local.turn = mine = Turn(stage, limit)
        try:
            row = work(board)
            with lock:
                rows[i] = row
                if not row.get("ok") and not row.get("skipped"):
                    failed[0] += 1
                    stage.failed += 1
        finally:
            _local.turn = None
            mine.release()  # once per board, whether or not its work said so itself
            stage.drop(released=False)

    start, done_stages, futures = 0, [], []
    with ThreadPoolExecutor(max_workers=rollout.forks, thread_name_prefix="board") as pool:
        try:
            for size in stages(len(boards), rollout):
                if over():
                    break
                stage = _Stage(list(enumerate(boards))[start:start + size], done_stages if rollout.overlap else ())
                futures += _stage(pool, stage, one, over, rollout)
                done_stages = [*done_stages, stage]
                start += size
            for fut in futures:
                fut.result()  # a bug in work() surfaces here, not as a silent missing row
        except BaseException:  # interrupted: the boards' threads stop before the pool is waited for
            CANCEL.set()
            raise
    skip = on_skip or _skipped
    return [rows[i] if i in rows else skip(b) for i, b in enumerate(boards)]


def _stage(pool: ThreadPoolExecutor, stage: _Stage, one, over: Callable[[], bool], rollout: Rollout) -> list[Future]:
    """Start one stage, at most ``forks`` at a time, starting no board once ``over()``; return once the stage is
    released (overlap) or done, or, once over, its running boards finished."""
    running: set[Future] = set()
    started: list[Future] = []
    queue = list(stage.items)
    while queue:
        while queue and len(running) < rollout.forks and not over():
            i, board = queue.pop(0)
            fut = pool.submit(one, i, board, stage)
            running.add(fut)
            started.append(fut)
        if over() or not queue or not running:
            break
        done, running = wait(running, return_when=FIRST_COMPLETED)
        for fut in done:
            fut.result()
    stage.drop(len(queue))  # never started: neither checking nor running
    ends = stage.released if rollout.overlap and not over() else stage.done
    while not ends.wait(0.2):
        if over() and ends is stage.released:  # a board failed meanwhile: no overlap with a stage that stops
            ends = stage.done
    return started


def _skipped(board) -> dict:
    return {"board": board.name, "ok": False, "skipped": True, "exit_code": 1,
            "error": "not started: the failure threshold was exceeded"}


def recap(rows: Sequence[dict], cmd: str) -> dict:
    """The counts under a fan-out's recap table and in its ``--json``.

    targeted = ok + failed + skipped. For ``push``, ``applied`` boards switched to a new release,
    ``healthy`` ones passed the health check on this push (or an earlier one, for an unchanged
    board), ``unchanged`` ones were already current.
    """
    ok = sum(1 for r in rows if r.get("ok"))
    skipped = sum(1 for r in rows if r.get("skipped"))
    counts = {"targeted": len(rows), "ok": ok, "failed": len(rows) - ok - skipped, "skipped": skipped}
    if cmd == "push":
        applied = sum(1 for r in rows if r.get("ok") and r.get("switched"))
        healthy = sum(1 for r in rows if r.get("ok") and (r.get("health") or {}).get("status") == "passed")
        counts.update(applied=applied, healthy=healthy, unchanged=ok - applied)
    return counts

