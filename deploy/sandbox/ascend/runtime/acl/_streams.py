"""Streams: an in-order task queue per stream, carried out by that stream's device thread.

``mdl.execute_async`` and ``rt.launch_callback`` only enqueue and return. The device thread runs
each model execution in order; a callback task is handed to the thread subscribed to the stream
(``rt.subscribe_report``) and runs only inside that thread's ``rt.process_report``; with
ACL_CALLBACK_BLOCK the stream waits for it before the next task.

A task is ``task(ready_at) -> (code, ended_at)``: ``ready_at`` is when the device could start it
(it was queued and the task before it had ended), so in timing mode the device's timeline does
not depend on when this Python thread next gets the GIL. Python 3.7.
"""

import collections
import os
import sys
import threading
import time
import traceback

from . import _core as C
from ._core import STATE

REPORTS = threading.Condition()  # guards every stream's ``callbacks`` and the subscriptions


class Stream:
    def __init__(self, context):
        self.context = context
        self.cv = threading.Condition()
        self.tasks = collections.deque()
        self.pending = 0  # queued + running
        self.running = False  # a task is being run (by the device thread or a synchronizing thread)
        self.error = 0  # first device-side failure, reported by synchronize_stream
        self.subscriber = None  # thread id of the report thread
        self.callbacks = collections.deque()  # _Report entries waiting for process_report
        self.ended_at = 0.0  # when the last task ended, on the device's timeline
        self.closed = False
        self.thread = threading.Thread(target=self._device_loop, name="acl-sim-stream", daemon=True)
        self.thread.start()

    def put(self, task):
        """Queue ``task`` (``task(ready_at) -> (code, ended_at)``, run on the device thread)."""
        with self.cv:
            self.tasks.append((task, time.monotonic()))
            self.pending += 1
            self.cv.notify_all()

    def _device_loop(self):
        while True:
            with self.cv:
                while (not self.tasks or self.running) and not self.closed:
                    self.cv.wait()
                if not self.tasks:
                    return
                task, queued_at = self.tasks.popleft()
                self.running = True
            self._run(task, queued_at)

    def _run(self, task, queued_at):
        try:
            code, ended_at = task(max(queued_at, self.ended_at))
        except Exception:  # a simulator bug: report it as a device failure, keep the stream alive
            traceback.print_exc(file=sys.stderr)
            code, ended_at = C.ACL_ERROR_RT_INTERNAL_ERROR, time.monotonic()
        with self.cv:
            self.ended_at = ended_at
            if code and not self.error:
                self.error = code
            self.pending -= 1
            self.running = False
            self.cv.notify_all()

    def synchronize(self):
        """Wait until every queued task has run; the first device failure since the last sync, or 0.
        A real stream waits forever for a callback nobody processes; this one gives up after
        ACL_SIM_SYNC_TIMEOUT_S (default 60) seconds with ACL_ERROR_RT_STREAM_SYNC_TIMEOUT.

        Tasks marked ``on_caller`` (DVPP work) that are next in line are run by the waiting thread
        itself, in order, instead of waking the device thread: the same result, and their memory
        comes from this thread's allocator arena (a fresh thread's arena gives its pages back and
        faults them in again: +10-15 % on a decode + resize)."""
        deadline = time.monotonic() + float(os.environ.get("ACL_SIM_SYNC_TIMEOUT_S", "60"))
        while True:
            with self.cv:
                if not self.pending:
                    code, self.error = self.error, 0
                    return code
                mine = None
                if not self.running and self.tasks and getattr(self.tasks[0][0], "on_caller", False):
                    mine = self.tasks.popleft()
                    self.running = True
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return C.fail(C.ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, "synchronize_stream timed out")
                    self.cv.wait(min(left, 0.5))
            if mine is not None:
                self._run(*mine)

    def close(self):
        with self.cv:
            self.closed = True
            self.cv.notify_all()


class _Report:
    """One callback on its way to process_report."""

    __slots__ = ("fn", "data", "done", "ended_at")

    def __init__(self, fn, data):
        self.fn, self.data = fn, data
        self.done = threading.Event()
        self.ended_at = None  # when process_report finished running it


def callback_task(stream, fn, data, block):
    """The device-side half of launch_callback: hand the call to the report thread, and with
    ACL_CALLBACK_BLOCK wait until process_report has run it."""

    def task(ready_at):
        report = _Report(fn, data)
        with REPORTS:
            stream.callbacks.append(report)
            REPORTS.notify_all()
        if not block:
            return 0, ready_at
        report.done.wait()
        return 0, report.ended_at

    return task


def _take(tid):
    for kind, obj in list(STATE.handles.values()):
        if kind == "stream" and obj.subscriber == tid and obj.callbacks:
            return obj.callbacks.popleft()
    return None


def _subscribed(tid):
    return any(kind == "stream" and obj.subscriber == tid for kind, obj in list(STATE.handles.values()))


def process_report(timeout_ms):
    """Run one waiting callback of a stream subscribed to the calling thread (0), or wait up to
    ``timeout_ms`` (-1 = forever) for one: ACL_ERROR_WAIT_CALLBACK_TIMEOUT when none came, or
    ACL_ERROR_THREAD_NOT_SUBSCRIBE when no stream is subscribed to this thread."""
    tid = threading.get_ident()
    deadline = None if timeout_ms is None or timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
    with REPORTS:
        item = _take(tid)
        while item is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            REPORTS.wait(left if left is not None else 1.0)
            item = _take(tid)
    if item is None:
        if not _subscribed(tid):
            return C.fail(
                C.ACL_ERROR_THREAD_NOT_SUBSCRIBE, "process_report: no stream is subscribed to this thread"
            )
        return C.fail(C.ACL_ERROR_WAIT_CALLBACK_TIMEOUT, "process_report: no callback within the timeout")
    try:
        item.fn(item.data)
    except Exception:  # pyACL prints the exception of a Python callback and carries on
        traceback.print_exc(file=sys.stderr)
    finally:
        item.ended_at = time.monotonic()
        item.done.set()
    return C.ACL_SUCCESS
