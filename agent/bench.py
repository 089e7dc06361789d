"""Pure-inference benchmark on synthetic input, summarised the way ais_bench does.

For each batch size: ``warmup`` untimed runs, then ``loop`` timed runs of ``backend.run`` on
one fixed random tensor. Latency statistics are per call (min/max/mean/median/p90/p99, ms);
throughput = 1000 * batch / mean latency, as ais_bench computes it. For the ACL backend the
timed call includes the host->device and device->host copies (ais_bench reports those apart;
its NPU_compute_time excludes them), so these figures are a little lower than ais_bench's.

On the ACL backend ``run_async`` measures the other way seed 000's sample drives the device:
``loop`` batches submitted back to back with ``execute_async`` (as many in flight as the
backend has buffers, callbacks every ``callback_interval``); throughput is batches x batch /
wall time and a batch's latency runs from its submit to its callback. The runner reports the
two side by side. Python 3.7 compatible.
"""

import time

import numpy as np


def percentile(sorted_values, q):
    """Linear-interpolated percentile of an already sorted list (numpy's default method)."""
    if not sorted_values:
        return 0.0
    return float(np.percentile(np.asarray(sorted_values, dtype=np.float64), q))


def stats(latencies_ms):
    v = sorted(latencies_ms)
    return {
        "min": round(v[0], 4),
        "max": round(v[-1], 4),
        "mean": round(sum(v) / len(v), 4),
        "median": round(percentile(v, 50), 4),
        "p90": round(percentile(v, 90), 4),
        "p95": round(percentile(v, 95), 4),
        "p99": round(percentile(v, 99), 4),
        "count": len(v),
    }


def synthetic_input(spec, batch, seed=0, nv12=False):
    """A random tensor shaped like the model input (dynamic dims: batch, else 224); ``nv12``: NV12 pictures
    of its (N, H, W, 3) size (the acl backend's decode: dvpp model input)."""
    shape = [batch] + [
        d if d else (3 if i == 0 and spec.layout == "NCHW" else 224) for i, d in enumerate(spec.shape[1:])
    ]
    if spec.layout == "NHWC" and not spec.shape[-1]:
        shape[-1] = 3
    if nv12:
        shape = [batch, shape[1] * 3 // 2, shape[2]]
    rng = np.random.RandomState(seed)
    if spec.dtype == "uint8":
        return rng.randint(0, 256, size=shape).astype(np.uint8)
    return rng.standard_normal(size=shape).astype(spec.dtype)


def run_one(backend, batch, loop, warmup, on_iteration=None):
    """Time ``loop`` calls of backend.run at one batch size; returns the summary dict."""
    x = synthetic_input(backend.inputs[0], batch, nv12=getattr(backend, "dvpp", None) is not None)
    for _ in range(warmup):
        backend.run(x)
    lat = []
    t_start = time.perf_counter()
    for i in range(loop):
        t0 = time.perf_counter()
        backend.run(x)
        lat.append((time.perf_counter() - t0) * 1000.0)
        if on_iteration is not None:
            on_iteration(i + 1)
    wall = time.perf_counter() - t_start
    s = stats(lat)
    return {
        "batch": batch,
        "loop": loop,
        "warmup": warmup,
        "latency_ms": s,
        "throughput": round(1000.0 * batch / s["mean"], 3) if s["mean"] > 0 else 0.0,
        "wall_ips": round(batch * loop / wall, 3) if wall > 0 else 0.0,
    }


def run_async(backend, batch, loop, warmup, on_iteration=None):
    """Pipelined: ``loop`` submits kept in flight by the backend's buffers; the summary dict of run_one."""
    x = synthetic_input(backend.inputs[0], batch, nv12=getattr(backend, "dvpp", None) is not None)
    for _ in range(warmup):
        backend.run(x)
    lat, errors = [], []

    def done(tag, outs, err):
        if err is not None:
            errors.append(err)
            return
        lat.append((time.perf_counter() - tag) * 1000.0)
        if on_iteration is not None:
            on_iteration(len(lat))

    t_start = time.perf_counter()
    for _ in range(loop):
        backend.submit(x, time.perf_counter(), done)
    backend.drain()
    wall = time.perf_counter() - t_start
    if errors:
        raise errors[0]
    s = stats(lat)
    ips = round(batch * len(lat) / wall, 3) if wall > 0 else 0.0
    return {"batch": batch, "loop": loop, "warmup": warmup, "latency_ms": s, "throughput": ips, "wall_ips": ips}


def mm_run_lines(result):
    """The summary in the shape of MagicMind's ``mm_run`` Performance Summary (seed 003's perf.sh greps
    ``Throughput (qps):``): throughput, then the latency line with its percentiles."""
    s = result["latency_ms"]
    wall = result["loop"] * result["batch"] / result["throughput"] if result["throughput"] else 0.0
    return [
        "=================== Performance Summary (batch {})".format(result["batch"]),
        "Total iterations:             {}".format(s["count"]),
        f"Host wall time(s):            {wall:.5f}",
        "Throughput (qps):             {} with total batch sizes: {} and {:.2f} iterations/second".format(
            result["throughput"], s["count"] * result["batch"], result["throughput"] / result["batch"]
        ),
        "  Total Latency Summary(H2D + Compute + D2H):",
        "  Latency(host clock, ms):    min: {min}  max: {max}  mean: {mean}  median: {median}  "
        "percentile: (90%) {p90}  (95%) {p95}  (99%) {p99}".format(**s),
    ]


def summary_lines(result):
    """The ais_bench-style text summary for one batch size (for log events)."""
    s = result["latency_ms"]
    return [
        "-----------------Performance Summary------------------ (batch {}{})".format(
            result["batch"], ", " + result["mode"] if result.get("mode") else ""
        ),
        "latency (ms): min = {min}, max = {max}, mean = {mean}, median = {median}, "
        "percentile(90%) = {p90}, percentile(99%) = {p99}".format(**s),
        "throughput 1000*batchsize({})/latency.mean({}): {}".format(
            result["batch"], s["mean"], result["throughput"]
        ),
    ]
