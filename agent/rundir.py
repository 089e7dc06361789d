"""The run directory: events.jsonl, results.jsonl, summary.json, status and pid.

Every event goes to stdout and to ``events.jsonl``, one line each, flushed at once (the host
tails the file). Results are appended to ``results.jsonl`` with a flush per record, so a run
killed at any point leaves at most one torn last line; :meth:`RunDir.done_images` drops it and
returns the images already handled, which is what makes a restarted run resumable.

stdout is written as UTF-8 bytes whatever the locale: a non-interactive ssh session on the
board often runs with LANG unset (ASCII), and a file name must never crash the run.
Python 3.7 compatible.
"""

import json
import os
import sys
import threading
import time

from . import protocol
from .files import cut_torn_tail, json_line, records, write_atomic

STATUSES = ("running", "ok", "partial", "failed")
RESERVE = ".reserve"  # the board's watcher (deploy/board/watch.py) frees it too
RESERVE_BYTES = 64 << 10


class RunDir:
    def __init__(self, out_dir, echo=True, stream=None):
        self.out_dir = out_dir
        self.echo = echo
        self._stream = stream
        self._lock = threading.Lock()
        self._events = None
        self._results = None
        self._probs = None
        self.total = 0  # images given to the run (set once they are collected)
        os.makedirs(out_dir, exist_ok=True)

    def path(self, name):
        return os.path.join(self.out_dir, name)

    # --- lifecycle -----------------------------------------------------------------------
    def open(self):
        self._events = open(self.path("events.jsonl"), "ab")
        try:  # spare blocks, freed when the disk fills: the run's last words (summary, end event) still fit
            with open(self.path(RESERVE), "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            self.release_reserve()
        return self

    def release_reserve(self):
        try:
            os.remove(self.path(RESERVE))
        except OSError:
            pass

    def close(self):
        with self._lock:
            for f in (self._events, self._results, self._probs):
                if f is not None:
                    f.close()
            self._events = self._results = self._probs = None
        self.release_reserve()

    def set_status(self, status):
        assert status in STATUSES, status
        write_atomic(self.path("status"), status + "\n")
        if status == "running":
            write_atomic(self.path("pid"), f"{os.getpid()}\n")
        else:
            try:
                os.remove(self.path("pid"))
            except OSError:
                pass

    def write_json(self, name, obj):
        write_atomic(self.path(name), json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")

    # --- events --------------------------------------------------------------------------
    def emit(self, _event, **fields):
        """Write one protocol event (``_event`` is its kind: start, result, error, ...)."""
        event = protocol.make(_event, **fields)
        line = protocol.encode(event).encode("utf-8")
        with self._lock:
            if self._events is not None:
                self._events.write(line)
                self._events.flush()
            if self.echo:
                out = self._stream or getattr(sys.stdout, "buffer", None)
                if out is not None:
                    out.write(line)
                    out.flush()
                else:
                    sys.stdout.write(line.decode("utf-8"))
                    sys.stdout.flush()
        return event

    # --- results -------------------------------------------------------------------------
    def done_images(self):
        """Records already in results.jsonl ({image: record}); a torn last line is cut off."""
        path = self.path("results.jsonl")
        done = {}
        if not os.path.exists(path):
            return done
        for rec in records(cut_torn_tail(path)):  # a killed run's torn last line is dropped before appending
            if isinstance(rec.get("image"), str):
                done[rec["image"]] = rec
        return done

    def add_result(self, record):
        line = json_line(record)
        with self._lock:
            if self._results is None:
                self._results = open(self.path("results.jsonl"), "ab")
            self._results.write(line)
            self._results.flush()

    def add_probs(self, image, probs):
        """One line of ``probs.jsonl``: the image's whole probability vector, 7 significant digits
        (float32 precision: enough to see fp16 rounding, ~9 bytes a class)."""
        values = ",".join(format(v, ".7g") for v in probs.tolist())
        line = (
            json.dumps({"image": image}, ensure_ascii=False)[:-1] + ',"probs":[' + values + "]}\n"
        ).encode("utf-8")
        with self._lock:
            if self._probs is None:
                self._probs = open(self.path("probs.jsonl"), "ab")
            self._probs.write(line)
            self._probs.flush()


class Progress:
    """Emits a progress event at most every ``interval`` seconds (about 10 per second)."""

    def __init__(self, rundir, total, interval=0.1):
        self.rundir = rundir
        self.total = total
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0
        self.done = 0

    def step(self, n=1, force=False):
        self.done += n
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            elapsed = max(now - self.start, 1e-9)
            self.rundir.emit("progress", done=self.done, total=self.total, ips=round(self.done / elapsed, 2))
