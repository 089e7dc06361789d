"""Inference backends behind one small interface.

A backend is created by :func:`get_backend`, then::

    backend.load(model_path)          # once
    backend.inputs / backend.outputs  # lists of TensorSpec
    outs = backend.run(batch)         # batch: np.ndarray shaped like inputs[0]; returns a list of np.ndarray
    backend.submit(batch, tag, done)  # done(tag, outs, error) is called exactly once, maybe on another thread
    backend.drain()                   # wait until every submitted batch's ``done`` has run
    backend.close()                   # idempotent

Each backend is described in one place, its module ``agent/backends/<name>.py``: its ``NAME``,
the job's ``backend_options`` it takes (``OPTIONS``: option -> bool, int or a tuple of the words it
takes, which job.py checks),
and its class (``BACKEND``), whose ``from_job`` turns a job into constructor arguments. This
package only knows the modules' names and imports a module when that backend is asked for. A
backend module imports only the stdlib and ``.base`` at its top (numpy and its runtime when it
loads or runs), so ``import agent.backends`` and job validation work on a board that has only
one of onnxruntime / pyACL / MagicMind, and without numpy. Python 3.7 compatible.
"""

import importlib

from .base import Backend, BackendError, TensorSpec, guess_layout, spec_dict

__all__ = [
    "NAMES", "Backend", "BackendError", "TensorSpec", "backend_options", "for_job", "get_backend", "guess_layout",
    "module", "spec_dict",
]  # fmt: skip

NAMES = ("onnx", "acl", "magicmind")  # agent/backends/<name>.py, imported when first used


def module(name):
    """The backend module ``name`` (imported now if it was not yet)."""
    if name not in NAMES:
        raise BackendError("unknown backend {!r} (known: {})".format(name, ", ".join(NAMES)))
    return importlib.import_module("." + name, __name__)


def backend_options(name):
    """The job's ``backend_options`` backend ``name`` takes: {option: bool | int | (word, ...)} ({} for none)."""
    return module(name).OPTIONS


def get_backend(name, **options):
    """A backend instance by name (not loaded yet). Options go to the backend's constructor."""
    return module(name).BACKEND(**options)


def for_job(job, **overrides):
    """The backend ``job`` asks for (not loaded yet), configured from the job's fields and
    backend_options; ``overrides`` are constructor arguments that win over the job's."""
    return module(job.backend).BACKEND.from_job(job, **overrides)
