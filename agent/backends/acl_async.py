"""The acl backend's asynchronous mode (``async_mode=True``), like seed 000's async sample.

* Each batch is copied into a free pool slot and started with ``mdl.execute_async`` on the stream;
  every ``callback_interval`` executions one ``rt.launch_callback`` (ACL_CALLBACK_BLOCK) is queued,
  and the callback, run by a report thread (``util.start_thread`` + ``rt.subscribe_report`` + a
  ``rt.process_report`` loop, started at the first submit), reads those outputs, hands them to their
  ``done`` functions and frees the slots.
* When every slot is in flight, submit waits for a launched callback to free some, or, when none is
  on its way, launches the pending executions' callback at once, so any pool size works (a callback
  holds the stream while it runs: each should carry ``callback_interval`` executions, not fewer).
* If ``launch_callback`` fails, the stream is synchronised and those batches are delivered from the
  calling thread (nothing is dropped); the failure is noted in ``launch_failures``.
* ``drain`` waits with a deadline and fails at once if the report thread died; ``stop`` (the backend's
  close) synchronises the stream, unsubscribes and stops the report thread.

The caller (the backend) binds its context to the calling thread before submit and drain. Stdlib
only. Python 3.7 compatible.
"""

import queue
import threading
import time

from .acl_codes import (
    ACL_CALLBACK_BLOCK,
    ACL_ERROR_THREAD_NOT_SUBSCRIBE,
    ACL_ERROR_WAIT_CALLBACK_TIMEOUT,
    ACL_SUCCESS,
    ERROR_NAMES,
    check,
    collect,
)
from .base import BackendError


class AsyncRunner:
    """Executions of one model on one stream, delivered by callbacks on a subscribed report thread."""

    def __init__(self, acl, pool, model_id, stream, context, callback_interval=1, report_timeout_ms=50,
                 drain_timeout_s=120.0, launch_failures=None):
        self.acl = acl
        self.pool = pool
        self.model_id = model_id
        self.stream = stream
        self.context = context
        self.callback_interval = callback_interval
        self.report_timeout_ms = report_timeout_ms
        self.drain_timeout_s = drain_timeout_s
        self.launch_failures = [] if launch_failures is None else launch_failures
        self._pending = []  # (slot index, tag, done) submitted, callback not yet launched
        self._inflight = 0
        self._cond = threading.Condition()
        self._tid = None
        self._exit = False
        self._report_error = None
        self._callback_error = None

    @property
    def reporting(self):
        """Whether the report thread was started (and not yet stopped)."""
        return self._tid is not None

    def submit(self, batch, tag, done):
        """Copy ``batch`` into a free slot and start it; ``done(tag, outs, error)`` runs exactly once."""
        if self._tid is None:
            self._start_reporting()
        index = self._take_slot()
        try:
            self.pool.copy_in(index, batch)
            slot = self.pool.slots[index]
            check(
                "acl.mdl.execute_async",
                self.acl.mdl.execute_async(self.model_id, slot.in_ds, slot.out_ds, self.stream),
            )
        except Exception as exc:
            self.pool.free.put(index)
            done(tag, None, exc)
            return None
        with self._cond:
            self._inflight += 1
        self._pending.append((index, tag, done))
        if len(self._pending) >= self.callback_interval:
            self._launch()
        return None

    def _take_slot(self):
        """A free pool slot. When every slot is in flight and no launched callback is on its way
        to free some, first launch the callback of the executions still waiting for one (else
        nothing would ever free a slot). With one on its way, wait for it instead: a callback
        holds the device's stream while it runs (ACL_CALLBACK_BLOCK), so callbacks of fewer than
        callback_interval executions would leave the device idle more often."""
        free = self.pool.free
        try:
            return free.get_nowait()
        except queue.Empty:
            pass
        with self._cond:
            launched = self._inflight - len(self._pending)  # delivered by callbacks already queued
        if launched <= 0:
            self._launch()
        deadline = time.monotonic() + self.drain_timeout_s
        while True:
            self._raise_report_error()
            try:
                return free.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"no device buffer came free within {self.drain_timeout_s:g} s"
                    ) from None

    def _launch(self):
        entries, self._pending = self._pending, []
        if not entries:
            return
        ret = self.acl.rt.launch_callback(self._callback, entries, ACL_CALLBACK_BLOCK, self.stream)
        if ret == ACL_SUCCESS:
            return
        # No callback will come for these executions: wait for the device, deliver them here.
        sync = self.acl.rt.synchronize_stream(self.stream)
        failure = None
        if sync != ACL_SUCCESS:
            failure = BackendError(f"acl.rt.synchronize_stream failed: ret={sync}")
        self._callback(entries, failure)
        name = ERROR_NAMES.get(ret, "")
        self.launch_failures.append(
            f"acl.rt.launch_callback failed: ret={ret} {name}; delivered {len(entries)} inline"
        )

    def _callback(self, entries, failure=None):
        """Runs on the report thread (or inline after a failed launch): read each finished slot,
        deliver it, free the slot."""
        for index, tag, done in entries:
            outs, err = None, failure
            if err is None:
                try:
                    outs = self.pool.copy_out(index)
                except Exception as exc:
                    err = exc
            try:
                done(tag, outs, err)
            except Exception as exc:  # never let a consumer bug kill the report thread
                self._callback_error = exc
            finally:
                self.pool.free.put(index)
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()

    # --- the report thread ---------------------------------------------------------------------
    def _report_loop(self, args):
        context, timeout_ms = args
        try:
            check("acl.rt.set_context (report thread)", self.acl.rt.set_context(context))
            while not self._exit:
                ret = self.acl.rt.process_report(timeout_ms)
                if ret not in (ACL_SUCCESS, ACL_ERROR_WAIT_CALLBACK_TIMEOUT, ACL_ERROR_THREAD_NOT_SUBSCRIBE):
                    check("acl.rt.process_report", ret)
        except Exception as exc:
            self._report_error = exc
            with self._cond:
                self._cond.notify_all()

    def _raise_report_error(self):
        if self._report_error is not None:
            raise BackendError(f"the report thread stopped: {self._report_error}")

    def _start_reporting(self):
        acl = self.acl
        self._exit = False
        self._report_error = None
        self._tid, ret = acl.util.start_thread(self._report_loop, [self.context, self.report_timeout_ms])
        check("acl.util.start_thread", ret)
        check("acl.rt.subscribe_report", acl.rt.subscribe_report(self._tid, self.stream))

    def drain(self):
        """Wait until every submitted batch was delivered; fails after ``drain_timeout_s`` or at
        once when the report thread died (its batches can then never be delivered)."""
        self._launch()
        deadline = time.monotonic() + self.drain_timeout_s
        with self._cond:
            while self._inflight:
                self._raise_report_error()
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"{self._inflight} batch(es) still in flight after {self.drain_timeout_s:g} s"
                    )
                self._cond.wait(0.2)
        check("acl.rt.synchronize_stream", self.acl.rt.synchronize_stream(self.stream))
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise BackendError(f"result callback failed: {err}")
        return None

    def stop(self, errors):
        """Teardown, before the model is unloaded: the stream synchronised, the report thread
        unsubscribed and stopped (failures go to ``errors``)."""
        acl = self.acl
        if self._tid is None:
            return
        if self._report_error is None:  # a dead report thread would leave synchronize waiting forever
            collect(errors, "acl.rt.synchronize_stream", lambda: acl.rt.synchronize_stream(self.stream))
        collect(
            errors, "acl.rt.unsubscribe_report", lambda: acl.rt.unsubscribe_report(self._tid, self.stream)
        )
        self._exit = True
        collect(errors, "acl.util.stop_thread", lambda: acl.util.stop_thread(self._tid))
        self._tid = None
