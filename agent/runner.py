"""One agent run of one job: run directory, status, start/end events, summary and exit code.

Exit codes (also the ``status`` file and the end event's ``status``):

``0``  ok       every image was classified (bench: every loop ran)
``2``  partial  some images failed (each has an error record), or the run was interrupted
                (SIGINT/SIGTERM) after classifying some; restart with the same out_dir to resume
``1``  failed   nothing was classified, or the job/model/backend could not be used at all

Resuming: results.jsonl already in out_dir lists the images done; they are skipped (counted in
``start.skipped``) and the summary covers the whole run, old records included.
Python 3.7 compatible.
"""

import errno
import os
import signal
import threading
import time
import traceback

from . import __version__, bench, evaluate, images, postprocess, preprocess, yuv
from .backends import BackendError, for_job
from .job import JobError
from .pipeline import Item, Pipeline, Sink, batch_plan, collect
from .rundir import Progress, RunDir

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2
_EXIT = {"ok": EXIT_OK, "partial": EXIT_PARTIAL, "failed": EXIT_FAILED}


class _Interrupted(Exception):
    pass


def status_of(ok, failed, interrupted=False):
    if ok == 0:
        return "failed"
    if failed or interrupted:
        return "partial"
    return "ok"


def make_backend(job, **options):
    """The job's backend, not loaded yet (its module turns the job into settings: backends.for_job)."""
    return for_job(job, **options)


def execute(job, echo=True, backend=None, stream=None, handle_signals=True):
    """Run ``job`` to completion; returns the exit code. ``backend`` may be injected (tests)."""
    rundir = RunDir(job.out_dir, echo=echo, stream=stream).open()
    rundir.set_status("running")
    stop = threading.Event()
    restore = _install_signals(stop) if handle_signals else None
    t0 = time.monotonic()
    try:
        summary = _attempt(job, rundir, backend, stop)
        summary.setdefault("elapsed_s", round(time.monotonic() - t0, 3))
        summary.setdefault("ips", 0.0)
        rundir.write_json("summary.json", summary)
        rundir.emit("end", summary=summary)
        rundir.set_status(summary["status"])
        return _EXIT[summary["status"]]
    except BaseException:
        rundir.set_status("failed")
        raise
    finally:
        if restore:
            restore()
        rundir.close()


def _attempt(job, rundir, backend, stop):
    """The run's summary, whatever happens: a failure is a summary with its reason, not an exception."""
    try:
        try:
            if backend is None:
                backend = make_backend(job)
            backend.load(job.path(job.model))
            if job.mode == "bench":
                return _bench(job, rundir, backend, stop)
            return _classify(job, rundir, backend, stop)
        finally:
            if backend is not None:
                try:
                    backend.close()
                except Exception as exc:
                    rundir.emit("log", level="error", message=f"backend close: {exc}")
    except Exception as exc:
        return failure_summary(rundir, exc)


def disk_full(exc):
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def failure_summary(rundir, exc):
    """A run that cannot go on: what it keeps (results.jsonl, resumable) and why, in one line (``reason``).
    A full disk frees the run's reserve first, so the log line, the summary and the end event still fit."""
    if disk_full(exc):
        rundir.release_reserve()
        why = f"disk full on the board ({exc.strerror}: {exc.filename or rundir.out_dir})"
        rundir.emit("log", level="error", message=why)
    elif isinstance(exc, (JobError, BackendError, preprocess.PreprocessError, evaluate.EvalError, OSError)):
        why = str(exc)
        rundir.emit("log", level="error", message=f"{type(exc).__name__}: {exc}")
    else:  # a bug, or out of memory: still end the run properly, with the traceback in the log
        why = "out of memory" if isinstance(exc, MemoryError) else f"internal: {exc}"
        rundir.emit("log", level="error", message=traceback.format_exc())
    done = rundir.done_images()
    ok = sum(1 for r in done.values() if r.get("ok"))
    return {"ok": ok, "failed": len(done) - ok, "total": max(rundir.total, len(done)), "status": "failed",
            "error": why, "reason": why}


def _install_signals(stop):
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {}

    def handler(signum, frame):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore():
        for sig, h in previous.items():
            signal.signal(sig, h)

    return restore


def stages(job, backend):
    """The preprocessing, postprocessing and (eval mode) ground truth for this job and model."""
    spec = backend.inputs[0]
    cfg = preprocess.resolve(job.preprocess, spec.shape, spec.dtype, spec.layout)
    labels = postprocess.Labels.load(job.path(job.labels))
    k = max(job.topk, evaluate.TOPN) if job.mode == "eval" else job.topk
    truth = None
    if job.mode == "eval":
        opts = job.eval or {}
        if opts.get("truth") is not None:  # the host read and checked the label file: only its entries travel
            truth = evaluate.inline_truth(opts["truth"])
        elif opts.get("label_file"):
            truth = evaluate.load_ground_truth(job.path(opts["label_file"]))
        else:
            raise JobError("eval mode needs eval.label_file or eval.truth")
    dvpp = getattr(backend, "dvpp", None)  # the acl backend's decode: dvpp (a YUV420SP AIPP input)
    pre = yuv.DvppPreprocessor(cfg, dvpp) if dvpp is not None else preprocess.Preprocessor(cfg)
    return cfg, pre, postprocess.Postprocessor(labels, k), truth


NOT_TAKEN_SHOWN = 100  # files not taken, listed by name in the start event and the summary (all are counted)


def _announce(job, rundir, backend, cfg, root, items, todo, batch, fixed, not_taken=()):
    rundir.emit(
        "start",
        run_id=job.run_id,
        mode=job.mode,
        backend=backend.name,
        model=job.model,
        total=len(todo),
        skipped=len(items) - len(todo),
        batch=batch,
        fixed_batch=fixed,
        root=root,
        preprocess=_cfg_dict(cfg),
        agent=__version__,
        not_taken=list(not_taken[:NOT_TAKEN_SHOWN]),
        not_taken_total=len(not_taken),
    )
    if fixed and batch != job.batch:
        rundir.emit("log", message=f"model has a fixed batch of {batch}; using it instead of {job.batch}")


def _classify(job, rundir, backend, stop):
    """Classify the job's images not yet done in ``rundir``; returns the run's summary (summary.json)."""
    cfg, pre, post, truth = stages(job, backend)
    skipped = []
    root, items, missing = collect([job.path(p) for p in job.inputs], not_taken=skipped)
    not_taken = [{"file": images.safe_id(os.path.relpath(p, root)), "reason": why} for p, why in skipped]
    if not items and not missing:
        raise JobError(no_images(root, not_taken))
    done = rundir.done_images()
    todo = [it for it in items if it.id not in done]
    rundir.total = len(items) + len(missing)
    batch, fixed = batch_plan(backend, job.batch)
    _announce(job, rundir, backend, cfg, root, items, todo, batch, fixed, not_taken)
    progress = Progress(rundir, len(todo))
    labelled = job.out_dir if job.labelled else None
    # Labelled copies are written by the thread that delivers the image's result (no extra
    # thread): a streams-mode worker, or the pipeline's results thread, off the device's path.
    sink = Sink(rundir, progress, labelled_dir=labelled, writer_threads=0, probs=bool(job.probs))
    for raw in missing:
        item = Item(raw, raw)
        if item.id not in done:
            sink.error(item, "unreadable", "input does not exist")
    workers = job.threads or (yuv.LANES if isinstance(pre, yuv.DvppPreprocessor) else 0)
    pipe = Pipeline(backend, pre, post, sink, batch=batch, workers=workers, stop=stop)
    t0, cpu0 = time.monotonic(), time.process_time()
    try:
        pipe.run(todo)
    finally:
        sink.close()
    clock = (time.monotonic() - t0, time.process_time() - cpu0)  # cpu: all threads (decode, inference, writing)
    summary = _summary(done, items, missing, todo, sink, pipe, stop, batch, clock)
    summary.update(not_taken=len(not_taken), not_taken_files=not_taken[:NOT_TAKEN_SHOWN])
    if getattr(backend, "dvpp", None) is not None:  # where the JPEGs were decoded
        summary["decode"] = backend.dvpp.describe()
    if truth is not None:
        records = list(rundir.done_images().values())
        classes = post.classes if getattr(post, "classes", None) else _classes(backend)
        metrics = evaluate.evaluate(records, truth, classes)
        rundir.write_json("result.json", evaluate.result_json(metrics))
        evaluate.seed003_files(records, truth, job.out_dir, classes)  # scored by compute_top1_and_top5.py
        summary["eval"] = metrics
    return summary


def no_images(root, not_taken):
    """The reason of a run given no image: an empty folder, or files none of which is one."""
    if not not_taken:
        return f"no images: {root} has no files"
    shown = ", ".join("{} ({})".format(n["file"], n["reason"]) for n in not_taken[:5])
    more = f" and {len(not_taken) - 5} more" if len(not_taken) > 5 else ""
    return f"no images: none of the {len(not_taken)} files in {root} is taken: {shown}{more}"


def _summary(done, items, missing, todo, sink, pipe, stop, batch, clock):
    """summary.json: totals over every run of this run id (a resumed run counts what it skipped)."""
    elapsed, cpu = clock
    processed = sink.ok + sink.failed
    interrupted = stop.is_set() and processed < len(todo)
    prev_ok = sum(1 for r in done.values() if r.get("ok"))
    ok = prev_ok + sink.ok
    failed = (len(done) - prev_ok) + sink.failed
    return {
        "ok": ok,
        "failed": failed,
        "total": len(items) + len(missing),
        "skipped": len(items) - len(todo),
        "this_run": {"ok": sink.ok, "failed": sink.failed, "remaining": len(todo) - processed},
        "elapsed_s": round(elapsed, 3),
        "ips": round(processed / elapsed, 3) if elapsed > 0 else 0.0,
        "timings_s": {
            "decode_cpu": round(pipe.decode_s, 3),
            "inference": round(pipe.infer_s, 3),
            "process_cpu": round(cpu, 3),
        },
        "batch": batch,
        "streams": pipe.streams,
        "interrupted": interrupted,
        "status": status_of(ok, failed, interrupted),
    }


def _classes(backend):
    if backend.outputs and backend.outputs[0].shape:
        last = backend.outputs[0].shape[-1]
        return last if isinstance(last, int) else None
    return None


def _cfg_dict(cfg):
    return {
        "preset": cfg.preset,
        "resize": cfg.resize,
        "crop": cfg.crop,
        "color": cfg.color,
        "scale": cfg.scale,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "normalize": cfg.normalize,
        "layout": cfg.layout,
        "dtype": cfg.dtype,
        "fast": cfg.fast,
        "resample": cfg.resample,
    }


def _modes(backend):
    """The ways this backend can be driven: the acl backend sync and async (seed 000), others one."""
    return ("sync", "async") if hasattr(backend, "async_mode") else (None,)


def _bench_modes(backend, batch, loop, warmup, progress):
    """One result per mode at ``batch``: sync first (no report thread yet), then async."""
    out = []
    configured = getattr(backend, "async_mode", None)
    try:
        for mode in _modes(backend):
            if mode is not None:
                backend.async_mode = mode == "async"
            fn = bench.run_async if mode == "async" else bench.run_one
            r = fn(backend, batch, loop, warmup, on_iteration=lambda i: progress.step())
            if mode is not None:
                r["mode"] = mode
            out.append(r)
    finally:
        if configured is not None:
            backend.async_mode = configured
    return out


def _bench(job, rundir, backend, stop):
    opts = job.bench or {}
    loop = int(opts.get("loop", 100))
    warmup = int(opts.get("warmup", 5))
    sizes = [int(b) for b in opts.get("batch_sizes", [job.batch])]
    fixed = backend.inputs[0].batch
    unsupported = []
    if fixed:
        # A fixed-batch model (an .om converted for one batch) cannot take the others: they are
        # reported as such (summary "unsupported"), not as errors; with none of them possible, its own.
        unsupported = [
            {"batch": b, "reason": f"model has a fixed batch of {fixed}"} for b in sizes if b != fixed
        ]
        if unsupported:
            skipped = ", ".join(str(u["batch"]) for u in unsupported)
            rundir.emit("log", message=f"model has a fixed batch of {fixed}; batch sizes {skipped} skipped")
        sizes = [fixed]
    total = loop * len(sizes) * len(_modes(backend))
    rundir.emit(
        "start",
        run_id=job.run_id,
        mode="bench",
        backend=backend.name,
        model=job.model,
        total=total,
        skipped=0,
        batch=sizes[0],
        batch_sizes=sizes,
        loop=loop,
        warmup=warmup,
        agent=__version__,
    )
    progress = Progress(rundir, total)
    results = []
    t0 = time.monotonic()
    for b in sizes:
        if stop.is_set():
            break
        for r in _bench_modes(backend, b, loop, warmup, progress):
            results.append(r)
            for line in (bench.mm_run_lines(r) if backend.name == "magicmind" else bench.summary_lines(r)):
                rundir.emit("log", message=line)
    elapsed = time.monotonic() - t0
    done = sum(r["loop"] for r in results)
    best = max(results, key=lambda r: r["throughput"]) if results else None
    return {
        "ok": done,
        "failed": 0,
        "total": total,
        "elapsed_s": round(elapsed, 3),
        "ips": best["throughput"] if best else 0.0,
        "bench": results,
        "unsupported": unsupported,
        "backend": backend.describe(),
        "status": "ok" if done == total else status_of(done, 0, True),
    }
