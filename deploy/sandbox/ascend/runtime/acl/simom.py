"""The simulated offline-model file (what the simulated ``atc`` writes and the simulated ``acl`` loads).

Layout (all integers little-endian)::

    0   8 bytes  MAGIC = b"ATLSIMOM"   (a real .om starts with the GE header, never with this)
    8   uint32   FORMAT_VERSION
    12  uint32   header length H
    16  H bytes  header: UTF-8 JSON (see below)
    16+H         the ONNX graph, header["onnx_size"] bytes, sha256 in header["onnx_sha256"]

The header carries what atc bakes into a real .om::

    {"soc_version": "Ascend310", "atc_argv": [...],
     "inputs":  [{"name", "onnx_name", "dtype" (ACL data type name: FLOAT, FLOAT16, UINT8...),
                  "format" (NCHW|NHWC|ND), "dims" (-1 = dynamic batch), "aipp": {...} | null,
                  "fp16_in_graph": true when the graph itself rounds this input through fp16}],
     "outputs": [{"name", "onnx_name", "dtype", "dims"}],
     "dynamic_batch": [1, 2, 4] | null,
     "onnx_size": int, "onnx_sha256": hex}

A dynamic-batch model lists the extra input ``ascend_mbatch_shape_data`` last, as real atc does.
Files keep the ``.om`` extension (every consumer keys on it); tell them apart with
:func:`is_simulated` (first 8 bytes). Stdlib only: the host side reads it too. Python 3.7.
"""

import hashlib
import json
import struct

MAGIC = b"ATLSIMOM"
FORMAT_VERSION = 1
MBATCH_INPUT = "ascend_mbatch_shape_data"
_PREFIX = struct.Struct("<8sII")


class SimOmError(ValueError):
    """Not a simulated model, or a corrupt/truncated one (the message says which)."""


def is_simulated(path):
    """True when the file at ``path`` starts with the simulated-model magic (reads 8 bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def dumps(header, onnx_bytes):
    """The bytes of a simulated model: ``header`` (a JSON-able dict) plus the ONNX graph."""
    header = dict(header)
    header["onnx_size"] = len(onnx_bytes)
    header["onnx_sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + onnx_bytes


def loads(data):
    """(header, onnx_bytes) from the bytes of a simulated model; SimOmError says what is wrong."""
    data = memoryview(data)
    if len(data) < _PREFIX.size:
        raise SimOmError(f"file too short for a model header ({len(data)} bytes)")
    magic, version, size = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise SimOmError(
            f"not a simulated model (magic {bytes(magic)!r}); a real .om needs a real Ascend runtime"
        )
    if version != FORMAT_VERSION:
        raise SimOmError(f"simulated model format {version} is not supported (expected {FORMAT_VERSION})")
    end = _PREFIX.size + size
    if len(data) < end:
        raise SimOmError("truncated model: header cut off")
    try:
        header = json.loads(bytes(data[_PREFIX.size : end]).decode("utf-8"))
    except ValueError as exc:
        raise SimOmError(f"corrupt model header: {exc}") from None
    onnx_bytes = bytes(data[end:])
    if len(onnx_bytes) != header.get("onnx_size"):
        raise SimOmError(
            "truncated model: graph is {} bytes, header says {}".format(
                len(onnx_bytes), header.get("onnx_size")
            )
        )
    if hashlib.sha256(onnx_bytes).hexdigest() != header.get("onnx_sha256"):
        raise SimOmError("corrupt model: graph checksum mismatch")
    return header, onnx_bytes
