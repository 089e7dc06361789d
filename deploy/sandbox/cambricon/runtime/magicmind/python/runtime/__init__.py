"""Simulated ``magicmind.python.runtime`` (Cambricon MagicMind's Python runtime) for sandbox boards.

Written from the call sites of Cambricon's own clients (shared/notes/magicmind.md section 1;
a checkout named by MAGICMIND_CLOUD), which run against it unmodified in the tests. The
conventions kept, each one something a client relies on:

* **Statuses, not exceptions.** Actions return :class:`Status` (``.ok()``, ``str()``); creators
  return the object or ``None`` (clients check ``engine != None``).
* ``with mm.System():`` is optional and objects made inside it keep working after it exits
  (MMRunner builds everything inside the block and runs after it).
* ``context.enqueue(inputs, outputs, queue)`` **replaces the contents of the caller's list** in
  place (a list reused for every image must not grow); the outputs hold data once
  ``queue.sync()`` returned OK. Work queued on a queue runs at ``sync`` (in the caller's thread,
  releasing the GIL inside ONNX Runtime), in order.
* ``dev.active()`` and ``tensor.to(dev)`` may be skipped: host-resident inputs are accepted.
* Models are files of the simulated builder (``simmm.py``); the graph inside runs for real
  through ONNX Runtime on the CPU. A model built for another arch than the device's
  (``MM_SIM_ARCH``, default ``mtp_372``) does not deserialize.
* Input dtypes: a UINT8 input takes uint8 only; a FLOAT input takes float32, and float64/float16
  arrays are cast (the resnet50_onnx client feeds float64). Whether the real runtime casts or
  rejects is not shown by any public source: this is a guess.

Environment: ``MM_SIM_DEVICES`` (MLUs on the board, default 1), ``MM_SIM_ARCH``,
``MM_SIM_THREADS`` (ORT intra-op threads, default: the cores), ``MM_SIM_FAIL=enqueue:3,sync:2``
(the Nth call of that function in this process returns an error status and does nothing:
deserialize, active, create_queue, create_engine, from_numpy, enqueue, sync).

Not reproduced: the Builder/Parser/Network/Calibrator API (models come from the simulated
builder program), remote RPC sessions, multi-device placement, real MLU numerics beyond fp16
rounding, and the real runtime's logs. Python 3.7, numpy + onnxruntime only.
"""

import os
import threading

import numpy as np

from . import simmm

SIMULATED = True
__version__ = "1.7.0+sim"


# ----------------------------------------------------------------------------- status


class Code:
    """Status codes (the abseil-style set MagicMind's C++ ``magicmind::error::Code`` uses)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15


_CODE_NAMES = {v: k for k, v in vars(Code).items() if k.isupper()}


class Status:
    """What an action returns: ``ok()``, ``error_code()``, ``error_message()``, ``str()``."""

    __slots__ = ("_code", "_msg")

    def __init__(self, code=Code.OK, msg=""):
        self._code = int(code)
        self._msg = str(msg)

    @staticmethod
    def OK():
        return Status()

    def ok(self):
        return self._code == Code.OK

    def error_code(self):
        return self._code

    def error_message(self):
        return self._msg

    def __str__(self):
        if self.ok():
            return "OK"
        return f"{_CODE_NAMES.get(self._code, self._code)}: {self._msg}"

    __repr__ = __str__


# ----------------------------------------------------------------------------- types


class DataType:
    """Tensor element types; members are instances with ``name`` (``str()`` gives ``DataType.X``)."""

    def __init__(self, name, numpy_name):
        self.name, self.numpy = name, numpy_name

    def __repr__(self):
        return "DataType." + self.name

    __str__ = __repr__


_NUMPY = (("INT8", "int8"), ("INT16", "int16"), ("INT32", "int32"), ("INT64", "int64"), ("UINT8", "uint8"),
          ("UINT16", "uint16"), ("UINT32", "uint32"), ("FLOAT16", "float16"), ("FLOAT32", "float32"),
          ("BOOL", "bool"), ("QINT8", "int8"), ("QINT16", "int16"))  # fmt: skip
for _name, _np in _NUMPY:
    setattr(DataType, _name, DataType(_name, _np))
DataType.FLOAT = DataType.FLOAT32
_BY_NAME = {name: getattr(DataType, name) for name, _ in _NUMPY}
_BY_NAME["FLOAT"] = DataType.FLOAT32


class Dims:
    """A shape: ``Dims((1, 3, 224, 224))``; -1 marks a mutable axis."""

    def __init__(self, dims=()):
        self._dims = tuple(int(d) for d in dims)

    def GetDims(self):
        return list(self._dims)

    def GetDimsNum(self):
        return len(self._dims)

    def GetDimValue(self, i):
        return self._dims[i]

    def GetElementCount(self):
        n = 1
        for d in self._dims:
            n *= d
        return n

    def __eq__(self, other):
        return isinstance(other, Dims) and other._dims == self._dims

    def __repr__(self):
        return f"Dims({list(self._dims)})"


class ModelKind:
    kCaffe, kOnnx, kPytorch, kTensorflow = range(4)


# ----------------------------------------------------------------------------- faults


_lock = threading.Lock()
_calls = {}


def _fault(name):
    """The injected failure for this call of ``name`` (MM_SIM_FAIL=name:N,...), or None."""
    spec = os.environ.get("MM_SIM_FAIL", "")
    if not spec:
        return None
    with _lock:
        n = _calls[name] = _calls.get(name, 0) + 1
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) >= 2 and parts[0] == name and parts[1].isdigit() and int(parts[1]) == n:
            return Status(Code.INTERNAL, f"injected fault: {name} call {n} failed (MM_SIM_FAIL)")
    return None


def _device_count():
    try:
        return max(0, int(os.environ.get("MM_SIM_DEVICES", "1")))
    except ValueError:
        return 1


def _arch():
    return os.environ.get("MM_SIM_ARCH", "mtp_372")


# ----------------------------------------------------------------------------- system, device, queue


class System:
    """The runtime's process-wide setup; optional, and nothing made under it dies with it."""

    def __init__(self):
        self._initialized = False

    def initialize(self):
        self._initialized = True
        return Status.OK()

    def device_count(self):
        return _device_count()

    def destroy(self):
        self._initialized = False
        return Status.OK()

    destory = destroy  # sic: the spelling Cambricon's samples call

    def __enter__(self):
        self.initialize()
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False


class Device:
    """An MLU by ``id``; ``active()`` binds it to the calling thread (optional)."""

    def __init__(self):
        self.id = 0

    def _valid(self):
        return isinstance(self.id, int) and 0 <= self.id < _device_count()

    def _invalid_status(self):
        return Status(
            Code.INVALID_ARGUMENT,
            f"device id {self.id} does not exist ({_device_count()} MLU device(s) on this host)",
        )

    def active(self):
        fault = _fault("active")
        if fault is not None:
            return fault
        return Status.OK() if self._valid() else self._invalid_status()

    def create_queue(self):
        if _fault("create_queue") is not None or not self._valid():
            return None
        return Queue(self)


class Queue:
    """A device queue: enqueued executions run in order when ``sync()`` is called."""

    def __init__(self, device):
        self._device = device
        self._pending = []
        self._mutex = threading.Lock()

    def _put(self, work):
        with self._mutex:
            self._pending.append(work)

    def sync(self):
        with self._mutex:
            work, self._pending = self._pending, []
        fault = _fault("sync")
        if fault is not None:
            return fault  # the queued work is dropped: its outputs never get data
        for item in work:
            status = item()
            if not status.ok():
                return status
        return Status.OK()


# ----------------------------------------------------------------------------- tensors


class Tensor:
    """An input or output tensor: ``from_numpy``, ``to(dev)``, ``asnumpy()``, ``shape``, ``dtype``."""

    def __init__(self, name, dims, dtype):
        self._name = name
        self._dims = tuple(dims)
        self._dtype = dtype
        self._data = None
        self._on_device = False

    def get_name(self):
        return self._name

    @property
    def name(self):
        return self._name

    @property
    def shape(self):
        return tuple(self._data.shape) if self._data is not None else self._dims

    @property
    def dtype(self):
        return self._dtype

    def resize(self, dims):
        self._dims = tuple(int(d) for d in (dims.GetDims() if isinstance(dims, Dims) else dims))
        return Status.OK()

    def from_numpy(self, array):
        fault = _fault("from_numpy")
        if fault is not None:
            return fault
        if not isinstance(array, np.ndarray):
            return Status(
                Code.INVALID_ARGUMENT, f"from_numpy needs a numpy array, not {type(array).__name__}"
            )
        self._data = np.array(array, copy=True, order="C")  # the host copy the runtime owns
        self._on_device = False
        return Status.OK()

    def to(self, device):
        if not isinstance(device, Device) or not device._valid():
            return Status(Code.INVALID_ARGUMENT, "to(): not a valid device")
        if self._data is None:
            return Status(Code.FAILED_PRECONDITION, f"to(): tensor {self._name} holds no data")
        self._on_device = True
        return Status.OK()

    def asnumpy(self):
        if self._data is None:  # not computed yet (enqueued, not synced): device memory never written
            return np.zeros([max(d, 0) for d in self._dims], dtype=self._dtype.numpy)
        return self._data


# ----------------------------------------------------------------------------- model, engine, context


class _EngineConfig:
    def __init__(self):
        self.device_type = "MLU"


class Model:
    """A deserialized model: description getters, ``create_i_engine``."""

    EngineConfig = _EngineConfig

    def __init__(self):
        self._header = None
        self._onnx = None
        self._path = None

    def deserialize_from_file(self, path):
        fault = _fault("deserialize")
        if fault is not None:
            return fault
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (OSError, TypeError) as exc:
            return Status(Code.NOT_FOUND, f"cannot read model {path}: {exc}")
        try:
            header, onnx_bytes = simmm.loads(data)
        except simmm.SimMmError as exc:
            return Status(Code.DATA_LOSS, f"{path}: {exc}")
        archs = header.get("archs") or []
        if _arch() not in archs:
            return Status(
                Code.FAILED_PRECONDITION,
                "model {} is built for {}, this MLU is {}".format(
                    path, ",".join(archs) or "no arch", _arch()
                ),
            )
        self._header, self._onnx, self._path = header, onnx_bytes, path
        return Status.OK()

    def serialize_to_file(self, path):
        if self._header is None:
            return Status(Code.FAILED_PRECONDITION, "no model to serialize")
        with open(path, "wb") as f:
            f.write(simmm.dumps(self._header, self._onnx))
        return Status.OK()

    def _io(self, kind):
        return (self._header or {}).get(kind, [])

    def get_input_num(self):
        return len(self._io("inputs"))

    def get_output_num(self):
        return len(self._io("outputs"))

    def get_input_names(self):
        return [t["name"] for t in self._io("inputs")]

    def get_output_names(self):
        return [t["name"] for t in self._io("outputs")]

    def get_input_dimensions(self):
        return [Dims(t["dims"]) for t in self._io("inputs")]

    def get_output_dimensions(self):
        return [Dims(t["dims"]) for t in self._io("outputs")]

    def get_input_data_types(self):
        return [_BY_NAME[t["dtype"]] for t in self._io("inputs")]

    def get_output_data_types(self):
        return [_BY_NAME[t["dtype"]] for t in self._io("outputs")]

    def get_input_data_type(self, i):
        return self.get_input_data_types()[i]

    def get_output_data_type(self, i):
        return self.get_output_data_types()[i]

    def create_i_engine(self, config=None):
        if self._header is None or _fault("create_engine") is not None:
            return None
        try:
            return Engine(self._header, self._onnx)
        except Exception:  # the graph does not load: a real runtime returns a null engine
            return None


def _session(onnx_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    threads = int(os.environ.get("MM_SIM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if os.environ.get("MM_SIM_SPIN") == "1" else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(onnx_bytes, sess_options=so, providers=["CPUExecutionProvider"])


class Engine:
    """The model loaded for the device: one ONNX Runtime session shared by its contexts."""

    def __init__(self, header, onnx_bytes):
        self._header = header
        self._session = _session(onnx_bytes)

    def create_i_context(self):
        return Context(self)


class Context:
    """An execution context: ``create_inputs()``, ``enqueue(inputs, outputs, queue)``."""

    def __init__(self, engine):
        self._engine = engine
        self._in = engine._header["inputs"]
        self._out = engine._header["outputs"]

    def create_inputs(self):
        return [Tensor(t["name"], t["dims"], _BY_NAME[t["dtype"]]) for t in self._in]

    def _check(self, i, spec, tensor):
        """(array to feed, None) or (None, Status) for input ``i``."""
        data = tensor._data if isinstance(tensor, Tensor) else None
        if data is None:
            return None, Status(
                Code.INVALID_ARGUMENT,
                "input {} ({}) holds no data: call from_numpy first".format(i, spec["name"]),
            )
        want = _BY_NAME[spec["dtype"]].numpy
        if data.dtype != np.dtype(want):
            if want == "float32" and data.dtype in (np.float64, np.float16):
                data = data.astype(np.float32)
            else:
                return None, Status(
                    Code.INVALID_ARGUMENT,
                    "input {} ({}) is {}, the array is {}".format(i, spec["name"], spec["dtype"], data.dtype),
                )
        dims = spec["dims"]
        if data.ndim != len(dims) or any(d != -1 and d != s for d, s in zip(dims, data.shape)):
            return None, Status(
                Code.INVALID_ARGUMENT,
                "input {} ({}) shape {} does not fit the model's {}".format(
                    i, spec["name"], list(data.shape), dims
                ),
            )
        rng = spec.get("dim_range")
        if rng and not all(lo <= s <= hi for lo, s, hi in zip(rng["min"], data.shape, rng["max"])):
            return None, Status(
                Code.OUT_OF_RANGE,
                "input {} ({}) shape {} is outside the model's range {} .. {}".format(
                    i, spec["name"], list(data.shape), rng["min"], rng["max"]
                ),
            )
        return data, None

    def enqueue(self, inputs, outputs, queue):
        fault = _fault("enqueue")
        if fault is not None:
            return fault
        if not isinstance(queue, Queue):
            return Status(Code.INVALID_ARGUMENT, "enqueue needs a queue from Device.create_queue()")
        if not isinstance(outputs, list):
            return Status(
                Code.INVALID_ARGUMENT, f"enqueue fills a list of outputs; got {type(outputs).__name__}"
            )
        if len(inputs) != len(self._in):
            return Status(Code.INVALID_ARGUMENT, f"the model has {len(self._in)} input(s), got {len(inputs)}")
        feed = {}
        for i, (spec, tensor) in enumerate(zip(self._in, inputs)):
            data, bad = self._check(i, spec, tensor)
            if bad is not None:
                return bad
            feed[spec["onnx_name"]] = data
        results = [Tensor(t["name"], t["dims"], _BY_NAME[t["dtype"]]) for t in self._out]
        names = [t["onnx_name"] for t in self._out]
        session = self._engine._session

        def run():
            try:
                values = session.run(names, feed)
            except Exception as exc:
                return Status(Code.INTERNAL, f"execution failed: {exc}")
            for tensor, value in zip(results, values):
                tensor._data = value
            return Status.OK()

        queue._put(run)
        outputs[:] = results  # in place: the caller's list now holds this execution's outputs
        return Status.OK()
