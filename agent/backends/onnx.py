"""onnxruntime backend, with session options tuned for a small multi-core CPU.

Settings: graph optimisation ENABLE_ALL, SEQUENTIAL execution (classification graphs are
chains), inter-op 1 thread. ``run_async`` and IOBinding are not used: they did not help on CPU.

Threads (``threads=0``, the default, picks at load time from the core count):

* **streams mode** (``threads=0``): one intra-op thread per session run and ``streams`` = cores
  concurrent callers (``InferenceSession.run`` is thread-safe and releases the GIL). The
  pipeline runs one worker per stream, each decoding its own images and running them. Measured
  on 2 cores, EfficientNet-Lite0, batch 1: pure inference 9.2 CPU-ms/image and ~213 img/s with
  2 streams, vs 10.0-10.3 CPU-ms/image and ~185 (spinning off) / ~205 (spinning on) img/s for
  one stream of 2 intra-op threads; and intra-op threads that wait on each other at a barrier
  lose much more when decode threads share the cores (e2e 110 -> 125+ img/s).
* ``threads=N``: N intra-op threads in one stream (the classic setting; the agent's ``bench``
  mode uses it with ``spinning=True``, the best single-stream setting: busy-waiting between
  operators is only a loss when other work wants the cores).
"""

import os

from .base import Backend, BackendError, TensorSpec, guess_layout, import_runtime

NAME = "onnx"
OPTIONS = {}  # no backend_options: the job's ``threads`` and mode configure it

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def _dims(shape):
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class OnnxBackend(Backend):
    name = NAME

    def __init__(self, threads=0, spinning=False, optimize=True, ort_module=None, streams=0):
        """threads: intra-op threads (0 = streams mode: 1 thread x ``streams`` concurrent runs);
        streams: concurrent callers the pipeline may use (0 = cores // threads, at least 1);
        spinning: ORT's busy-wait (off by default)."""
        Backend.__init__(self)
        cores = os.cpu_count() or 1
        threads = int(threads)
        self.threads = threads if threads > 0 else 1
        self.streams = int(streams) if int(streams) > 0 else max(1, cores // self.threads)
        self.spinning = bool(spinning)
        self.optimize = bool(optimize)
        self._ort = ort_module
        self.session = None
        self._in_name = None
        self._out_names = None

    @classmethod
    def from_job(cls, job, **options):
        if job.mode == "bench":
            # Pure inference, one stream (ais_bench style): all cores in one run, busy-waiting
            # between operators (nothing else wants the cores; measured best single-stream).
            options.setdefault("threads", job.threads or (os.cpu_count() or 1))
            options.setdefault("spinning", True)
        else:
            # 0 = streams mode: 1 intra-op thread x one concurrent run per core (see the module's doc).
            options.setdefault("threads", job.threads)
        return cls(**options)

    def _runtime(self):
        if self._ort is None:
            self._ort = import_runtime("onnxruntime", "onnxruntime is not installed: {exc}")
        return self._ort

    def session_options(self):
        ort = self._runtime()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.optimize
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.spinning else "0")
        return so

    def load(self, model_path):
        ort = self._runtime()
        if not os.path.isfile(model_path):
            raise BackendError(f"model not found: {model_path}")
        try:
            self.session = ort.InferenceSession(
                model_path, sess_options=self.session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise BackendError(f"cannot load {model_path}: {exc}") from exc
        self.inputs = []
        for i in self.session.get_inputs():
            shape = _dims(i.shape)
            self.inputs.append(TensorSpec(i.name, shape, _ORT_TYPES.get(i.type, i.type), guess_layout(shape)))
        self.outputs = [
            TensorSpec(o.name, _dims(o.shape), _ORT_TYPES.get(o.type, o.type))
            for o in self.session.get_outputs()
        ]
        if len(self.inputs) != 1:
            raise BackendError(f"expected a model with one input, {model_path} has {len(self.inputs)}")
        self._in_name = self.inputs[0].name
        self._out_names = [o.name for o in self.outputs]
        return self

    def run(self, batch):
        import numpy as np

        if self.session is None:
            raise BackendError("model not loaded")
        try:
            return self.session.run(self._out_names, {self._in_name: np.ascontiguousarray(batch)})
        except Exception as exc:
            raise BackendError(f"onnxruntime run failed: {exc}") from exc

    def close(self):
        self.session = None


BACKEND = OnnxBackend
