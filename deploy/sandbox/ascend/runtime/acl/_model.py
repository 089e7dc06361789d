"""A loaded simulated model: its I/O description and its execution through ONNX Runtime.

Execution (:meth:`Model.run`, on byte views of the caller's buffers: simulated device memory for
acl.mdl, the app's own memory for the C library through acl._capi) reads the inputs, applies what atc baked in (static
AIPP for uint8 image inputs, fp16 inputs widened, every float input rounded through fp16 as
the Ascend 310's default precision mode does), runs the ONNX graph on the CPU and writes the
outputs, cast to their baked-in type, back to device memory.

Timing mode (``ACL_SIM_DEVICE_MS_PER_IMAGE=3``): an execution instead takes ``batch x 3`` ms of
wall time without using the CPU (a sleep, one execution at a time per process, like one NPU),
and leaves the output buffers as they were; ``ACL_SIM_TIMING_COMPUTE=1`` also runs the graph
(correct outputs, but CPU time). The device keeps its own timeline (:class:`Npu`): work queued
on a stream starts when the work before it ended on the device, not when the Python thread
that simulates the device next gets the GIL, so a busy host does not slow the simulated NPU
down (a real one needs no host CPU between the executions of its queue).

The simulator must not distort benchmarks of the acl path (``benchmarks/agent.py --backend
acl``): the simulated atc puts the fp16 rounding of float32 inputs into the graph as two Cast
nodes (``fp16_in_graph``), so ONNX Runtime does it within the run; for models without them
(converted before) it is done here with integer operations (exactly numpy's float32 -> float16
-> float32 casts, ~5x faster than them). Sizes are computed once. Python 3.7.
"""

import os
import threading
import time

import numpy as np

from . import _aipp, simom
from . import _core as C
from . import _memory as M

DTYPES = {  # ACL data type name -> (aclDataType, numpy dtype)
    "FLOAT": (0, "float32"),
    "FLOAT16": (1, "float16"),
    "INT8": (2, "int8"),
    "INT32": (3, "int32"),
    "UINT8": (4, "uint8"),
    "INT16": (6, "int16"),
    "UINT16": (7, "uint16"),
    "UINT32": (8, "uint32"),
    "INT64": (9, "int64"),
    "UINT64": (10, "uint64"),
    "DOUBLE": (11, "float64"),
    "BOOL": (12, "bool"),
}
FORMATS = {"NCHW": 0, "NHWC": 1, "ND": 2}


class Npu:
    """Timing mode's device: one execution at a time, each on the device's own timeline."""

    def __init__(self):
        self.lock = threading.Lock()
        self.free_at = 0.0  # time.monotonic() when the last execution accepted ends

    def occupy(self, seconds, ready_at=None):
        """Run ``seconds`` of device work that may start at ``ready_at`` (default: now) and once
        the work before it is done; sleeps until it ends (no CPU) and returns that end time."""
        with self.lock:
            start = max(self.free_at, time.monotonic() if ready_at is None else ready_at)
            self.free_at = end = start + seconds
        delay = end - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return end


NPU = Npu()


class Model:
    def __init__(self, header, onnx_bytes=None):
        """``onnx_bytes`` None: the description only (sizes, dims), no session."""
        self.header = header
        self.inputs = header["inputs"]
        self.outputs = header["outputs"]
        self.gears = header.get("dynamic_batch") or None
        self.batch = None  # current gear (set_dynamic_batch_size)
        self.session = None
        self._sizes = {}  # (input/output name, batch) -> bytes
        timing_only = os.environ.get("ACL_SIM_DEVICE_MS_PER_IMAGE") and not os.environ.get("ACL_SIM_TIMING_COMPUTE")
        if onnx_bytes is not None and not timing_only:
            self.session = _session(onnx_bytes)

    def dims(self, spec, batch=None):
        """Dims as get_*_dims report them: -1 on a dynamic batch axis unless ``batch`` is given."""
        if spec.get("aipp"):
            return _aipp.input_dims(spec["aipp"], batch or spec["dims"][0])
        dims = list(spec["dims"])
        if dims and dims[0] == -1 and spec["name"] != simom.MBATCH_INPUT:
            dims[0] = batch if batch else -1
        return dims

    def size(self, spec, batch=None):
        """Buffer bytes for ``batch`` images (default: the fixed batch, or the largest gear)."""
        key = (spec["name"], batch)
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = self._size(spec, batch)
        return size

    def _size(self, spec, batch):
        if spec["name"] == simom.MBATCH_INPUT:
            return 8
        batch = batch or (max(self.gears) if self.gears else spec["dims"][0])
        if spec.get("aipp"):
            return _aipp.image_bytes(spec["aipp"], batch)
        dims = self.dims(spec, batch)
        return int(np.prod(dims)) * np.dtype(DTYPES[spec["dtype"]][1]).itemsize

    def batch_for(self, ins):
        """The batch this execution runs at, or (None, code) when it cannot run. ``ins`` are the
        input views (see :meth:`run`)."""
        if not self.gears:
            return self.inputs[0]["dims"][0], 0
        index = [s["name"] for s in self.inputs].index(simom.MBATCH_INPUT)
        view = ins[index]
        batch = int(np.frombuffer(view, dtype=np.int64, count=1)[0]) if view is not None and len(view) >= 8 else 0
        if batch not in self.gears:
            return None, C.fail(
                C.ACL_ERROR_INVALID_PARAM,
                "execute: dynamic-batch model without a valid "
                f"set_dynamic_batch_size (batch {batch}, gears {self.gears})",
            )
        return batch, 0

    def execute(self, in_bufs, out_bufs):
        """Run on (ptr, size) buffers; 0 or an error code. Checks sizes before touching anything."""
        return self.execute_at(in_bufs, out_bufs)[0]

    def execute_at(self, in_bufs, out_bufs, ready_at=None):
        """:meth:`run` on (ptr, size) buffers of simulated device memory (what acl.mdl hands over)."""
        ins = [M.device_view(ptr, size) for ptr, size in in_bufs]
        outs = [M.device_view(ptr, size) for ptr, size in out_bufs]
        return self.run(ins, outs, ready_at)

    def run(self, ins, outs, ready_at=None):
        """One execution, shared by the Python runtime and the C library (``acl._capi``): ``ins`` /
        ``outs`` are writable byte views of the caller's buffers, one per model input / output
        (None where the buffer is not device memory). Returns (code, the time it ended on the
        device); in timing mode it starts at ``ready_at`` (when its stream got to it) or later.
        Sizes are checked before anything is read or written."""
        batch, code = self.batch_for(ins)
        if code:
            return code, time.monotonic()
        code = self._check_views(ins, outs, batch)
        if code:
            return code, time.monotonic()
        ms = os.environ.get("ACL_SIM_DEVICE_MS_PER_IMAGE")
        if ms:
            end = NPU.occupy(float(ms) * batch / 1000.0, ready_at)
            if self.session is None:
                return 0, end
        self.batch = batch
        return self._compute(ins, outs, batch), time.monotonic()

    def _check_views(self, ins, outs, batch):
        for kind, specs, views, code in (
            ("input", self.inputs, ins, C.ACL_ERROR_MODEL_INPUT_NOT_MATCH),
            ("output", self.outputs, outs, C.ACL_ERROR_MODEL_OUTPUT_NOT_MATCH),
        ):
            for spec, view in zip(specs, views):
                need = self.size(spec, batch)
                if view is None or len(view) < need:
                    got = "not device memory" if view is None else f"{len(view)} bytes"
                    return C.fail(code, f"execute: {kind} {spec['name']} buffer is {got}, the model needs {need} bytes")
        return 0

    def _compute(self, ins, outs, batch):
        feed = {}
        for spec, view in zip(self.inputs, ins):
            if spec["name"] == simom.MBATCH_INPUT:
                continue
            raw = view[: self.size(spec, batch)]
            if spec.get("aipp"):
                x = _aipp.apply(spec["aipp"], raw, batch)
            else:
                x = np.frombuffer(raw, dtype=DTYPES[spec["dtype"]][1]).reshape(self.dims(spec, batch))
            feed[spec["onnx_name"]] = _to_onnx(
                x, spec.get("onnx_dtype", "float32"), spec.get("fp16_in_graph")
            )
        names = [o["onnx_name"] for o in self.outputs]
        results = self.session.run(names, feed)
        for spec, view, value in zip(self.outputs, outs, results):
            out = np.ascontiguousarray(value, dtype=DTYPES[spec["dtype"]][1])
            n = self.size(spec, batch)
            if out.nbytes != n:
                return C.fail(
                    C.ACL_ERROR_MODEL_OUTPUT_NOT_MATCH,
                    "execute: output {} is {} bytes, expected {}".format(spec["name"], out.nbytes, n),
                )
            view[:n] = out.tobytes()
        return 0


def load(data, soc_version, what):
    """(Model, 0) from the bytes of a simulated model, or (None, code) with the reason recorded
    (acl.get_recent_err_msg): 100013 for a file that is not a (valid) simulated model, was built for
    another soc_version, or whose graph ONNX Runtime refuses. Shared by acl.mdl and acl._capi."""
    try:
        header, onnx_bytes = simom.loads(data)
    except simom.SimOmError as exc:
        return None, C.fail(C.ACL_ERROR_PARSE_MODEL, f"{what}: {exc}")
    soc = header.get("soc_version")
    if soc != soc_version:
        return None, C.fail(
            C.ACL_ERROR_PARSE_MODEL,
            f"ModelCheckCompatibility failed, supported socVersion={soc_version}, but the model socVersion={soc}",
        )
    try:
        return Model(header, onnx_bytes), 0
    except Exception as exc:  # onnxruntime refused the graph
        return None, C.fail(C.ACL_ERROR_PARSE_MODEL, f"{what}: graph does not load: {exc}")


def _to_onnx(x, onnx_dtype, rounded_in_graph=False):
    """What the graph gets: floats rounded through fp16 (the 310's precision), in the graph's dtype.
    The simulated atc puts that rounding into the graph itself (``fp16_in_graph``, see atc_sim)."""
    if rounded_in_graph:
        return np.ascontiguousarray(x, dtype=onnx_dtype)
    if x.dtype == np.float32 and onnx_dtype == "float32":
        return fp16_rounded(x)
    if x.dtype.kind == "f":
        x = x.astype(np.float16)
    return np.ascontiguousarray(x, dtype=onnx_dtype)


def fp16_rounded(x):
    """A new float32 array equal, bit for bit, to ``x.astype(float16).astype(float32)``.

    Where the result is a normal float16 number, rounding to float16 is rounding the float32
    mantissa to its top 10 bits, to nearest, ties to even: add 0xFFF plus the lowest kept bit
    and clear the 13 dropped bits. What lands outside that range (zeros, subnormals, overflow to
    inf, inf, nan) goes through numpy's casts. Checked against them on all 2**32 float32 values.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    out = np.right_shift(bits, 13)
    out &= 1
    out += 0xFFF
    out += bits
    out &= 0xFFFFE000
    # float16 normals have float32 exponents 113..142: |out| in [0x38800000, 0x47800000)
    offset = out & 0x7FFFFFFF
    offset -= 0x38800000
    rest = np.flatnonzero(offset >= 0x0F000000)
    result = out.view(np.float32)
    if rest.size:
        flat = result.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            flat[rest] = x.reshape(-1)[rest].astype(np.float16).astype(np.float32)
    return result


def _session(onnx_bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    threads = int(os.environ.get("ACL_SIM_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
