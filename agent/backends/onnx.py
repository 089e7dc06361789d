"""onnxruntime backend, with session options tuned for a small multi-core CPU.

Settings (measured on 2 cores, see shared/notes/performance.md section 3): intra-op threads =
cores, graph optimisation ENABLE_ALL, SEQUENTIAL execution (classification graphs are chains),
inter-op 1 thread, and ``allow_spinning=0`` when our own decode threads share the cores (a
spinning ORT worker steals the time the decoder needs). ``run_async`` and IOBinding are not
used: they did not help on CPU.
"""

import os

import numpy as np

from . import Backend, BackendError, TensorSpec, guess_layout

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
    name = "onnx"

    def __init__(self, threads=0, spinning=False, optimize=True, ort_module=None):
        """threads: intra-op threads (0 = one per core); spinning: ORT's busy-wait (off by default)."""
        Backend.__init__(self)
        self.threads = int(threads) or (os.cpu_count() or 1)
        self.spinning = bool(spinning)
        self.optimize = bool(optimize)
        self._ort = ort_module
        self.session = None
        self._in_name = None
        self._out_names = None

    def _runtime(self):
        if self._ort is None:
            try:
                import onnxruntime
            except ImportError as exc:
                raise BackendError(f"onnxruntime is not installed: {exc}") from exc
            self._ort = onnxruntime
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
        if self.session is None:
            raise BackendError("model not loaded")
        try:
            return self.session.run(self._out_names, {self._in_name: np.ascontiguousarray(batch)})
        except Exception as exc:
            raise BackendError(f"onnxruntime run failed: {exc}") from exc

    def close(self):
        self.session = None
