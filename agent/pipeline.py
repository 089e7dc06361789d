"""The classification loop: decode threads -> batches -> backend -> top-k -> results.

::

    items ──► decode pool (N threads, Pillow releases the GIL) ──► producer thread:
              normalise into a free batch buffer ──► bounded queue ──► main thread:
              backend.submit ──► done() ──► bounded queue ──► results thread: top-k,
              results.jsonl, events, labelled copies

The queues and the buffer pool are bounded, so memory stays flat however many images there
are, and decoding of the next batches overlaps inference of the current one. A bad image only
produces an ``error`` record; the loop goes on. Python 3.7 compatible.

``done()`` only hands the outputs over: it runs where the backend delivers them, i.e. between
two device executions (acl sync mode: the main thread, between execute calls; async mode: the
ACL report thread, inside a blocking callback that holds the device's stream). Top-k, records
and events used to run there, delaying the next execution by their time (~0.4 CPU-ms an image,
plus waits for the GIL); on the results thread they, and the labelled copies (~1 CPU-ms, no
separate writer thread any more: one hand-off fewer), overlap the device's work.

Streams mode, for a backend that runs several batches at once on the CPU (``backend.streams``
> 1: onnxruntime with one intra-op thread per run, one stream per core)::

    items ──► worker k (one per stream): decode ──► normalise into its own batch buffer ──►
              backend.run ──► top-k, results.jsonl, events, labelled copy ──► next item

No hand-offs between threads: each core alternates decode and inference of its own images,
and the GIL is released for both (Pillow decode/resize/encode, ORT run), so the two cores stay
busy without a queue. Measured on 2 cores (EfficientNet-Lite0, 96 mixed JPEGs): e2e 110 ->
~125 img/s against the queue design with one 2-thread ORT stream. Records are written in
completion order, not input order (ids make them unambiguous).
"""

import errno
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import images, postprocess
from .formats import IMAGE_EXTENSIONS
from .images import ImageError


class Item:
    """One input image: ``rel`` is its path below the input root (may hold surrogate escapes),
    ``id`` the JSON-safe form used in events and results, ``path`` the file to open."""

    __slots__ = ("rel", "id", "path")

    def __init__(self, rel, path):
        self.rel = rel
        self.id = images.safe_id(rel)
        self.path = path

    def __repr__(self):
        return f"Item({self.id!r})"


def collect(inputs, extensions=IMAGE_EXTENSIONS, not_taken=None):
    """Images from files and directories (walked recursively, sorted, by extension).

    Returns (root, items, missing): ids are relative to the deepest common directory of the
    inputs, so they are unique and stable across restarts; ``missing`` lists inputs that do not
    exist (each becomes an error record). A file a directory walk does not take (a dot-name, no
    image suffix) is appended to ``not_taken`` as (path, reason): nothing given is dropped unsaid.
    """
    files, missing = [], []
    for raw in inputs:
        p = os.path.abspath(raw)
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for name in sorted(filenames):
                    why = not_an_image(name, extensions)
                    if why is None:
                        files.append(os.path.join(dirpath, name))
                    elif not_taken is not None:
                        not_taken.append((os.path.join(dirpath, name), why))
        elif os.path.lexists(p):
            files.append(p)
        else:
            missing.append(raw)
    anchors = [
        os.path.abspath(r) if os.path.isdir(r) else os.path.dirname(os.path.abspath(r)) for r in inputs
    ]
    anchors = [a for a in anchors if os.path.isdir(a)]
    root = os.path.commonpath(anchors) if anchors else os.getcwd()
    seen, items = set(), []
    for f in files:
        rel = os.path.relpath(f, root)
        if rel not in seen:
            seen.add(rel)
            items.append(Item(rel, f))
    return root, items, missing


def not_an_image(name, extensions=IMAGE_EXTENSIONS):
    """Why a directory walk does not take a file of this name, or None when it does."""
    if name.startswith("."):
        return "a dot-name (hidden, or a file still being written)"
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in extensions:
        return "not an image suffix ({})".format(suffix or "none")
    return None


class _Batch:
    __slots__ = ("slots", "buf")

    def __init__(self, slots, buf):
        self.slots = slots  # [(item, preview, decode_ms)]
        self.buf = buf


class _Errors:
    __slots__ = ("errors",)

    def __init__(self, errors):
        self.errors = errors  # [(item, ImageError)]


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc


_END = object()


class Sink:
    """Where results go: results.jsonl, events, progress and labelled copies."""

    def __init__(self, rundir, progress=None, labelled_dir=None, writer_threads=1, probs=False):
        """writer_threads: threads that write labelled copies; 0 = write them in the thread that
        delivers the result (the runner's choice: a streams-mode worker, or the results thread).
        probs: also write each image's whole probability vector (``probs.jsonl``, for verify)."""
        self.rundir = rundir
        self.probs = probs
        self.progress = progress
        self.labelled_dir = labelled_dir
        self.ok = 0
        self.failed = 0
        self._writer = ThreadPoolExecutor(writer_threads) if labelled_dir and writer_threads else None
        self._writer_slots = threading.BoundedSemaphore(8)
        self._lock = threading.Lock()

    def result(self, item, topk, ms, preview=None, probs=None):
        self.rundir.add_result({"image": item.id, "ok": True, "topk": topk})
        if probs is not None:
            self.rundir.add_probs(item.id, probs)
        self.rundir.emit("result", image=item.id, topk=topk, ms=ms)
        with self._lock:
            self.ok += 1
            self._step()
        if self.labelled_dir is not None and preview is not None:
            text = postprocess.label_parts(topk)
            if self._writer is not None:
                self._writer_slots.acquire()
                self._writer.submit(self._save, item, preview, text, True)
            else:
                self._save(item, preview, text, False)

    def error(self, item, kind, message):
        self.rundir.add_result({"image": item.id, "ok": False, "kind": kind, "message": message})
        self.rundir.emit("error", image=item.id, kind=kind, message=message)
        with self._lock:
            self.failed += 1
            self._step()

    def _step(self):
        if self.progress is not None:
            self.progress.step()

    def _save(self, item, preview, text, release):
        try:
            # The preview is this image's own decoded picture, used by nothing else: draw on it.
            path = postprocess.labelled_path(self.labelled_dir, item.rel)
            postprocess.save_labelled(preview, text, path, inplace=True)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # a full disk ends the run (runner.failure_summary), it is not one image's trouble
            self.rundir.emit("log", message=f"labelled copy of {item.id} failed: {exc}", image=item.id)
        finally:
            if release:
                self._writer_slots.release()

    def close(self):
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None


def batch_plan(backend, requested):
    """(batch size, fixed): a fixed-batch model dictates its batch; a dynamic one takes the request."""
    fixed = backend.inputs[0].batch
    if fixed:
        return fixed, True
    return max(1, int(requested)), False


class Pipeline:
    """Runs items through preprocessing, the backend and postprocessing into a Sink."""

    def __init__(
        self, backend, preprocessor, postprocessor, sink, batch=1, workers=0, queue_depth=2, stop=None
    ):
        self.backend = backend
        self.pre = preprocessor
        self.post = postprocessor
        self.sink = sink
        self.batch, self.fixed = batch_plan(backend, batch)
        self.streams = max(1, int(getattr(backend, "streams", 1) or 1))
        self.workers = int(workers) or (os.cpu_count() or 1)
        self.queue_depth = max(1, int(queue_depth))
        self.stop = stop or threading.Event()
        self.keep_preview = sink.labelled_dir is not None
        self.infer_s = 0.0
        self.decode_s = 0.0
        self._acc = threading.Lock()
        self._results = None  # queue mode: (slots, infer_ms, outs, err) for the results thread

    # --- producer side (runs in its own thread) -----------------------------------------
    def _decode(self, item):
        t0 = time.perf_counter()
        try:
            res = self.pre.decode(item.path, keep_preview=self.keep_preview)
        except ImageError as exc:
            return item, exc, 0.0
        except MemoryError:
            return item, ImageError("too_large", "out of memory while decoding"), 0.0
        except Exception as exc:
            return item, ImageError("internal", f"{type(exc).__name__}: {exc}"), 0.0
        return item, res, (time.perf_counter() - t0) * 1000.0

    def _produce(self, items, ready, free):
        try:
            norm = self.pre.normalizer
            lookahead = self.workers * 2 + self.batch
            with ThreadPoolExecutor(self.workers) as pool:
                pending = deque()
                it = iter(items)
                exhausted = False
                buf, slots = None, []
                while not self.stop.is_set():
                    while not exhausted and len(pending) < lookahead:
                        try:
                            item = next(it)
                        except StopIteration:
                            exhausted = True
                            break
                        pending.append(pool.submit(self._decode, item))
                    if not pending:
                        break
                    item, res, ms = pending.popleft().result()
                    if isinstance(res, ImageError):
                        ready.put(_Errors([(item, res)]))
                        continue
                    self.decode_s += ms / 1000.0
                    if buf is None:
                        buf = free.get()
                    try:
                        norm.write(res.crop, buf[len(slots)])
                    except Exception as exc:
                        ready.put(_Errors([(item, ImageError("preprocess", f"normalise failed: {exc}"))]))
                        continue
                    slots.append((item, res.preview, ms))
                    if len(slots) == self.batch:
                        ready.put(_Batch(slots, buf))
                        buf, slots = None, []
                for f in pending:
                    f.cancel()
                if slots:
                    ready.put(_Batch(slots, buf))
        except BaseException as exc:  # a bug here must surface in the main thread, not hang it
            ready.put(_Failure(exc))
        finally:
            ready.put(_END)

    # --- consumer side (caller's thread) ------------------------------------------------
    def _done(self, tag, outs, err):
        """The backend's ``done``: hand the outputs to the results thread (queue mode) or
        deliver them here (streams mode: each worker delivers its own)."""
        slots, t0 = tag
        infer_ms = (time.perf_counter() - t0) * 1000.0
        with self._acc:  # held while queueing: once run() has queued _END, nothing follows it
            self.infer_s += infer_ms / 1000.0
            results = self._results
            if results is not None:
                results.put((slots, infer_ms, outs, err))
        if results is None:
            self._deliver(slots, infer_ms, outs, err)

    def _deliver(self, slots, infer_ms, outs, err):
        """Top-k of each image of a batch, into the sink (records, events, labelled copies)."""
        n = len(slots)
        if err is not None:
            for item, _, _ in slots:
                self.sink.error(item, "inference", str(err))
            return
        try:
            if self.sink.probs:
                rows, probs = self.post.full(np.asarray(outs[0])[:n])
            else:
                rows, probs = self.post(np.asarray(outs[0])[:n]), None
            if len(rows) != n:
                raise ValueError(f"model returned {len(rows)} rows for {n} images")
        except Exception as exc:
            for item, _, _ in slots:
                self.sink.error(item, "output", f"cannot read model output: {exc}")
            return
        per = round(infer_ms / n, 3)
        for i, ((item, preview, decode_ms), row) in enumerate(zip(slots, rows)):
            p = probs[i] if probs is not None else None
            self.sink.result(item, row, {"decode": round(decode_ms, 3), "infer": per}, preview, p)

    # --- streams mode: one worker per backend stream, no hand-offs ---------------------------
    def _infer(self, buf, slots):
        n = len(slots)
        if n < self.batch and self.fixed:
            buf[n:] = 0
            x = buf
        else:
            x = buf[:n]
        self.backend.submit(x, (slots, time.perf_counter()), self._done)

    def _work(self, next_item, errors):
        try:
            norm = self.pre.normalizer
            buf, slots = norm.batch_buffer(self.batch), []
            while not self.stop.is_set():
                item = next_item()
                if item is None:
                    break
                item, res, ms = self._decode(item)
                if isinstance(res, ImageError):
                    self.sink.error(item, res.kind, res.message)
                    continue
                with self._acc:
                    self.decode_s += ms / 1000.0
                try:
                    norm.write(res.crop, buf[len(slots)])
                except Exception as exc:
                    self.sink.error(item, "preprocess", f"normalise failed: {exc}")
                    continue
                slots.append((item, res.preview, ms))
                if len(slots) == self.batch:
                    self._infer(buf, slots)
                    slots = []
            if slots and not self.stop.is_set():
                self._infer(buf, slots)
        except BaseException as exc:  # surfaces in run(); the other workers stop too
            self.stop.set()
            errors.append(exc)

    def _run_streams(self, items):
        it = iter(items)
        lock = threading.Lock()

        def next_item():
            with lock:
                return next(it, None)

        errors = []
        threads = [
            threading.Thread(target=self._work, args=(next_item, errors), name=f"agent-stream-{k}")
            for k in range(1, self.streams)
        ]
        for t in threads:
            t.daemon = True
            t.start()
        finished = False
        try:
            self._work(next_item, errors)  # stream 0 is the caller's thread (signals still land)
            for t in threads:
                while t.is_alive():
                    t.join(0.1)
            self.backend.drain()
            finished = True
        finally:
            if not finished:  # interrupted in this thread: let the other workers end
                self.stop.set()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]

    # --- queue mode: results thread ------------------------------------------------------
    def _deliver_all(self, pending, errors):
        try:
            while True:
                entry = pending.get()
                if entry is _END:
                    return
                self._deliver(*entry)
        except BaseException as exc:  # surfaces in run(); keep taking entries so done() never blocks
            errors.append(exc)
            self.stop.set()  # and classify no more: nothing more could be recorded
            while pending.get() is not _END:
                pass

    def run(self, items):
        """Classify ``items`` (a list of Item); returns when every one has a record."""
        if self.streams > 1:
            return self._run_streams(items)
        self._results = queue.Queue(maxsize=8 * self.queue_depth)  # previews: a few MB at most
        errors = []
        results = threading.Thread(
            target=self._deliver_all, args=(self._results, errors), name="agent-results"
        )
        results.daemon = True
        results.start()
        try:
            self._run_queue(items)
        finally:
            with self._acc:  # a batch still delivered after this (an interrupted run) is delivered inline
                pending, self._results = self._results, None
            pending.put(_END)
            results.join()
        if errors:
            raise errors[0]

    def _run_queue(self, items):
        norm = self.pre.normalizer
        nbuf = self.queue_depth + 2
        free = queue.Queue()
        for _ in range(nbuf):
            free.put(norm.batch_buffer(self.batch))
        ready = queue.Queue(maxsize=self.queue_depth)
        producer = threading.Thread(target=self._produce, args=(items, ready, free), name="agent-producer")
        producer.daemon = True
        producer.start()
        failure = None
        finished = False
        try:
            while True:
                msg = ready.get()
                if msg is _END:
                    break
                if isinstance(msg, _Failure):
                    failure = msg.exc
                    continue
                if isinstance(msg, _Errors):
                    for item, exc in msg.errors:
                        self.sink.error(item, exc.kind, exc.message)
                    continue
                n = len(msg.slots)
                if n < self.batch and self.fixed:
                    msg.buf[n:] = 0  # pad a partial batch for a fixed-batch model
                    x = msg.buf
                else:
                    x = msg.buf[:n]
                self.backend.submit(x, (msg.slots, time.perf_counter()), self._done)
                free.put(msg.buf)  # submit has copied the input (ORT: ran it; ACL: memcpy'd it)
            self.backend.drain()
            finished = True
        finally:
            if not finished:
                # Interrupted (or the backend raised): unblock the producer and let it end.
                self.stop.set()
                while producer.is_alive():
                    try:
                        msg = ready.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if isinstance(msg, _Batch):
                        free.put(msg.buf)
            producer.join()
        if failure is not None:
            raise failure
