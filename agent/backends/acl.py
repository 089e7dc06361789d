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
* ``submit``/``drain`` with ``async_mode=True``: seed 000's ``mdl.execute_async`` on the stream,
  a ``rt.launch_callback`` every ``callback_interval`` executions, run by a subscribed report
  thread (acl_async.py).
* Device memory: a pool of input/output datasets, the copies in and out, one copy per output
  (acl_buffers.py); return codes, their names and the data types: acl_codes.py.
* Dynamic batch (``--dynamic_batch_size``): the extra ``ascend_mbatch_shape_data`` input is
  recognised; the backend runs at one gear (the smallest >= ``batch``, else the largest) and
  calls ``mdl.set_dynamic_batch_size`` before each execution.
* ``decode="dvpp"`` (``backend_options.decode: dvpp``): the model's input must be a YUV420SP_U8 AIPP
  input; ``self.dvpp`` (acl_dvpp.DvppDecoder) then decodes JPEGs on DVPP into that picture for the
  agent's preprocessing (agent/yuv.py), and the batches are NV12 pictures.
* ``close``: unsubscribe and stop the report thread, then mdl.unload -> mdl.destroy_desc ->
  data buffers, device memory, datasets -> rt.destroy_stream -> rt.destroy_context ->
  rt.reset_device -> acl.finalize (the samples' order). ``acl.init`` is once per process: when it
  answered ACL_ERROR_REPEAT_INITIALIZE someone else owns the runtime, and close does not finalize
  it. Idempotent, and safe after a failed load.

pyACL is imported at load and numpy when a model is described or a batch copied, so importing this
module (job validation reads ``OPTIONS``) needs neither. Python 3.7 compatible.
"""

import threading

from .acl_async import AsyncRunner
from .acl_buffers import DevicePool, Io, nbytes
from .acl_codes import (
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_FORMATS,
    ACL_SUCCESS,
    MBATCH_INPUT,
    check,
    collect,
    dtype_name,
)
from .acl_dvpp import DvppDecoder
from .base import Backend, BackendError, TensorSpec, guess_layout, import_runtime

NAME = "acl"
# backend_options: async mode (seed 000's execute_async + callbacks), executions per launched
# callback, device buffer sets in flight, device id, where JPEGs are decoded (the host's CPU, or DVPP
# into a YUV420SP AIPP input).
OPTIONS = {"async": bool, "callback_interval": int, "buffers": int, "device": int, "decode": ("cpu", "dvpp")}
DECODES = OPTIONS["decode"]


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
        decode="cpu",
    ):
        """``acl_module``: the pyACL module (default: ``import acl`` at load); tests pass another.
        ``pool_size``: device buffer sets in flight (async; default 2 x callback_interval + 1).
        ``batch``: the preferred gear of a dynamic-batch model (default: its largest).
        ``drain_timeout_s``: how long drain waits for in-flight batches before failing.
        ``decode``: ``cpu`` (the agent decodes, the model takes RGB) or ``dvpp`` (a YUV420SP_U8 AIPP input
        fed by DVPP: ``self.dvpp``).
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
        if decode not in DECODES:
            raise BackendError(f"decode must be one of {', '.join(DECODES)}, not {decode!r}")
        self.decode = decode
        self.dvpp = None  # acl_dvpp.DvppDecoder with decode="dvpp", once loaded
        self.acl = acl_module
        self.context = self.stream = self.desc = None
        self.model_id = None
        self.run_mode = None
        self.io = None  # the model's buffers (acl_buffers.Io), once described
        self.pool = None  # its device memory (acl_buffers.DevicePool), once loaded
        self._async = None  # acl_async.AsyncRunner, from the first asynchronous submit
        self._initialised = self._device_set = False
        self._bound = threading.local()
        self.launch_failures = []  # launch_callback failures recovered from (batches delivered inline)
        self._closed = False

    @classmethod
    def from_job(cls, job, **options):
        opts = job.backend_options or {}
        options.setdefault("async_mode", bool(opts.get("async", False)))
        options.setdefault("callback_interval", opts.get("callback_interval", 1))
        options.setdefault("pool_size", opts.get("buffers") or None)
        options.setdefault("device_id", opts.get("device", 0))
        options.setdefault("batch", job.batch)  # the gear of a dynamic-batch model
        options.setdefault("decode", opts.get("decode", "cpu"))
        return cls(**options)

    # --- loading -----------------------------------------------------------------------------
    def _module(self):
        if self.acl is None:
            self.acl = import_runtime(
                "acl", "pyACL (import acl) is not available: source the CANN set_env.sh first ({exc})"
            )
        return self.acl

    def load(self, model_path):
        acl = self._module()
        try:
            ret = acl.init(self.config_path) if self.config_path else acl.init()
            if ret != ACL_ERROR_REPEAT_INITIALIZE:  # 100002: another part of this process owns acl
                check("acl.init", ret)
                self._initialised = True
            check("acl.rt.set_device", acl.rt.set_device(self.device_id))
            self._device_set = True
            # Keep a handle only once its call succeeded, so teardown never releases a bogus one.
            context, ret = acl.rt.create_context(self.device_id)
            check("acl.rt.create_context", ret)
            self.context = context
            self._bound.context = context  # create_context made it current in this thread
            stream, ret = acl.rt.create_stream()
            check("acl.rt.create_stream", ret)
            self.stream = stream
            self.run_mode, ret = acl.rt.get_run_mode()
            check("acl.rt.get_run_mode", ret)
            model_id, ret = acl.mdl.load_from_file(model_path)
            check(f"acl.mdl.load_from_file({model_path})", ret)
            self.model_id = model_id
            self.desc = acl.mdl.create_desc()
            if self.desc is None:
                raise BackendError("acl.mdl.create_desc returned nothing")
            check("acl.mdl.get_desc", acl.mdl.get_desc(self.desc, self.model_id))
            self._describe()
            self.pool = DevicePool(acl, self.model_id, self.run_mode, self.io)
            for _ in range(self.pool_size if self.async_mode else 1):
                self.pool.add()
            if self.decode == "dvpp":
                _, h, w, _ = self.inputs[0].shape
                self.dvpp = DvppDecoder(acl, self.context, self.run_mode, w, h)
        except Exception:
            self.close()
            raise
        return self

    def _bind(self):
        """Make the backend's context current in the calling thread (ACL contexts are per thread)."""
        if getattr(self._bound, "context", None) != self.context:
            check("acl.rt.set_context", self.acl.rt.set_context(self.context))
            self._bound.context = self.context

    # --- the model's inputs and outputs --------------------------------------------------------
    def _dynamic_batch(self, acl, desc, n_in, io):
        """Find ``ascend_mbatch_shape_data``; choose the gear. Returns the data inputs' indices."""
        index, ret = _pair(_optional(acl.mdl, "get_input_index_by_name", desc, MBATCH_INPUT))
        if ret != ACL_SUCCESS or index is None:
            return list(range(n_in))
        info, ret = acl.mdl.get_dynamic_batch(desc)
        check("acl.mdl.get_dynamic_batch", ret)
        gears = sorted(int(g) for g in info.get("batch", [])[: info.get("batchCount", 0)])
        if not gears:
            raise BackendError(f"the model has a {MBATCH_INPUT} input but no batch gears")
        wanted = self.preferred_batch or gears[-1]
        io.gear = next((g for g in gears if g >= wanted), gears[-1])
        io.mbatch_index = index
        return [i for i in range(n_in) if i != index]

    def _describe(self):
        acl, desc = self.acl, self.desc
        io = self.io = Io()
        self.inputs, self.outputs = [], []
        n_in = acl.mdl.get_num_inputs(desc)
        n_out = acl.mdl.get_num_outputs(desc)
        data_inputs = self._dynamic_batch(acl, desc, n_in, io)
        if len(data_inputs) != 1:
            raise BackendError(
                f"expected a model with one image input, it has {len(data_inputs)} (of {n_in} inputs)"
            )
        for i in range(n_in):
            size = acl.mdl.get_input_size_by_index(desc, i)
            io.in_sizes.append(size)
            if i != io.mbatch_index:
                self.inputs.append(self._describe_input(acl, desc, i, size, io.gear))
        for i in range(n_out):
            self.outputs.append(self._describe_output(acl, desc, i, io))
        io.data_index = data_inputs[0]
        io.input = self.inputs[0]
        io.copy_size = nbytes(io.input.shape, io.input.dtype)
        if self.decode == "dvpp":  # an NV12 picture per image: half the bytes of its (N, H, W, 3) shape
            io.copy_size //= 2
        io.outputs = self.outputs

    def _describe_input(self, acl, desc, i, size, gear):
        dims, ret = acl.mdl.get_input_dims(desc, i)
        check("acl.mdl.get_input_dims", ret)
        shape = tuple(int(d) for d in dims["dims"])
        if gear and shape and shape[0] == -1:
            shape = (gear,) + shape[1:]
        if any(d < 0 for d in shape):
            raise BackendError(
                f"input {i} has dynamic dims {shape}: convert the model with a fixed --input_shape "
                "(or --dynamic_batch_size)"
            )
        dtype = dtype_name(acl.mdl.get_input_data_type(desc, i), f"input {i}")
        _check_input_size(i, shape, dtype, size, gear, self.decode == "dvpp")
        layout = ACL_FORMATS.get(_optional(acl.mdl, "get_input_format", desc, i)) or guess_layout(shape)
        name = _optional(acl.mdl, "get_input_name_by_index", desc, i) or f"input{i}"
        return TensorSpec(name, shape, dtype, layout)

    def _describe_output(self, acl, desc, i, io):
        """Output ``i``'s spec; its buffer size goes to ``io.out_sizes``."""
        dims, ret = acl.mdl.get_output_dims(desc, i)
        check("acl.mdl.get_output_dims", ret)
        shape = tuple(int(d) for d in dims["dims"])
        dtype = dtype_name(acl.mdl.get_output_data_type(desc, i), f"output {i}")
        if io.gear and shape:  # batch-major outputs: read the chosen gear's rows
            shape = (io.gear,) + shape[1:]
        name = _optional(acl.mdl, "get_output_name_by_index", desc, i) or f"output{i}"
        size = acl.mdl.get_output_size_by_index(desc, i)
        io.out_sizes.append(size if not io.gear else nbytes(shape, dtype))
        return TensorSpec(name, shape, dtype)

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
        slot = self.pool.slots[0]
        self.pool.copy_in(0, batch)
        check("acl.mdl.execute", self.acl.mdl.execute(self.model_id, slot.in_ds, slot.out_ds))
        return self.pool.copy_out(0)

    # --- asynchronous (acl_async.py) -----------------------------------------------------------
    def submit(self, batch, tag, done):
        if not self.async_mode:
            return Backend.submit(self, batch, tag, done)
        if self.model_id is None:
            raise BackendError("model not loaded")
        self._bind()
        if self._async is None:
            self._async = AsyncRunner(
                self.acl, self.pool, self.model_id, self.stream, self.context,
                callback_interval=self.callback_interval, report_timeout_ms=self.report_timeout_ms,
                drain_timeout_s=self.drain_timeout_s, launch_failures=self.launch_failures,
            )  # fmt: skip
        return self._async.submit(batch, tag, done)

    def drain(self):
        """Wait until every submitted batch was delivered (see AsyncRunner.drain)."""
        if not self.async_mode or self._async is None or not self._async.reporting:
            return None
        self._bind()
        return self._async.drain()

    def describe(self):
        """The base description, plus where JPEGs were decoded (decode: dvpp: DVPP, and the CPU fallbacks)."""
        out = Backend.describe(self)
        out["decode"] = self.decode
        if self.dvpp is not None:
            out.update(self.dvpp.describe())
        return out

    # --- teardown ----------------------------------------------------------------------------
    def close(self):
        """Release everything in the documented order; keeps going past failures, then reports them."""
        if self._closed or self.acl is None:
            return
        self._closed = True
        acl = self.acl
        errors = []
        if self.context is not None and getattr(self._bound, "context", None) != self.context:
            collect(errors, "acl.rt.set_context", lambda: acl.rt.set_context(self.context))
        if self._async is not None:
            self._async.stop(errors)
        if self.dvpp is not None:
            self.dvpp.release(errors)
            self.dvpp = None
        if self.model_id is not None:
            collect(errors, "acl.mdl.unload", lambda: acl.mdl.unload(self.model_id))
            self.model_id = None
        if self.desc is not None:
            collect(errors, "acl.mdl.destroy_desc", lambda: acl.mdl.destroy_desc(self.desc))
            self.desc = None
        if self.pool is not None:
            self.pool.release(errors)
        if self.stream is not None:
            collect(errors, "acl.rt.destroy_stream", lambda: acl.rt.destroy_stream(self.stream))
            self.stream = None
        if self.context is not None:
            collect(errors, "acl.rt.destroy_context", lambda: acl.rt.destroy_context(self.context))
            self.context = None
        if self._device_set:
            collect(errors, "acl.rt.reset_device", lambda: acl.rt.reset_device(self.device_id))
            self._device_set = False
        if self._initialised:  # only the caller whose acl.init succeeded finalizes
            collect(errors, "acl.finalize", acl.finalize)
            self._initialised = False
        if errors:
            raise BackendError("teardown: " + "; ".join(errors))


def _check_input_size(i, shape, dtype, size, gear, yuv=False):
    """Input ``i``'s buffer (``size`` bytes, as the model reports it) must hold one batch of ``shape``: RGB
    pixels, or with ``yuv`` (decode: dvpp) a YUV420SP_U8 AIPP picture, half their bytes."""
    need = nbytes(shape, dtype)
    if gear:
        need_max = size  # buffers hold the largest gear; the chosen gear must fit
        if need > need_max:
            raise BackendError(
                f"input {i}: gear {gear} needs {need} bytes, the model reports {size}"
            )
        if yuv:
            raise BackendError("decode: dvpp needs a model with a fixed batch (no --dynamic_batch_size)")
        return
    nv12 = dtype == "uint8" and len(shape) == 4 and shape[3] == 3 and size * 2 == need
    if yuv and not nv12:
        raise BackendError(
            f"decode: dvpp needs a model whose input is a YUV420SP_U8 AIPP input, but input {i} is {size} bytes "
            f"of {dtype} {shape} (not YUV420SP): convert it with a YUV420SP_U8 AIPP config "
            "(deploy model convert --aipp app with app.backend_options.decode: dvpp)"
        )
    if yuv and (shape[1] % 2 or shape[2] % 2):
        raise BackendError(f"input {i}: a YUV420SP picture has even sizes, not {shape[2]}x{shape[1]}")
    if size == need or yuv:
        return
    if nv12:
        raise BackendError(
            f"input {i} is a YUV420SP_U8 (NV12) AIPP input ({size} bytes for {shape}): the agent feeds RGB "
            "images; set app.backend_options.decode: dvpp (DVPP feeds it), or convert the model with an "
            "RGB888_U8 AIPP config (deploy model convert --aipp ...)"
        )
    raise BackendError(f"input {i} is {size} bytes, but shape {shape} {dtype} needs {need}")


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


BACKEND = AclBackend
