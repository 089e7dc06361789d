"""Inference backends behind one small interface.

A backend is created by :func:`get_backend`, then::

    backend.load(model_path)          # once
    backend.inputs / backend.outputs  # lists of TensorSpec
    outs = backend.run(batch)         # batch: np.ndarray shaped like inputs[0]; returns a list of np.ndarray
    backend.submit(batch, tag, done)  # done(tag, outs, error) is called exactly once, maybe on another thread
    backend.drain()                   # wait until every submitted batch's ``done`` has run
    backend.close()                   # idempotent

Backends import their runtime lazily, so ``import agent.backends`` works on a board that has
only one of onnxruntime / pyACL / MagicMind. Python 3.7 compatible.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

NAMES = ("onnx", "acl", "magicmind")


class BackendError(RuntimeError):
    """The runtime is missing, the model cannot be loaded, or an inference call failed."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: shape entries are None where the dimension is dynamic."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str  # numpy dtype name: float32 | float16 | uint8 | int64 ...
    layout: Optional[str] = None  # NCHW | NHWC for 4-D image inputs, else None

    @property
    def batch(self):
        """The fixed batch size, or None when the batch axis is dynamic."""
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


def guess_layout(shape):
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    return None


class Backend:
    """Base class: subclasses implement load, run and close; submit/drain default to run."""

    name = "base"

    def __init__(self):
        self.inputs = []
        self.outputs = []

    def load(self, model_path):
        raise NotImplementedError

    def run(self, batch):
        raise NotImplementedError

    def submit(self, batch, tag, done):
        """Synchronous by default: run, then call done(tag, outputs, None) or done(tag, None, exc)."""
        try:
            outs = self.run(batch)
        except Exception as exc:
            done(tag, None, exc)
        else:
            done(tag, outs, None)

    def drain(self):
        return None

    def close(self):
        return None

    def describe(self):
        return {
            "backend": self.name,
            "inputs": [spec_dict(s) for s in self.inputs],
            "outputs": [spec_dict(s) for s in self.outputs],
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def spec_dict(spec):
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype, "layout": spec.layout}


def get_backend(name, **options):
    """A backend instance by name (not loaded yet). Options go to the backend's constructor."""
    if name == "onnx":
        from .onnx import OnnxBackend

        return OnnxBackend(**options)
    if name == "acl":
        from .acl import AclBackend

        return AclBackend(**options)
    if name == "magicmind":
        from .magicmind import MagicMindBackend

        return MagicMindBackend(**options)
    raise BackendError("unknown backend {!r} (known: {})".format(name, ", ".join(NAMES)))
