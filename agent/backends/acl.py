"""pyACL backend for Ascend ``.om`` models (Atlas 200 DK and friends).

Written against the documented pyACL interface (the call sequence of Ascend/samples
``resnet50_imagenet_classification`` and ``resnet50_async_imagenet_classification``
``acl_net.py``, acllite, the CANN 5.x/6.x pyACL reference; shared/notes/pyacl-and-atlas.md
section 1) and run in the tests against the simulated pyACL of ``deploy/sandbox/ascend`` (which
Huawei's own samples also run against). Not yet run on a real NPU.

What it does:

* ``load``: acl.init -> rt.set_device -> rt.create_context -> rt.create_stream ->
  rt.get_run_mode -> mdl.load_from_file -> mdl.create_desc/get_desc -> input/output
  descriptions -> a pool of input/output datasets in device memory (one slot for synchronous
  use, ``pool_size`` slots for asynchronous use).
* Contexts are per thread in ACL: every entry point (run, submit, drain, close) binds the
  backend's context to the calling thread first (``rt.set_context``, once per thread).
* ``run``: copy in (``rt.memcpy``), ``mdl.execute``, copy out; synchronous.
* ``submit``/``drain`` with ``async_mode=True``: like seed 000's async sample, each batch is
  copied into a free pool slot and started with ``mdl.execute_async`` on the stream; every
  ``callback_interval`` executions one ``rt.launch_callback`` (ACL_CALLBACK_BLOCK) is queued, and
  the callback, run by a report thread (``util.start_thread`` + ``rt.subscribe_report`` + a
  ``rt.process_report`` loop), reads those outputs, hands them to their ``done`` functions and
  frees the slots. When every slot is in flight, submit waits for a launched callback to free
  some, or, when none is on its way, launches the pending executions' callback at once, so any
  pool size works (a callback holds the stream while it runs: each should carry
  ``callback_interval`` executions, not fewer). If ``launch_callback`` fails, the stream is
  synchronised and those batches are delivered from the calling thread (nothing is dropped).
  ``drain`` waits with a deadline and fails at once if the report thread died.
* Outputs are copied once, device -> a fresh host buffer (``bytes_to_ptr`` when
  ``dir(acl.util)`` has it, CANN >= 6.0; else ``numpy_to_ptr``, the probe the samples use), with
  DEVICE_TO_DEVICE on the board (ACL_DEVICE, as acllite does) and DEVICE_TO_HOST on a host.
* Dynamic batch (``--dynamic_batch_size``): the extra ``ascend_mbatch_shape_data`` input is
  recognised; the backend runs at one gear (the smallest >= ``batch``, else the largest) and
  calls ``mdl.set_dynamic_batch_size`` before each execution.
* ``close``: unsubscribe and stop the report thread, then mdl.unload -> mdl.destroy_desc ->
  data buffers, device memory, datasets -> rt.destroy_stream -> rt.destroy_context ->
  rt.reset_device -> acl.finalize (the samples' order). ``acl.init`` is once per process: when it
  answered ACL_ERROR_REPEAT_INITIALIZE someone else owns the runtime, and close does not finalize
  it. Idempotent, and safe after a failed load.
"""

import queue
import threading
import time

from .base import Backend, BackendError, TensorSpec, guess_layout

NAME = "acl"
# backend_options: async mode (seed 000's execute_async + callbacks), executions per launched
# callback, device buffer sets in flight, device id.
OPTIONS = {"async": bool, "callback_interval": int, "buffers": int, "device": int}

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_THREAD_NOT_SUBSCRIBE = 100035
ACL_ERROR_WAIT_CALLBACK_TIMEOUT = 100036
ACL_DEVICE, ACL_HOST = 0, 1
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_CALLBACK_BLOCK = 1
MBATCH_INPUT = "ascend_mbatch_shape_data"
NPY_TYPES = {
    "bool": 0, "int8": 1, "uint8": 2, "int16": 3, "uint16": 4, "int32": 5, "uint32": 6, "int64": 7,
    "uint64": 8, "float32": 11, "float64": 12, "float16": 23,
}  # fmt: skip
# aclDataType -> numpy dtype name (acl_base.h; acllite constants.py)
ACL_DTYPES = {
    0: "float32", 1: "float16", 2: "int8", 3: "int32", 4: "uint8", 6: "int16", 7: "uint16",
    8: "uint32", 9: "int64", 10: "uint64", 11: "float64", 12: "bool",
}  # fmt: skip
ACL_FORMATS = {0: "NCHW", 1: "NHWC"}
ERROR_NAMES = {
    100000: "ACL_ERROR_INVALID_PARAM", 100001: "ACL_ERROR_UNINITIALIZE", 100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100003: "ACL_ERROR_INVALID_FILE", 100011: "ACL_ERROR_INVALID_MODEL_ID", 100012: "ACL_ERROR_DESERIALIZE_MODEL",
    100013: "ACL_ERROR_PARSE_MODEL", 100017: "ACL_ERROR_MODEL_INPUT_NOT_MATCH",
    100018: "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH", 100019: "ACL_ERROR_MODEL_NOT_DYNAMIC",
    100033: "ACL_ERROR_REPEAT_SUBSCRIBE", 100034: "ACL_ERROR_STREAM_NOT_SUBSCRIBE",
    100035: "ACL_ERROR_THREAD_NOT_SUBSCRIBE", 100036: "ACL_ERROR_WAIT_CALLBACK_TIMEOUT",
    100037: "ACL_ERROR_REPEAT_FINALIZE", 200000: "ACL_ERROR_BAD_ALLOC", 200002: "ACL_ERROR_INVALID_DEVICE",
    107000: "ACL_ERROR_RT_PARAM_INVALID", 107001: "ACL_ERROR_RT_INVALID_DEVICEID",
    107002: "ACL_ERROR_RT_CONTEXT_NULL", 107003: "ACL_ERROR_RT_STREAM_CONTEXT",
    107004: "ACL_ERROR_RT_MODEL_CONTEXT", 107011: "ACL_ERROR_RT_STREAM_SUBSCRIBE",
    107012: "ACL_ERROR_RT_THREAD_SUBSCRIBE", 107015: "ACL_ERROR_RT_STREAM_NO_CB_REG",
    107017: "ACL_ERROR_RT_INVALID_HANDLE", 107019: "ACL_ERROR_RT_WAIT_TIMEOUT", 107020: "ACL_ERROR_RT_TASK_TIMEOUT",
    207000: "ACL_ERROR_RT_FEATURE_NOT_SUPPORT", 207001: "ACL_ERROR_RT_MEMORY_ALLOCATION",
    207002: "ACL_ERROR_RT_MEMORY_FREE", 207004: "ACL_ERROR_RT_NO_DEVICE", 207008: "ACL_ERROR_RT_NO_STREAM_RESOURCE",
    207018: "ACL_ERROR_RT_DEVICE_OOM", 500002: "ACL_ERROR_GE_FAILURE", 500003: "ACL_ERROR_RT_FAILURE",
    507000: "ACL_ERROR_RT_INTERNAL_ERROR", 507001: "ACL_ERROR_RT_TS_ERROR", 507004: "ACL_ERROR_RT_STREAM_NOT_COMPLETE",
    507008: "ACL_ERROR_RT_SOC_VERSION", 507010: "ACL_ERROR_RT_LOST_HEARTBEAT", 507011: "ACL_ERROR_RT_MODEL_EXECUTE",
    507012: "ACL_ERROR_RT_REPORT_TIMEOUT", 507013: "ACL_ERROR_RT_SYS_DMA", 507014: "ACL_ERROR_RT_AICORE_TIMEOUT",
    507015: "ACL_ERROR_RT_AICORE_EXCEPTION", 507033: "ACL_ERROR_RT_DEV_SETUP_ERROR",
    507046: "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT", 507899: "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
}  # fmt: skip


def _check(what, ret):
    if ret != ACL_SUCCESS:
        name = ERROR_NAMES.get(ret, "")
        raise BackendError("{} failed: ret={}{}".format(what, ret, f" ({name})" if name else ""))


class _Slot:
    """One input dataset + one output dataset in device memory (a memory-pool entry)."""

    __slots__ = ("in_ptrs", "in_bufs", "in_ds", "out_ptrs", "out_bufs", "out_ds")

    def __init__(self):
        self.in_ptrs, self.in_bufs, self.in_ds = [], [], None
        self.out_ptrs, self.out_bufs, self.out_ds = [], [], None


class AclBackend(Backend):
    name = NAME

    def __init__(
        self,
        device_id=0,
        async_mode=False,
        callback_interval=1,
        pool_size=None,
        config_path=None,
        report_timeout_ms=50,
        acl_module=None,
        threads=0,
        batch=None,
        drain_timeout_s=120.0,
    ):
        """``acl_module``: the pyACL module (default: ``import acl`` at load); tests pass another.
        ``pool_size``: device buffer sets in flight (async; default 2 x callback_interval + 1).
        ``batch``: the preferred gear of a dynamic-batch model (default: its largest).
        ``drain_timeout_s``: how long drain waits for in-flight batches before failing.
        ``threads`` is accepted for interface symmetry and ignored (the NPU does the work)."""
        Backend.__init__(self)
        self.device_id = int(device_id)
        self.async_mode = bool(async_mode)
        self.callback_interval = max(1, int(callback_interval))
        self.pool_size = max(1, int(pool_size or 2 * self.callback_interval + 1))
        self.config_path = config_path
        self.report_timeout_ms = int(report_timeout_ms)
        self.drain_timeout_s = float(drain_timeout_s)
        self.preferred_batch = int(batch) if batch else None
        self.acl = acl_module
        self.context = self.stream = self.desc = None
        self.model_id = None
        self.run_mode = None
        self._initialised = self._device_set = False
        self._in_sizes, self._out_sizes = [], []
        self._gear = None  # the dynamic batch this backend runs at, or None
        self._mbatch_index = None
        self._slots = []
        self._free = queue.Queue()
        self._pending = []  # (slot index, tag, done) submitted, callback not yet launched
        self._inflight = 0
        self._cond = threading.Condition()
        self._bound = threading.local()
        self._tid = None
        self._exit = False
        self._report_error = None
        self._callback_error = None
        self.launch_failures = []  # launch_callback failures recovered from (batches delivered inline)
        self._closed = False
        self._use_bytes = None  # pointer API probe (_bytes_api)

    @classmethod
    def from_job(cls, job, **options):
        opts = job.backend_options or {}
        options.setdefault("async_mode", bool(opts.get("async", False)))
        options.setdefault("callback_interval", opts.get("callback_interval", 1))
        options.setdefault("pool_size", opts.get("buffers") or None)
        options.setdefault("device_id", opts.get("device", 0))
        options.setdefault("batch", job.batch)  # the gear of a dynamic-batch model
        return cls(**options)

    # --- loading -----------------------------------------------------------------------------
    def _module(self):
        if self.acl is None:
            try:
                import acl
            except ImportError as exc:
                raise BackendError(
                    f"pyACL (import acl) is not available: source the CANN set_env.sh first ({exc})"
                ) from exc
            self.acl = acl
        return self.acl

    def load(self, model_path):
        acl = self._module()
        try:
            ret = acl.init(self.config_path) if self.config_path else acl.init()
            if ret != ACL_ERROR_REPEAT_INITIALIZE:  # 100002: another part of this process owns acl
                _check("acl.init", ret)
                self._initialised = True
            _check("acl.rt.set_device", acl.rt.set_device(self.device_id))
            self._device_set = True
            # Keep a handle only once its call succeeded, so teardown never releases a bogus one.
            context, ret = acl.rt.create_context(self.device_id)
            _check("acl.rt.create_context", ret)
            self.context = context
            self._bound.context = context  # create_context made it current in this thread
            stream, ret = acl.rt.create_stream()
            _check("acl.rt.create_stream", ret)
            self.stream = stream
            self.run_mode, ret = acl.rt.get_run_mode()
            _check("acl.rt.get_run_mode", ret)
            model_id, ret = acl.mdl.load_from_file(model_path)
            _check(f"acl.mdl.load_from_file({model_path})", ret)
            self.model_id = model_id
            self.desc = acl.mdl.create_desc()
            if self.desc is None:
                raise BackendError("acl.mdl.create_desc returned nothing")
            _check("acl.mdl.get_desc", acl.mdl.get_desc(self.desc, self.model_id))
            self._describe()
            for _ in range(self.pool_size if self.async_mode else 1):
                self._add_slot()
        except Exception:
            self.close()
            raise
        return self

    def _bind(self):
        """Make the backend's context current in the calling thread (ACL contexts are per thread)."""
        if getattr(self._bound, "context", None) != self.context:
            _check("acl.rt.set_context", self.acl.rt.set_context(self.context))
            self._bound.context = self.context

    def _dynamic_batch(self, acl, desc, n_in):
        """Find ``ascend_mbatch_shape_data``; choose the gear. Returns the data inputs' indices."""
        index, ret = _pair(_optional(acl.mdl, "get_input_index_by_name", desc, MBATCH_INPUT))
        if ret != ACL_SUCCESS or index is None:
            return list(range(n_in))
        info, ret = acl.mdl.get_dynamic_batch(desc)
        _check("acl.mdl.get_dynamic_batch", ret)
        gears = sorted(int(g) for g in info.get("batch", [])[: info.get("batchCount", 0)])
        if not gears:
            raise BackendError(f"the model has a {MBATCH_INPUT} input but no batch gears")
        wanted = self.preferred_batch or gears[-1]
        self._gear = next((g for g in gears if g >= wanted), gears[-1])
        self._mbatch_index = index
        return [i for i in range(n_in) if i != index]

    def _describe(self):
        import numpy as np

        acl, desc = self.acl, self.desc
        self.inputs, self.outputs = [], []
        n_in = acl.mdl.get_num_inputs(desc)
        n_out = acl.mdl.get_num_outputs(desc)
        data_inputs = self._dynamic_batch(acl, desc, n_in)
        if len(data_inputs) != 1:
            raise BackendError(
                f"expected a model with one image input, it has {len(data_inputs)} (of {n_in} inputs)"
            )
        for i in range(n_in):
            size = acl.mdl.get_input_size_by_index(desc, i)
            self._in_sizes.append(size)
            if i == self._mbatch_index:
                continue
            dims, ret = acl.mdl.get_input_dims(desc, i)
            _check("acl.mdl.get_input_dims", ret)
            shape = tuple(int(d) for d in dims["dims"])
            if self._gear and shape and shape[0] == -1:
                shape = (self._gear,) + shape[1:]
            if any(d < 0 for d in shape):
                raise BackendError(
                    f"input {i} has dynamic dims {shape}: convert the model with a fixed --input_shape "
                    "(or --dynamic_batch_size)"
                )
            dtype = _dtype(acl.mdl.get_input_data_type(desc, i), f"input {i}")
            self._check_input_size(i, shape, dtype, size)
            layout = ACL_FORMATS.get(_optional(acl.mdl, "get_input_format", desc, i)) or guess_layout(shape)
            name = _optional(acl.mdl, "get_input_name_by_index", desc, i) or f"input{i}"
            self.inputs.append(TensorSpec(name, shape, dtype, layout))
        for i in range(n_out):
            dims, ret = acl.mdl.get_output_dims(desc, i)
            _check("acl.mdl.get_output_dims", ret)
            shape = tuple(int(d) for d in dims["dims"])
            dtype = _dtype(acl.mdl.get_output_data_type(desc, i), f"output {i}")
            if self._gear and shape:  # batch-major outputs: read the chosen gear's rows
                shape = (self._gear,) + shape[1:]
            name = _optional(acl.mdl, "get_output_name_by_index", desc, i) or f"output{i}"
            self.outputs.append(TensorSpec(name, shape, dtype))
            size = acl.mdl.get_output_size_by_index(desc, i)
            self._out_sizes.append(size if not self._gear else int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self._data_index = data_inputs[0]
        spec = self.inputs[0]
        self._copy_size = int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize

    def _check_input_size(self, i, shape, dtype, size):
        import numpy as np

        need = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self._gear:
            need_max = size  # buffers hold the largest gear; the chosen gear must fit
            if need > need_max:
                raise BackendError(
                    f"input {i}: gear {self._gear} needs {need} bytes, the model reports {size}"
                )
            return
        if size == need:
            return
        if dtype == "uint8" and len(shape) == 4 and shape[3] == 3 and size * 2 == need:
            raise BackendError(
                f"input {i} is a YUV420SP_U8 (NV12) AIPP input ({size} bytes for {shape}): the agent feeds RGB "
                "images; convert the model with an RGB888_U8 AIPP config (deploy model convert --aipp ...)"
            )
        raise BackendError(f"input {i} is {size} bytes, but shape {shape} {dtype} needs {need}")

    def _malloc(self, size):
        ptr, ret = self.acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
        _check(f"acl.rt.malloc({size})", ret)
        return ptr

    def _fill(self, ds, ptrs, sizes, bufs):
        """Wrap each pointer in a data buffer and add it to ``ds``. Every buffer is recorded in
        ``bufs`` as soon as it exists, so close() releases it even when adding it failed."""
        acl = self.acl
        for ptr, size in zip(ptrs, sizes):
            buf = acl.create_data_buffer(ptr, size)
            if not buf:
                raise BackendError(f"acl.create_data_buffer({size}) failed")
            bufs.append(buf)
            _, ret = acl.mdl.add_dataset_buffer(ds, buf)
            _check("acl.mdl.add_dataset_buffer", ret)

    def _add_slot(self):
        slot = _Slot()
        self._slots.append(slot)
        for size in self._in_sizes:
            slot.in_ptrs.append(self._malloc(size))
        slot.in_ds = self.acl.mdl.create_dataset()
        self._fill(slot.in_ds, slot.in_ptrs, self._in_sizes, slot.in_bufs)
        for size in self._out_sizes:
            slot.out_ptrs.append(self._malloc(size))
        slot.out_ds = self.acl.mdl.create_dataset()
        self._fill(slot.out_ds, slot.out_ptrs, self._out_sizes, slot.out_bufs)
        self._free.put(len(self._slots) - 1)

    # --- data movement -----------------------------------------------------------------------
    def _bytes_api(self):
        """Whether pyACL has bytes_to_ptr (CANN >= 6.0), by the samples' probe, made once."""
        if self._use_bytes is None:
            self._use_bytes = "bytes_to_ptr" in dir(self.acl.util)
        return self._use_bytes

    def _host_ptr(self, arr):
        """(pointer, keep-alive object) of a C-contiguous array's bytes, with the samples' probe."""
        if self._bytes_api():
            data = arr.tobytes()
            return self.acl.util.bytes_to_ptr(data), data
        return self.acl.util.numpy_to_ptr(arr), arr

    def _copy_in(self, slot, batch):
        import numpy as np

        acl = self.acl
        spec = self.inputs[0]
        src = np.asarray(batch)
        if src.dtype != np.dtype(spec.dtype) and not np.can_cast(src.dtype, spec.dtype, casting="same_kind"):
            raise BackendError(
                f"input batch is {src.dtype}, the model wants {spec.dtype}: refusing to convert"
            )
        arr = np.ascontiguousarray(src, dtype=spec.dtype)
        size = self._copy_size
        if arr.nbytes != size:
            raise BackendError(
                f"input batch is {arr.nbytes} bytes ({arr.shape}), the model wants {size} ({spec.shape})"
            )
        kind = ACL_MEMCPY_HOST_TO_DEVICE if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        ptr, keep = self._host_ptr(arr)
        index = self._data_index
        _check(
            "acl.rt.memcpy (input)",
            acl.rt.memcpy(slot.in_ptrs[index], self._in_sizes[index], ptr, size, kind),
        )
        del keep  # had to stay alive until memcpy returned
        if self._gear:
            _check(
                "acl.mdl.set_dynamic_batch_size",
                acl.mdl.set_dynamic_batch_size(self.model_id, slot.in_ds, self._mbatch_index, self._gear),
            )

    def _copy_out(self, index):
        """Each output copied once, from device memory into a new host array."""
        import numpy as np

        slot = self._slots[index]
        kind = ACL_MEMCPY_DEVICE_TO_HOST if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        use_bytes = self._bytes_api()
        outs = []
        for i, spec in enumerate(self.outputs):
            size = self._out_sizes[i]
            dtype = np.dtype(spec.dtype)
            if use_bytes:
                host = bytes(size)  # a fresh object: the copy lands in it
                ptr = self.acl.util.bytes_to_ptr(host)
            else:
                host = np.empty(size // dtype.itemsize, dtype=dtype)
                ptr = self.acl.util.numpy_to_ptr(host)
            _check(f"acl.rt.memcpy (output {i})", self.acl.rt.memcpy(ptr, size, slot.out_ptrs[i], size, kind))
            arr = np.frombuffer(host, dtype=dtype) if use_bytes else host
            outs.append(arr.reshape(spec.shape) if int(np.prod(spec.shape)) == arr.size else arr)
        return outs

    # --- synchronous -------------------------------------------------------------------------
    def run(self, batch):
        if self.model_id is None:
            raise BackendError("model not loaded")
        if self.async_mode:
            box = {}

            def done(tag, outs, err):
                box["outs"], box["err"] = outs, err

            self.submit(batch, None, done)
            self.drain()
            if box.get("err") is not None:
                raise BackendError(str(box["err"]))
            return box["outs"]
        self._bind()
        slot = self._slots[0]
        self._copy_in(slot, batch)
        _check("acl.mdl.execute", self.acl.mdl.execute(self.model_id, slot.in_ds, slot.out_ds))
        return self._copy_out(0)

    # --- asynchronous ------------------------------------------------------------------------
    def submit(self, batch, tag, done):
        if not self.async_mode:
            return Backend.submit(self, batch, tag, done)
        if self.model_id is None:
            raise BackendError("model not loaded")
        self._bind()
        if self._tid is None:
            self._start_reporting()
        index = self._take_slot()
        try:
            self._copy_in(self._slots[index], batch)
            slot = self._slots[index]
            _check(
                "acl.mdl.execute_async",
                self.acl.mdl.execute_async(self.model_id, slot.in_ds, slot.out_ds, self.stream),
            )
        except Exception as exc:
            self._free.put(index)
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
        try:
            return self._free.get_nowait()
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
                return self._free.get(timeout=0.2)
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
                    outs = self._copy_out(index)
                except Exception as exc:
                    err = exc
            try:
                done(tag, outs, err)
            except Exception as exc:  # never let a consumer bug kill the report thread
                self._callback_error = exc
            finally:
                self._free.put(index)
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()

    def _report_loop(self, args):
        context, timeout_ms = args
        try:
            _check("acl.rt.set_context (report thread)", self.acl.rt.set_context(context))
            while not self._exit:
                ret = self.acl.rt.process_report(timeout_ms)
                if ret not in (ACL_SUCCESS, ACL_ERROR_WAIT_CALLBACK_TIMEOUT, ACL_ERROR_THREAD_NOT_SUBSCRIBE):
                    _check("acl.rt.process_report", ret)
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
        _check("acl.util.start_thread", ret)
        _check("acl.rt.subscribe_report", acl.rt.subscribe_report(self._tid, self.stream))

    def drain(self):
        """Wait until every submitted batch was delivered; fails after ``drain_timeout_s`` or at
        once when the report thread died (its batches can then never be delivered)."""
        if not self.async_mode or self._tid is None:
            return None
        self._bind()
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
        _check("acl.rt.synchronize_stream", self.acl.rt.synchronize_stream(self.stream))
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise BackendError(f"result callback failed: {err}")
        return None

    def _stop_reporting(self, errors):
        acl = self.acl
        if self._tid is None:
            return
        if self._report_error is None:  # a dead report thread would leave synchronize waiting forever
            _collect(errors, "acl.rt.synchronize_stream", lambda: acl.rt.synchronize_stream(self.stream))
        _collect(
            errors, "acl.rt.unsubscribe_report", lambda: acl.rt.unsubscribe_report(self._tid, self.stream)
        )
        self._exit = True
        _collect(errors, "acl.util.stop_thread", lambda: acl.util.stop_thread(self._tid))
        self._tid = None

    # --- teardown ----------------------------------------------------------------------------
    def close(self):
        """Release everything in the documented order; keeps going past failures, then reports them."""
        if self._closed or self.acl is None:
            return
        self._closed = True
        acl = self.acl
        errors = []
        if self.context is not None and getattr(self._bound, "context", None) != self.context:
            _collect(errors, "acl.rt.set_context", lambda: acl.rt.set_context(self.context))
        self._stop_reporting(errors)
        if self.model_id is not None:
            _collect(errors, "acl.mdl.unload", lambda: acl.mdl.unload(self.model_id))
            self.model_id = None
        if self.desc is not None:
            _collect(errors, "acl.mdl.destroy_desc", lambda: acl.mdl.destroy_desc(self.desc))
            self.desc = None
        for slot in self._slots:
            for ds, bufs, ptrs in (
                (slot.in_ds, slot.in_bufs, slot.in_ptrs),
                (slot.out_ds, slot.out_bufs, slot.out_ptrs),
            ):
                for buf in bufs:
                    _collect(errors, "acl.destroy_data_buffer", lambda b=buf: acl.destroy_data_buffer(b))
                for ptr in ptrs:
                    _collect(errors, "acl.rt.free", lambda p=ptr: acl.rt.free(p))
                if ds is not None:
                    _collect(errors, "acl.mdl.destroy_dataset", lambda d=ds: acl.mdl.destroy_dataset(d))
        self._slots = []
        if self.stream is not None:
            _collect(errors, "acl.rt.destroy_stream", lambda: acl.rt.destroy_stream(self.stream))
            self.stream = None
        if self.context is not None:
            _collect(errors, "acl.rt.destroy_context", lambda: acl.rt.destroy_context(self.context))
            self.context = None
        if self._device_set:
            _collect(errors, "acl.rt.reset_device", lambda: acl.rt.reset_device(self.device_id))
            self._device_set = False
        if self._initialised:  # only the caller whose acl.init succeeded finalizes
            _collect(errors, "acl.finalize", acl.finalize)
            self._initialised = False
        if errors:
            raise BackendError("teardown: " + "; ".join(errors))


def _dtype(code, what):
    """numpy dtype name of an aclDataType; a clear error for one the agent cannot handle."""
    try:
        return ACL_DTYPES[code]
    except (KeyError, TypeError):
        raise BackendError(f"{what} has aclDataType {code!r}, which the agent does not support") from None


def _pair(result):
    """(value, ret) from a call that returns a pair, or (None, -1) when it returned nothing."""
    if isinstance(result, tuple) and len(result) == 2:
        return result
    return None, -1


def _optional(namespace, fn, *args):
    """Call an accessor that older pyACL versions may lack; None when absent or failing."""
    f = getattr(namespace, fn, None)
    if f is None:
        return None
    try:
        return f(*args)
    except Exception:
        return None


def _collect(errors, what, call):
    try:
        ret = call()
    except Exception as exc:
        errors.append(f"{what} raised {exc}")
        return
    if isinstance(ret, tuple):  # a few calls return (value, ret)
        ret = ret[-1]
    if ret not in (None, ACL_SUCCESS):
        name = ERROR_NAMES.get(ret, "")
        errors.append(f"{what} ret={ret}{' (' + name + ')' if name else ''}")


BACKEND = AclBackend
