"""``python -m agent service --config <service>/config.json --release <release dir>``: classify what arrives.

The same stages as a batch run (``runner.make_backend``, ``runner.stages``, ``pipeline.Pipeline``), fed
chunk by chunk from the inbox (``inbox.py``) instead of a fixed list, with results going to the
journal (``journal.py``) instead of a run directory. The backend and model are loaded once.

One loop iteration: check the release pin, the disk budget and the stop flag; claim up to ``chunk``
complete files; run them through the pipeline; fsync the journal; dispose of every image that got a
record. An image claimed but not recorded (a crash, a stop, a full disk) stays in ``.work`` and is
classified first when the service goes on, so every image gets exactly one record.

The service never switches releases by itself mid-image: between chunks it compares its release
with ``<service>/release`` (written by ``deploy service start`` and by ``deploy push`` after the
health check) and exits with ``EXIT_SWITCH``; the supervisor starts it again in the pinned release.

Files under ``<service>/``: ``config.json`` (written by the host's op), ``release``, ``journal/``,
``ack``, ``status.json`` (figures, rewritten about once a second), ``agent.log`` (+ ``.1``,
rotated at ``log_max``), ``agent.pid``.

Exit codes: 0 stopped (SIGTERM/SIGINT), 1 cannot run (bad config, model or backend), 3 the pinned
release changed (restart at once). Python 3.7 compatible.
"""

import json
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque

from . import job as jobmod
from .files import records, write_atomic
from .images import safe_id
from .inbox import Inbox
from .journal import Journal, read_ack, segments
from .pipeline import Item, Pipeline, Sink

EXIT_STOPPED, EXIT_FAILED, EXIT_SWITCH = 0, 1, 3
MIN_FREE = 16 << 20  # below this much free space on the service's filesystem nothing new is taken
STATES = ("starting", "running", "idle", "disk-full", "stopping", "failed")


class ServiceError(Exception):
    pass


def load_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise ServiceError(f"cannot read service config {path}: {exc}") from None
    cfg.setdefault("service_dir", os.path.dirname(os.path.abspath(path)))
    for key in ("inbox",):
        if not cfg.get(key):
            raise ServiceError(f"service config lacks {key!r}")
    cfg["inbox"] = os.path.expanduser(cfg["inbox"])
    cfg.setdefault("policy", "move")
    cfg.setdefault("settle", 2.0)
    cfg.setdefault("max_disk", 1 << 30)
    cfg.setdefault("rotate", 16 << 20)
    cfg.setdefault("log_max", 4 << 20)
    cfg.setdefault("chunk", 32)
    return cfg


def job_for(release, service_dir):
    """The job the release's app.json describes (as a batch run's), for the service's stages."""
    try:
        with open(os.path.join(release, "app.json"), encoding="utf-8") as f:
            app = json.load(f)
    except (OSError, ValueError) as exc:
        raise ServiceError(f"cannot read {release}/app.json: {exc}") from None
    data = {
        "run_id": "service", "mode": "run", "release": release, "out_dir": service_dir, "model": app["model"],
        "backend": app.get("backend", "onnx"), "preprocess": app.get("preprocess") or {"preset": "imagenet"},
        "labels": app.get("labels"), "batch": app.get("batch", 1), "topk": app.get("topk", 5), "labelled": False,
    }
    if app.get("backend_options"):
        data["backend_options"] = app["backend_options"]
    return jobmod.from_dict(data)


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


class Log:
    """``agent.log``, rotated at ``limit`` bytes to ``agent.log.1``. It is also this process's fd 1 and 2
    (so a traceback lands there too); on rotation the new file is dup2'd onto both."""

    def __init__(self, path, limit):
        self.path = path
        self.limit = int(limit)
        self._lock = threading.Lock()
        self._reopen()

    def _reopen(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def __call__(self, message):
        line = "{} {}\n".format(time.strftime("%Y-%m-%d %H:%M:%S"), message).encode("utf-8", "backslashreplace")
        with self._lock:
            try:
                if os.fstat(2).st_size + len(line) > self.limit:
                    os.replace(self.path, self.path + ".1")
                    self._reopen()
                os.write(2, line)
            except OSError:
                pass  # a full disk must not stop the service over a log line

    def bytes_on_disk(self):
        return sum(os.path.getsize(p) for p in (self.path, self.path + ".1") if os.path.exists(p))


class JournalSink(Sink):
    """The pipeline's sink for the service: one journal record per image, nothing else."""

    def __init__(self, service):
        super().__init__(None)
        self.service = service

    def _record(self, item, fields):
        svc = self.service
        c = svc.inflight[item.id]
        rec = {"t": round(time.time(), 4), "image": safe_id(c.name), "claim": c.claim}
        rec.update(fields)
        rec["release"] = svc.release_id
        svc.journal.append(rec)
        svc.recorded(item.id)

    def result(self, item, topk, ms, preview=None, probs=None):
        self._record(item, {"ok": True, "topk": topk, "ms": ms})
        with self._lock:
            self.ok += 1
        with self.service._lock:
            self.service.ok += 1

    def error(self, item, kind, message):
        name = self.service.name_of(item)
        self._record(item, {"ok": False, "kind": kind, "message": message})
        with self._lock:
            self.failed += 1
        with self.service._lock:
            self.service.failed += 1
            self.service.last_error = f"{safe_id(name)}: {kind}: {message}"


class Service:
    def __init__(self, cfg, release, log=None):
        self.cfg = cfg
        self.release = os.path.realpath(release)
        self.release_id = os.path.basename(self.release)
        self.dir = cfg["service_dir"]
        self.log = log or (lambda message: None)
        self.stop = threading.Event()
        self.journal = Journal(self.dir, cfg["rotate"])
        self.inbox = Inbox(cfg["inbox"], cfg["policy"], cfg["settle"])
        self.rate = deque(maxlen=4096)
        self.state = "starting"
        self.reason = ""
        self.last_error = ""
        self.ok = self.failed = 0
        self.retry = []  # claimed earlier without a record: first in line
        self.inflight = {}  # item id -> Claimed, handed to the pipeline and not yet recorded
        self.to_dispose = queue.Queue()
        self._disposing = threading.Event()
        self._lock = threading.Lock()
        self._end = None
        self.done_bytes = 0
        self.started = time.time()
        self._status_at = 0.0
        prev = read_json(os.path.join(self.dir, "status.json"))  # shown until the journal is open (a failed start)
        self.totals = {"ok": int(prev.get("ok") or 0), "failed": int(prev.get("failed") or 0)}
        self.journal.seq = int(prev.get("seq") or 0)

    def name_of(self, item):
        c = self.inflight.get(item.id)
        return c.name if c is not None else item.id

    # --- figures ---------------------------------------------------------------------------
    def disk_used(self):
        work = sum(c.size for c in self.retry)
        logs = self.log.bytes_on_disk() if hasattr(self.log, "bytes_on_disk") else 0
        return self.journal.bytes_on_disk() + logs + self.done_bytes + work

    def ips(self):
        now = time.monotonic()
        while self.rate and now - self.rate[0] > 10.0:
            self.rate.popleft()
        if len(self.rate) < 2:
            return 0.0
        return round(len(self.rate) / max(now - self.rate[0], 1.0), 2)

    def write_status(self, force=False):
        now = time.time()
        if not force and now - self._status_at < 1.0:
            return
        self._status_at = now
        status = {
            "v": 1, "pid": os.getpid(), "state": self.state, "reason": self.reason, "release": self.release_id,
            "since": round(self.started, 3), "updated": round(now, 3), "seq": self.journal.seq,
            "acked": read_ack(self.dir), "ok": self.totals["ok"] + self.ok, "failed": self.totals["failed"] + self.failed,
            "waiting": self.inbox.waiting + len(self.retry), "ips": self.ips(), "last_error": self.last_error,
            "disk_used": self.disk_used(), "max_disk": int(self.cfg["max_disk"]), "inbox": self.inbox.path,
            "policy": self.inbox.policy, "watch": "inotify" if self.inbox.watching else "poll",
        }
        try:
            write_atomic(os.path.join(self.dir, "status.json"), json.dumps(status, indent=1) + "\n")
        except OSError:
            pass

    def set_state(self, state, reason=""):
        """Change state; between running and idle (every image at a low rate) only the next periodic
        status write tells, and the log is not told at all."""
        if (state, reason) != (self.state, self.reason):
            busy = {state, self.state} <= {"running", "idle"}
            self.state, self.reason = state, reason
            if not busy:
                self.log("state {}{}".format(state, ": " + reason if reason else ""))
            self.write_status(force=not busy)

    def _previous_totals(self):
        """ok/failed over the service's life: the last status.json plus records written after it."""
        prev = read_json(os.path.join(self.dir, "status.json"))
        totals = {"ok": int(prev.get("ok") or 0), "failed": int(prev.get("failed") or 0)}
        after = int(prev.get("seq") or 0)
        for _first, path in segments(self.journal.dir):
            with open(path, "rb") as f:
                data = f.read()
            for rec in records(data[: data.rfind(b"\n") + 1]):  # whole lines only
                if int(rec.get("seq") or 0) > after:
                    totals["ok" if rec.get("ok") else "failed"] += 1
        return totals

    # --- the loop --------------------------------------------------------------------------
    def pinned(self):
        try:
            with open(os.path.join(self.dir, "release")) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def budget_state(self):
        """None, or why nothing new may be taken (the disk budget, or the filesystem itself)."""
        used = self.disk_used()
        if used >= int(self.cfg["max_disk"]):
            return "service.max_disk reached ({} of {} bytes): collect to free journal space".format(
                used, int(self.cfg["max_disk"]))
        try:
            st = os.statvfs(self.dir)
            if st.f_bavail * st.f_frsize < MIN_FREE:
                return f"the filesystem is full (less than {MIN_FREE >> 20} MiB free)"
        except OSError:
            pass
        return None

    def run(self, backend, stages, batch, workers):
        """Until stopped (EXIT_STOPPED) or the pinned release changes (EXIT_SWITCH).

        One pipeline pass lasts as long as images keep coming: its items come from :meth:`feed`, which
        claims each image when the pipeline asks for the next one. With several backend streams (onnx on
        the CPU) the feed waits for arrivals inside the pass, so an image that arrives while others are
        classified goes to the next free stream at once; with one stream (acl: batches, a producer with
        lookahead) a pass ends when the inbox is empty, so a partial batch never waits for more arrivals.
        Records go to the journal from the pipeline's threads; the disposer thread fsyncs the journal and
        only then disposes of the recorded images, a few at a time.
        """
        _cfg, pre, post, _truth = stages
        self.journal.open()
        self.inbox.open(self.journal.max_claim)
        self.totals = self._previous_totals()
        self.recover()
        self.done_bytes = self.inbox.done_bytes()
        self.set_state("running")
        disposer = threading.Thread(target=self._dispose_loop, name="service-disposer")
        disposer.daemon = True
        disposer.start()
        code = EXIT_STOPPED
        try:
            while not self.stop.is_set():
                self._end = None
                # the pass's own stop: a failing worker stops its pass (its images wait in .work), not the service
                pipe = Pipeline(backend, pre, post, JournalSink(self), batch=batch, workers=workers,
                                stop=threading.Event())
                block = pipe.streams > 1
                try:
                    pipe.run(self.feed(block))
                except OSError as exc:  # the journal could not be written (disk full): the images wait in .work
                    self.last_error = f"journal: {exc}"
                    self.log(self.last_error)
                    self.set_state("disk-full", f"cannot write the journal: {exc.strerror or exc}")
                    self.stop.wait(1.0)
                with self._lock:  # claimed but not recorded (stopped or failed mid-pass): first in line
                    self.retry = sorted(self.inflight.values(), key=lambda c: c.claim) + self.retry
                    self.inflight = {}
                if self._end == "switch":
                    code = EXIT_SWITCH
                    break
                if self._end == "full":
                    self.stop.wait(1.0)
                elif self._end == "empty":
                    self._idle()
            return code
        finally:
            self._disposing.set()
            disposer.join()
            self.set_state("stopping")
            self.journal.close()
            self.inbox.close()

    def _idle(self):
        if self.state != "idle":
            self.set_state("idle")
        self.write_status()
        self.inbox.wait(0.25)

    def feed(self, block):
        """Items for the pipeline: images claimed before first, then what arrives. Ends on a stop, a new
        pinned release, a full disk, and (``block`` false) an empty inbox; ``self._end`` says which."""
        pending = []
        checked = 0.0
        while not self.stop.is_set():
            if self.retry:
                with self._lock:
                    c = self.retry.pop(0) if self.retry else None
                if c is not None:
                    yield self._item(c)
                    continue
            now = time.monotonic()
            if now - checked >= 0.2:  # the pin and the budget: a few times a second, not per image
                checked = now
                pin = self.pinned()
                if pin and pin != self.release_id:
                    self.log(f"release {pin} pinned (running {self.release_id}): restarting in it")
                    self._end = "switch"
                    return
                if self.state == "disk-full":  # measure again: someone may have emptied done/
                    self.done_bytes = self.inbox.done_bytes()
                full = self.budget_state()
                if full:
                    self.inbox.ready(0)  # keeps `waiting` true
                    self.set_state("disk-full", full)
                    self._end = "full"
                    return
                self.write_status()
            if not pending:
                pending = self.inbox.ready(max(1, int(self.cfg["chunk"])))
                pending.reverse()
            c = None
            while pending and c is None:
                c = self._claim(pending.pop())
            if c is not None:
                if self.state != "running":
                    self.set_state("running")
                yield self._item(c)
                continue
            if not block:
                self._end = "empty"
                return
            self._idle()
        self._end = "stop"

    def _item(self, c):
        item = Item(f"{c.claim}~{c.name}", c.path)
        with self._lock:
            self.inflight[item.id] = c
        return item

    def recorded(self, item_id):
        """The pipeline wrote ``item_id``'s record: it goes to the disposer (returns its claim)."""
        with self._lock:
            c = self.inflight.pop(item_id)
        self.to_dispose.put(c)
        self.rate.append(time.monotonic())
        return c

    def _dispose_loop(self):
        """fsync the journal, then dispose of the images recorded so far; until the service ends and none is left."""
        while True:
            try:
                batch = [self.to_dispose.get(timeout=0.1)]
            except queue.Empty:
                if self._disposing.is_set():
                    return
                continue
            if not self._disposing.is_set():
                time.sleep(0.05)  # gather: at most ~20 fsyncs a second, whatever the rate (records are not delayed)
            while True:
                try:
                    batch.append(self.to_dispose.get_nowait())
                except queue.Empty:
                    break
            try:
                self.journal.sync()
            except OSError as exc:
                self.last_error = f"journal fsync: {exc}"
            for c in batch:
                try:
                    self.done_bytes += self.inbox.dispose(c)
                except OSError as exc:
                    self.last_error = f"dispose {safe_id(c.name)}: {exc}"
                    self.log(self.last_error)
            self.journal.rotate_if()

    def _claim(self, name):
        try:
            return self.inbox.claim(name)
        except OSError as exc:
            self.last_error = f"claim {safe_id(name)}: {exc}"
            self.log(self.last_error)
            return None

    def recover(self):
        """Images claimed before this start: recorded ones are disposed of, the rest go first in line."""
        work = self.inbox.work_files()
        if not work:
            return
        recorded = self.journal.recorded_claims(c.claim for c in work)
        for c in work:
            if c.claim in recorded:
                self.inbox.dispose(c)
            else:
                self.retry.append(c)
        self.log(f"recovered {len(work)} claimed image(s): {len(recorded)} already recorded, {len(work) - len(recorded)} to classify")


def main(config_path, release):
    """The service's process: returns its exit code."""
    from .runner import make_backend, stages

    try:
        cfg = load_config(config_path)
    except ServiceError as exc:
        os.write(2, f"agent service: {exc}\n".encode())
        return EXIT_FAILED
    os.makedirs(cfg["service_dir"], exist_ok=True)
    log = Log(os.path.join(cfg["service_dir"], "agent.log"), cfg["log_max"])
    svc = Service(cfg, release, log)
    write_atomic(os.path.join(cfg["service_dir"], "agent.pid"), f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *a: svc.stop.set())
    signal.signal(signal.SIGINT, lambda *a: svc.stop.set())
    log("agent service starting: release {} inbox {} policy {}".format(svc.release_id, cfg["inbox"], cfg["policy"]))
    backend = None
    try:
        job = job_for(svc.release, cfg["service_dir"])
        backend = make_backend(job)
        backend.load(job.path(job.model))
        code = svc.run(backend, stages(job, backend), job.batch, job.threads)
        log("agent service ended ({})".format({0: "stopped", 3: "release switch"}.get(code, code)))
        return code
    except Exception as exc:
        svc.last_error = f"{type(exc).__name__}: {exc}"
        log("agent service failed: " + traceback.format_exc())
        svc.set_state("failed", svc.last_error)
        return EXIT_FAILED
    finally:
        if backend is not None:
            try:
                backend.close()
            except Exception:
                pass
