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

from .base import Backend, BackendError, TensorSpec, guess_layout, spec_dict

__all__ = ["NAMES", "Backend", "BackendError", "TensorSpec", "get_backend", "guess_layout", "spec_dict"]

NAMES = ("onnx", "acl", "magicmind")


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
