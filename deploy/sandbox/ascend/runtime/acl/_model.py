"""A loaded simulated model: its I/O description and its execution through ONNX Runtime.

Execution reads the inputs from simulated device memory, applies what atc baked in (static
AIPP for uint8 image inputs, fp16 inputs widened, every float input rounded through fp16 as
the Ascend 310's default precision mode does), runs the ONNX graph on the CPU and writes the
outputs, cast to their baked-in type, back to device memory.

Timing mode (``ACL_SIM_DEVICE_MS_PER_IMAGE=3``): an execution instead takes ``batch x 3`` ms of
wall time without using the CPU (a sleep, one execution at a time per process, like one NPU),
and leaves the output buffers as they were; ``ACL_SIM_TIMING_COMPUTE=1`` also runs the graph
(correct outputs, but CPU time). Python 3.7.
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
_DEVICE = threading.Lock()  # timing mode: one execution at a time, like one NPU


class Model:
    def __init__(self, header, onnx_bytes):
        self.header = header
        self.inputs = header["inputs"]
        self.outputs = header["outputs"]
        self.gears = header.get("dynamic_batch") or None
        self.batch = None  # current gear (set_dynamic_batch_size)
        self.session = None
        if not os.environ.get("ACL_SIM_DEVICE_MS_PER_IMAGE") or os.environ.get("ACL_SIM_TIMING_COMPUTE"):
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
        if spec["name"] == simom.MBATCH_INPUT:
            return 8
        batch = batch or (max(self.gears) if self.gears else spec["dims"][0])
        if spec.get("aipp"):
            return _aipp.image_bytes(spec["aipp"], batch)
        dims = self.dims(spec, batch)
        return int(np.prod(dims)) * np.dtype(DTYPES[spec["dtype"]][1]).itemsize

    def batch_for(self, in_bufs):
        """The batch this execution runs at, or (None, code) when it cannot run."""
        if not self.gears:
            return self.inputs[0]["dims"][0], 0
        index = [s["name"] for s in self.inputs].index(simom.MBATCH_INPUT)
        view = M.device_view(in_bufs[index][0], 8)
        batch = int(np.frombuffer(view, dtype=np.int64)[0]) if view is not None else 0
        if batch not in self.gears:
            return None, C.fail(
                C.ACL_ERROR_INVALID_PARAM,
                "execute: dynamic-batch model without a valid "
                f"set_dynamic_batch_size (batch {batch}, gears {self.gears})",
            )
        return batch, 0

    def execute(self, in_bufs, out_bufs):
        """Run on (ptr, size) buffers; 0 or an error code. Checks sizes before touching anything."""
        batch, code = self.batch_for(in_bufs)
        if code:
            return code
        for spec, (ptr, size) in zip(self.inputs, in_bufs):
            if size < self.size(spec, batch) or M.device_view(ptr, self.size(spec, batch)) is None:
                return C.fail(
                    C.ACL_ERROR_MODEL_INPUT_NOT_MATCH,
                    "execute: input {} buffer ({} bytes at {:#x}) is not {} bytes of device memory".format(
                        spec["name"], size, ptr or 0, self.size(spec, batch)
                    ),
                )
        for spec, (ptr, size) in zip(self.outputs, out_bufs):
            if size < self.size(spec, batch) or M.device_view(ptr, self.size(spec, batch)) is None:
                return C.fail(
                    C.ACL_ERROR_MODEL_OUTPUT_NOT_MATCH,
                    "execute: output {} buffer ({} bytes) is not {} bytes of device memory".format(
                        spec["name"], size, self.size(spec, batch)
                    ),
                )
        ms = os.environ.get("ACL_SIM_DEVICE_MS_PER_IMAGE")
        if ms:
            with _DEVICE:
                time.sleep(float(ms) * batch / 1000.0)
            if self.session is None:
                return 0
        self.batch = batch
        return self._compute(in_bufs, out_bufs, batch)

    def _compute(self, in_bufs, out_bufs, batch):
        feed = {}
        for spec, (ptr, _) in zip(self.inputs, in_bufs):
            if spec["name"] == simom.MBATCH_INPUT:
                continue
            n = self.size(spec, batch)
            raw = M.device_view(ptr, n)
            if spec.get("aipp"):
                x = _aipp.apply(spec["aipp"], raw, batch)
            else:
                x = np.frombuffer(raw, dtype=DTYPES[spec["dtype"]][1]).reshape(self.dims(spec, batch))
            feed[spec["onnx_name"]] = _to_onnx(x, spec.get("onnx_dtype", "float32"))
        names = [o["onnx_name"] for o in self.outputs]
        results = self.session.run(names, feed)
        for spec, (ptr, _), value in zip(self.outputs, out_bufs, results):
            out = np.ascontiguousarray(value, dtype=DTYPES[spec["dtype"]][1])
            n = self.size(spec, batch)
            if out.nbytes != n:
                return C.fail(
                    C.ACL_ERROR_MODEL_OUTPUT_NOT_MATCH,
                    "execute: output {} is {} bytes, expected {}".format(spec["name"], out.nbytes, n),
                )
            M.device_view(ptr, n)[:] = out.tobytes()
        return 0


def _to_onnx(x, onnx_dtype):
    """What the graph gets: floats rounded through fp16 (the 310's precision), in the graph's dtype."""
    if x.dtype.kind == "f":
        x = x.astype(np.float16)
    return np.ascontiguousarray(x, dtype=onnx_dtype)


def _session(onnx_bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    threads = int(os.environ.get("ACL_SIM_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
