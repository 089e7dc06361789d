"""The interface every inference backend implements (how one is used: see agent.backends).

The backend modules import it from here, never from the package, so ``agent.backends`` and its
modules form no import circle. Stdlib only, like the top of every backend module: job validation
imports them for their ``NAME`` and ``OPTIONS``. Python 3.7 compatible.
"""

import importlib
from dataclasses import dataclass
from typing import Optional, Tuple


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


def import_runtime(name, unavailable):
    """The runtime module ``name`` (imported now); when this Python cannot import it, a BackendError
    saying ``unavailable``, with the import's own message in place of ``{exc}``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendError(unavailable.format(exc=exc)) from exc


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

    @classmethod
    def from_job(cls, job, **options):
        """An instance configured from ``job`` (a :class:`agent.job.Job`), not loaded yet; ``options``
        are constructor arguments that win over the job's. By default the job adds nothing."""
        return cls(**options)

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
