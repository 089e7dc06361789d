"""What the simulated AscendCL C library (``libascendcl.so``, ``deploy/sandbox/ascend/capi``) calls
in the Python it embeds: the model execution of the Python runtime, nothing else.

The C library keeps its own devices, contexts, streams, memory, datasets and callbacks; for a model
it needs the simulated ``.om`` parsed, an ONNX Runtime session and an execution on its buffers.
Those are :func:`acl._model.load` and :meth:`acl._model.Model.run`, the very code ``acl.mdl`` runs,
so the two runtimes cannot drift apart. The C side hands over memoryviews of its own buffers (real
addresses, no copy) and reads back plain ints, floats and one text per model (:func:`describe`),
so it needs only a handful of functions of the Python C API. Python 3.7.
"""

from . import _core, _model, simom
from ._core import STATE


def load(data, soc_version):
    """(model or None, code): ``data`` is the model file's bytes (a memoryview of C memory)."""
    return _model.load(data, soc_version, "load model")


def query(data):
    """(code, work bytes, weight bytes) for aclmdlQuerySize, without starting ONNX Runtime."""
    try:
        header, _ = simom.loads(data)
    except simom.SimOmError as exc:
        return _core.fail(_core.ACL_ERROR_PARSE_MODEL, f"aclmdlQuerySize: {exc}"), 0, 0
    return (0, *_sizes(_model.Model(header)))  # the description only: no session


def _sizes(model):
    """(work, weight): the weight memory is the graph's size, the work memory that of every input
    and output (at the largest gear), at least a page."""
    work = sum(model.size(spec) for spec in model.inputs + model.outputs)
    return max(work, 4096), int(model.header["onnx_size"])


def describe(model):
    """The model as the C library keeps it, one line each::

        sizes <work> <weight>
        gears <n> <g1> ... <gn>
        in|out <bytes> <aclDataType> <aclFormat> <ndims> <d1> ... <dn> <name to the end of the line>

    sizes at the largest gear of a dynamic-batch model, a dynamic batch axis as -1 (what
    acl.mdl.get_*_size_by_index / get_*_dims report)."""
    gears = list(model.gears or [])
    lines = ["sizes {} {}".format(*_sizes(model)), " ".join(["gears", str(len(gears))] + [str(g) for g in gears])]
    for kind, specs in (("in", model.inputs), ("out", model.outputs)):
        for spec in specs:
            dims = model.dims(spec)
            fmt = "NHWC" if spec.get("aipp") else spec.get("format")
            lines.append(" ".join(
                [kind, str(model.size(spec)), str(_model.DTYPES[spec["dtype"]][0]), str(_model.FORMATS.get(fmt, 2)),
                 str(len(dims)), *[str(int(d)) for d in dims], spec["name"]]
            ))  # fmt: skip
    return "\n".join(lines) + "\n"


def execute(model, ins, outs, ready_at):
    """(code, ended_at): :meth:`Model.run` on tuples of memoryviews (None: not device memory);
    ``ready_at`` is a time.monotonic() value, or a negative number for "now"."""
    return model.run(ins, outs, ready_at if ready_at >= 0 else None)


def error():
    """The reason of the last failure on this thread (what the C library's aclGetRecentErrMsg returns)."""
    return getattr(STATE.local, "err", "") or ""
