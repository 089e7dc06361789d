"""MagicMind backend for Cambricon MLU370-class hosts (seed 003: ``infer_python``).

Written against the call sequence of Cambricon's ModelZoo clients (magicmind_cloud v1.7
``resnext50_caffe/infer_python/infer.py`` and ``python_common/mm_runner.py``; shared/notes/
magicmind.md section 1) and run in the tests against the simulated runtime of
``deploy/sandbox/cambricon`` (which those clients also run against). Not yet run on a real MLU.

* ``load``: ``mm.System`` (device count, so a bad ``device`` id is named with the count) ->
  ``mm.Device`` + ``active()`` -> ``mm.Model().deserialize_from_file`` -> ``create_i_engine``
  (EngineConfig device_type MLU) -> ``create_i_context`` -> ``dev.create_queue`` ->
  ``context.create_inputs``. Everything lives on after the ``with mm.System()`` block, as in
  MMRunner.
* Every action's ``mm.Status`` is checked: a failure is a BackendError naming the call and the
  status (``enqueue failed: INTERNAL: ...``); creators that return None likewise.
* ``run``: ``inputs[0].from_numpy(batch)``, ``to(dev)``, ``context.enqueue(inputs, outputs,
  queue)`` on one output list kept for the backend's life (enqueue fills it in place), then
  ``queue.sync()`` and ``asnumpy()`` (copied, so a later execution never changes a result).
* Inputs: a model built with the preprocessing inside (``insert_bn_before_firstnode``, as seed
  003's is) takes UINT8 NHWC: its spec says so and the agent feeds raw pixels. Float NHWC/NCHW
  models get the app's normalisation on the host.
* Batching: a ``graph_shape_mutable`` model has a -1 batch axis, so any batch the job asks for
  runs as is (the input shape comes from the array); a static model's batch is fixed.
* Teardown has no destroy calls in Python: ``close`` drops the references in MMRunner's order
  (inputs, context, engine, model, queue, device). Idempotent.

Python 3.7; ``magicmind`` is imported at load and numpy at run, so importing this module (job
validation reads ``OPTIONS``) needs neither.
"""

from .base import Backend, BackendError, TensorSpec, guess_layout, import_runtime

NAME = "magicmind"
OPTIONS = {"device": int}  # backend_options: the MLU device id (mm.Device().id)

_DTYPES = {
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "UINT8": "uint8",
    "UINT16": "uint16", "UINT32": "uint32", "FLOAT16": "float16", "FLOAT32": "float32", "FLOAT": "float32",
    "BOOL": "bool", "QINT8": "int8", "QINT16": "int16",
}  # fmt: skip


def _check(what, status):
    if status is None or not status.ok():
        raise BackendError(f"{what} failed: {status}")


def _dtype(data_type, what):
    name = getattr(data_type, "name", None) or str(data_type).split(".")[-1]
    if name not in _DTYPES:
        raise BackendError(f"{what} has data type {data_type}, which the agent does not feed")
    return _DTYPES[name]


class MagicMindBackend(Backend):
    name = NAME

    def __init__(self, device_id=0, mm_module=None, threads=0, batch=None):
        """``mm_module``: the runtime module (default: ``import magicmind.python.runtime``); tests pass
        another. ``threads`` and ``batch`` are accepted for interface symmetry (the MLU does the work;
        a mutable model runs the batch it is given)."""
        Backend.__init__(self)
        self.device_id = int(device_id)
        self.mm = mm_module
        self.model = self.engine = self.context = self.queue = self.dev = None
        self._inputs = None
        self._outputs = []

    @classmethod
    def from_job(cls, job, **options):
        options.setdefault("device_id", (job.backend_options or {}).get("device", 0))
        return cls(**options)

    def _module(self):
        if self.mm is None:
            self.mm = import_runtime(
                "magicmind.python.runtime",
                "MagicMind (import magicmind.python.runtime) is not available: source the Neuware env first ({exc})",
            )
        return self.mm

    def load(self, model_path):
        mm = self._module()
        try:
            with mm.System() as system:
                count = system.device_count()
                if not 0 <= self.device_id < count:
                    raise BackendError(f"MLU device {self.device_id} does not exist (this host has {count})")
                dev = mm.Device()
                dev.id = self.device_id
                _check(f"Device({self.device_id}).active", dev.active())
                self.dev = dev
                model = mm.Model()
                _check(f"deserialize_from_file({model_path})", model.deserialize_from_file(model_path))
                self.model = model
                config = mm.Model.EngineConfig()
                config.device_type = "MLU"
                self.engine = model.create_i_engine(config)
                if self.engine is None:
                    raise BackendError(f"create_i_engine returned None for {model_path}")
                self.context = self.engine.create_i_context()
                if self.context is None:
                    raise BackendError("create_i_context returned None")
                self.queue = dev.create_queue()
                if self.queue is None:
                    raise BackendError(f"create_queue returned None on MLU {self.device_id}")
                self._inputs = self.context.create_inputs()
            self._describe()
        except Exception:
            self.close()
            raise
        return self

    def _describe(self):
        model = self.model
        n_in = model.get_input_num()
        if n_in != 1:
            raise BackendError(f"expected a model with one image input, it has {n_in}")
        dims = [int(d) for d in model.get_input_dimensions()[0].GetDims()]
        dtype = _dtype(model.get_input_data_types()[0], "input 0")
        shape = tuple(None if d < 0 else d for d in dims)
        layout = guess_layout(tuple(d if d >= 0 else 0 for d in dims))
        self.inputs = [TensorSpec(model.get_input_names()[0], shape, dtype, layout)]
        out_dims = model.get_output_dimensions() if hasattr(model, "get_output_dimensions") else []
        self.outputs = []
        for i, (name, dt) in enumerate(zip(model.get_output_names(), model.get_output_data_types())):
            d = [int(x) for x in out_dims[i].GetDims()] if i < len(out_dims) else []
            self.outputs.append(
                TensorSpec(name, tuple(None if x < 0 else x for x in d), _dtype(dt, f"output {i}"))
            )

    def run(self, batch):
        import numpy as np

        if self.context is None:
            raise BackendError("model not loaded")
        spec = self.inputs[0]
        if batch.dtype != np.dtype(spec.dtype):
            raise BackendError(f"input is {spec.dtype}, the batch is {batch.dtype}")
        tensor = self._inputs[0]
        _check("from_numpy", tensor.from_numpy(np.ascontiguousarray(batch)))
        _check("to(MLU)", tensor.to(self.dev))
        _check("enqueue", self.context.enqueue(self._inputs, self._outputs, self.queue))
        _check("queue.sync", self.queue.sync())
        return [np.array(t.asnumpy(), copy=True) for t in self._outputs]

    def close(self):
        # MMRunner.__del__'s order; the Python runtime has no destroy calls.
        self._inputs = None
        self._outputs = []
        self.context = None
        self.engine = None
        self.model = None
        self.queue = None
        self.dev = None


BACKEND = MagicMindBackend
