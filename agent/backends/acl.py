"""pyACL backend for Ascend ``.om`` models (Atlas 200 DK and friends).

UNVERIFIED ON HARDWARE. This file is written against the documented pyACL interface (the
call sequence of Ascend/samples ``resnet50_imagenet_classification`` and
``resnet50_async_imagenet_classification`` ``acl_net.py``, acllite, and the CANN 5.x/6.x
pyACL reference; see shared/notes/pyacl-and-atlas.md section 1). No NPU was available: the
tests drive it with a recording fake ``acl`` module that checks call order, return-code
handling, buffer sizes and teardown order, not with the real runtime. Treat the first run on
a board as its real test.

What it does:

* ``load``: acl.init -> rt.set_device -> rt.create_context -> rt.create_stream ->
  rt.get_run_mode -> mdl.load_from_file -> mdl.create_desc/get_desc -> input/output
  descriptions -> a pool of input/output datasets in device memory (one slot for
  synchronous use, ``pool_size`` slots for asynchronous use).
* ``run``: copy in (``rt.memcpy``), ``mdl.execute``, copy out; synchronous.
* ``submit``/``drain`` with ``async_mode=True``: like the async C++/Python sample, each batch
  is copied into a free pool slot and started with ``mdl.execute_async`` on the stream; every
  ``callback_interval`` executions one ``rt.launch_callback`` (ACL_CALLBACK_BLOCK) is queued on
  the stream, and the callback, run by a report thread (``util.start_thread`` +
  ``rt.subscribe_report`` + a ``rt.process_report`` loop), reads those outputs, hands them to
  their ``done`` functions and frees the slots. ``drain`` flushes the last callback and
  synchronises the stream.
* Pointers: ``util.bytes_to_ptr``/``ptr_to_bytes`` when ``dir(acl.util)`` has them (CANN >= 6.0),
  else ``numpy_to_ptr``/``ptr_to_numpy`` (older pyACL), the probe the samples use.
* Run mode: on the board (ACL_DEVICE) the copies are DEVICE_TO_DEVICE and the output staging
  buffers come from ``rt.malloc``; on a host with a card (ACL_HOST) they are
  HOST_TO_DEVICE / DEVICE_TO_HOST with ``rt.malloc_host``, as acllite does.
* ``close``: unsubscribe and stop the report thread, then mdl.unload -> mdl.destroy_desc ->
  data buffers, device memory, datasets -> staging buffers -> rt.destroy_stream ->
  rt.destroy_context -> rt.reset_device -> acl.finalize (the samples' order; everything a
  model uses is released before reset_device). Idempotent, and safe after a failed load.

Only fixed-shape models are supported: a dynamic batch (``--dynamic_batch_size``) ``.om`` is
refused at load, convert it with a fixed ``--input_shape`` instead.
"""

import queue
import threading

import numpy as np

from . import Backend, BackendError, TensorSpec, guess_layout

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_DEVICE, ACL_HOST = 0, 1
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_CALLBACK_BLOCK = 1
NPY_TYPES = {"float32": 11, "float16": 23, "uint8": 2, "int8": 1, "int32": 5, "int64": 7}
# aclDataType -> numpy dtype name
ACL_DTYPES = {
    0: "float32",
    1: "float16",
    2: "int8",
    3: "int32",
    4: "uint8",
    6: "int16",
    9: "int64",
    11: "float64",
}
ACL_FORMATS = {0: "NCHW", 1: "NHWC"}
ERROR_NAMES = {
    100000: "ACL_ERROR_INVALID_PARAM",
    100003: "ACL_ERROR_INVALID_FILE",
    100011: "ACL_ERROR_INVALID_MODEL_ID",
    100013: "ACL_ERROR_PARSE_MODEL",
    200000: "ACL_ERROR_BAD_ALLOC",
    200002: "ACL_ERROR_INVALID_DEVICE",
    500002: "ACL_ERROR_GE_FAILURE",
    500003: "ACL_ERROR_RT_FAILURE",
}


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
    name = "acl"

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
    ):
        """``acl_module``: the pyACL module (default: ``import acl`` at load); tests pass a fake.
        ``threads`` is accepted for interface symmetry and ignored (the NPU does the work)."""
        Backend.__init__(self)
        self.device_id = int(device_id)
        self.async_mode = bool(async_mode)
        self.callback_interval = max(1, int(callback_interval))
        self.pool_size = int(pool_size or 2 * self.callback_interval + 1)
        if self.async_mode and self.pool_size <= self.callback_interval:
            raise BackendError("pool_size must exceed callback_interval, or submit would wait forever")
        self.config_path = config_path
        self.report_timeout_ms = int(report_timeout_ms)
        self.acl = acl_module
        self.context = self.stream = self.desc = None
        self.model_id = None
        self.run_mode = None
        self._initialised = self._device_set = False
        self._in_sizes, self._out_sizes = [], []
        self._slots = []
        self._staging = []  # output staging buffers, one set per slot
        self._free = queue.Queue()
        self._pending = []  # (slot index, tag, done) submitted, callback not yet launched
        self._inflight = 0
        self._cond = threading.Condition()
        self._tid = None
        self._exit = False
        self._callback_error = None
        self._closed = False

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
            if ret not in (ACL_SUCCESS, ACL_ERROR_REPEAT_INITIALIZE):
                _check("acl.init", ret)
            self._initialised = True
            _check("acl.rt.set_device", acl.rt.set_device(self.device_id))
            self._device_set = True
            # Keep a handle only once its call succeeded, so teardown never releases a bogus one.
            context, ret = acl.rt.create_context(self.device_id)
            _check("acl.rt.create_context", ret)
            self.context = context
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

    def _describe(self):
        acl, desc = self.acl, self.desc
        self.inputs, self.outputs = [], []
        n_in = acl.mdl.get_num_inputs(desc)
        n_out = acl.mdl.get_num_outputs(desc)
        if n_in != 1:
            raise BackendError(f"expected a model with one input, it has {n_in}")
        for i in range(n_in):
            dims, ret = acl.mdl.get_input_dims(desc, i)
            _check("acl.mdl.get_input_dims", ret)
            shape = tuple(int(d) for d in dims["dims"])
            if any(d < 0 for d in shape):
                raise BackendError(
                    f"input {i} has dynamic dims {shape}: convert the model with a fixed --input_shape"
                )
            dtype = ACL_DTYPES.get(acl.mdl.get_input_data_type(desc, i), "float32")
            size = acl.mdl.get_input_size_by_index(desc, i)
            if size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise BackendError(f"input {i} is {size} bytes, but shape {shape} {dtype} needs another size")
            layout = ACL_FORMATS.get(_optional(acl.mdl, "get_input_format", desc, i)) or guess_layout(shape)
            name = _optional(acl.mdl, "get_input_name_by_index", desc, i) or f"input{i}"
            self.inputs.append(TensorSpec(name, shape, dtype, layout))
            self._in_sizes.append(size)
        for i in range(n_out):
            dims, ret = acl.mdl.get_output_dims(desc, i)
            _check("acl.mdl.get_output_dims", ret)
            shape = tuple(int(d) for d in dims["dims"])
            dtype = ACL_DTYPES.get(acl.mdl.get_output_data_type(desc, i), "float32")
            name = _optional(acl.mdl, "get_output_name_by_index", desc, i) or f"output{i}"
            self.outputs.append(TensorSpec(name, shape, dtype))
            self._out_sizes.append(acl.mdl.get_output_size_by_index(desc, i))

    def _malloc(self, size):
        ptr, ret = self.acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
        _check(f"acl.rt.malloc({size})", ret)
        return ptr

    def _dataset(self, ptrs, sizes, bufs):
        acl = self.acl
        ds = acl.mdl.create_dataset()
        for ptr, size in zip(ptrs, sizes):
            buf = acl.create_data_buffer(ptr, size)
            if buf is None:
                raise BackendError(f"acl.create_data_buffer({size}) failed")
            bufs.append(buf)
            _, ret = acl.mdl.add_dataset_buffer(ds, buf)
            _check("acl.mdl.add_dataset_buffer", ret)
        return ds

    def _add_slot(self):
        slot = _Slot()
        self._slots.append(slot)
        for size in self._in_sizes:
            slot.in_ptrs.append(self._malloc(size))
        slot.in_ds = self._dataset(slot.in_ptrs, self._in_sizes, slot.in_bufs)
        for size in self._out_sizes:
            slot.out_ptrs.append(self._malloc(size))
        slot.out_ds = self._dataset(slot.out_ptrs, self._out_sizes, slot.out_bufs)
        staging = []
        self._staging.append(staging)
        for size in self._out_sizes:
            if self.run_mode == ACL_HOST:
                ptr, ret = self.acl.rt.malloc_host(size)
                _check(f"acl.rt.malloc_host({size})", ret)
            else:
                ptr = self._malloc(size)
            staging.append(ptr)
        self._free.put(len(self._slots) - 1)

    # --- data movement -----------------------------------------------------------------------
    def _copy_in(self, slot, batch):
        acl = self.acl
        arr = np.ascontiguousarray(batch, dtype=self.inputs[0].dtype)
        size = self._in_sizes[0]
        if arr.nbytes != size:
            raise BackendError(
                f"input batch is {arr.nbytes} bytes ({arr.shape}), the model wants {size} ({self.inputs[0].shape})"
            )
        kind = ACL_MEMCPY_HOST_TO_DEVICE if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        if "bytes_to_ptr" in dir(acl.util):
            data = arr.tobytes()  # must stay alive until memcpy returns
            ptr = acl.util.bytes_to_ptr(data)
        else:
            data = arr
            ptr = acl.util.numpy_to_ptr(arr)
        _check("acl.rt.memcpy (input)", acl.rt.memcpy(slot.in_ptrs[0], size, ptr, size, kind))
        del data

    def _copy_out(self, index):
        acl = self.acl
        slot, staging = self._slots[index], self._staging[index]
        kind = ACL_MEMCPY_DEVICE_TO_HOST if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        use_bytes = "ptr_to_bytes" in dir(acl.util)
        outs = []
        for i, spec in enumerate(self.outputs):
            size = self._out_sizes[i]
            _check(
                f"acl.rt.memcpy (output {i})",
                acl.rt.memcpy(staging[i], size, slot.out_ptrs[i], size, kind),
            )
            dtype = np.dtype(spec.dtype)
            if use_bytes:
                arr = np.frombuffer(acl.util.ptr_to_bytes(staging[i], size), dtype=dtype)
            else:
                n = size // dtype.itemsize
                arr = np.array(acl.util.ptr_to_numpy(staging[i], (n,), NPY_TYPES[spec.dtype]), copy=True)
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
        if self._tid is None:
            self._start_reporting()
        index = self._free.get()  # blocks while every slot is in flight: the pool bounds memory
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

    def _launch(self):
        batch, self._pending = self._pending, []
        if batch:
            _check(
                "acl.rt.launch_callback",
                self.acl.rt.launch_callback(self._callback, batch, ACL_CALLBACK_BLOCK, self.stream),
            )

    def _callback(self, entries):
        """Runs on the report thread: read each finished slot, deliver it, free the slot."""
        for index, tag, done in entries:
            try:
                outs, err = self._copy_out(index), None
            except Exception as exc:
                outs, err = None, exc
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
        self.acl.rt.set_context(context)
        while not self._exit:
            self.acl.rt.process_report(timeout_ms)

    def _start_reporting(self):
        acl = self.acl
        self._exit = False
        self._tid, ret = acl.util.start_thread(self._report_loop, [self.context, self.report_timeout_ms])
        _check("acl.util.start_thread", ret)
        _check("acl.rt.subscribe_report", acl.rt.subscribe_report(self._tid, self.stream))

    def drain(self):
        if not self.async_mode or self._tid is None:
            return None
        self._launch()
        _check("acl.rt.synchronize_stream", self.acl.rt.synchronize_stream(self.stream))
        with self._cond:
            while self._inflight:
                self._cond.wait(1.0)
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise BackendError(f"result callback failed: {err}")
        return None

    def _stop_reporting(self, errors):
        acl = self.acl
        if self._tid is None:
            return
        for what, call in (
            ("acl.rt.synchronize_stream", lambda: acl.rt.synchronize_stream(self.stream)),
            ("acl.rt.unsubscribe_report", lambda: acl.rt.unsubscribe_report(self._tid, self.stream)),
        ):
            _collect(errors, what, call)
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
        for staging in self._staging:
            for ptr in staging:
                if self.run_mode == ACL_HOST:
                    _collect(errors, "acl.rt.free_host", lambda p=ptr: acl.rt.free_host(p))
                else:
                    _collect(errors, "acl.rt.free", lambda p=ptr: acl.rt.free(p))
        self._staging = []
        if self.stream is not None:
            _collect(errors, "acl.rt.destroy_stream", lambda: acl.rt.destroy_stream(self.stream))
            self.stream = None
        if self.context is not None:
            _collect(errors, "acl.rt.destroy_context", lambda: acl.rt.destroy_context(self.context))
            self.context = None
        if self._device_set:
            _collect(errors, "acl.rt.reset_device", lambda: acl.rt.reset_device(self.device_id))
            self._device_set = False
        if self._initialised:
            _collect(errors, "acl.finalize", acl.finalize)
            self._initialised = False
        if errors:
            raise BackendError("teardown: " + "; ".join(errors))


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
        errors.append(f"{what} ret={ret}")
