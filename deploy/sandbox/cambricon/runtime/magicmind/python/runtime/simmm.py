"""The simulated MagicMind model file (what the simulated builder writes, the simulated runtime loads).

Layout (integers little-endian)::

    0   8 bytes  MAGIC = b"CAMSIMMM"   (a real MagicMind model file never starts with it)
    8   uint32   FORMAT_VERSION
    12  uint32   header length H
    16  H bytes  header: UTF-8 JSON (below)
    16+H         the ONNX graph the runtime executes, header["onnx_size"] bytes, sha256 in the header

The header carries what a real build bakes into the model::

    {"name": "...", "archs": ["mtp_372"], "precision": "force_float16", "shape_mutable": true,
     "builder_argv": [...],
     "inputs":  [{"name", "onnx_name", "dtype" ("UINT8" | "FLOAT" ...), "layout" ("NHWC" | "NCHW"),
                  "dims" (-1 = mutable), "dim_range": {"min": [...], "max": [...]} | null,
                  "insert_bn": {"mean": [...], "var": [...]} | null}],
     "outputs": [{"name", "onnx_name", "dtype", "dims"}],
     "onnx_size": int, "onnx_sha256": hex}

The graph already contains what the build put in front of the network (uint8 -> float, NHWC ->
NCHW, (x - mean) / sqrt(var), fp16 rounding for force_float16), so ONNX Runtime does that work
within its run. Stdlib only: the host reads the header too. Python 3.7.
"""

import hashlib
import json
import struct

MAGIC = b"CAMSIMMM"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")


class SimMmError(ValueError):
    """Not a simulated MagicMind model, or a corrupt/truncated one (the message says which)."""


def is_simulated(path):
    """True when the file at ``path`` starts with the simulated-model magic (reads 8 bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def dumps(header, onnx_bytes):
    """The bytes of a simulated model: ``header`` (JSON-able) plus the ONNX graph."""
    header = dict(header)
    header["onnx_size"] = len(onnx_bytes)
    header["onnx_sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + onnx_bytes


def read_header(data):
    """(header, offset of the graph) from the first bytes of a model; SimMmError says what is wrong."""
    data = memoryview(data)
    if len(data) < _PREFIX.size:
        raise SimMmError(f"not a MagicMind model (file too short for a model header: {len(data)} bytes)")
    magic, version, size = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise SimMmError(f"not a MagicMind model built by the simulated builder (magic {bytes(magic)!r})")
    if version != FORMAT_VERSION:
        raise SimMmError(f"simulated model format {version} is not supported (expected {FORMAT_VERSION})")
    end = _PREFIX.size + size
    if len(data) < end:
        raise SimMmError("truncated model: header cut off")
    try:
        header = json.loads(bytes(data[_PREFIX.size : end]).decode("utf-8"))
    except ValueError as exc:
        raise SimMmError(f"corrupt model header: {exc}") from None
    if not isinstance(header, dict):
        raise SimMmError("corrupt model header: not a JSON object")
    return header, end


def loads(data):
    """(header, onnx_bytes) from the bytes of a simulated model; SimMmError says what is wrong."""
    header, end = read_header(data)
    onnx_bytes = bytes(memoryview(data)[end:])
    if len(onnx_bytes) != header.get("onnx_size"):
        raise SimMmError(
            "truncated model: graph is {} bytes, header says {}".format(
                len(onnx_bytes), header.get("onnx_size")
            )
        )
    if hashlib.sha256(onnx_bytes).hexdigest() != header.get("onnx_sha256"):
        raise SimMmError("corrupt model: graph checksum mismatch")
    return header, onnx_bytes
