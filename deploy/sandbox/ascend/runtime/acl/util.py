"""``acl.util``: pointers to Python data and helper threads.

``bytes_to_ptr``/``ptr_to_bytes`` (pyACL >= CANN 6.0) and ``numpy_to_ptr``/``ptr_to_numpy``
(older) are all present unless ``ACL_SIM_PTR_API=numpy`` (only the old pair, like CANN 5.x) or
``=bytes`` (only the new pair). As in pyACL, the pointer is the object's own memory: a memcpy
into it changes the bytes object / array, and the object must outlive the pointer. Reading
device memory through ptr_to_bytes works only in ACL_DEVICE run mode (on the board the control
CPU addresses it); on a host it would crash, and here raises RuntimeError. Python 3.7.
"""

import ctypes
import sys
import threading

import numpy as np

from . import _core as C
from . import _memory as M

_NPY = {
    0: "bool",
    1: "int8",
    2: "uint8",
    3: "int16",
    4: "uint16",
    5: "int32",
    6: "uint32",
    7: "int64",
    8: "uint64",
    9: "int64",
    10: "uint64",
    11: "float32",
    12: "float64",
    23: "float16",
}
_THREADS = {}


def bytes_to_ptr(data):
    """The address of a bytes object's buffer (kept alive by the runtime for a while)."""
    if not isinstance(data, bytes):
        raise TypeError(f"bytes_to_ptr needs bytes, not {type(data).__name__}")
    ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    M.register_view(ptr, len(data), data)
    return ptr


def numpy_to_ptr(array):
    if not isinstance(array, np.ndarray):
        raise TypeError("numpy_to_ptr needs a numpy array")
    if not array.flags["C_CONTIGUOUS"]:
        sys.stderr.write("[WARNING] numpy_to_ptr: array is not C-contiguous; use numpy_contiguous_to_ptr\n")
    ptr = array.ctypes.data
    M.register_view(ptr, array.nbytes, array)
    return ptr


def numpy_contiguous_to_ptr(array):
    return numpy_to_ptr(np.ascontiguousarray(array))


def _place(ptr, size):
    place = M.locate(ptr, size)
    if place is None:
        raise RuntimeError(
            f"pointer {ptr!r} (+{size} bytes) is not allocated memory: a real board would crash"
        )
    if place[0] == "device" and C.STATE.run_mode != C.ACL_DEVICE:
        raise RuntimeError(
            "device memory is not addressable from the host (ACL_HOST run mode): memcpy it first"
        )
    return place


def ptr_to_bytes(ptr, size):
    """A copy of ``size`` bytes at ``ptr``."""
    return M.read(_place(ptr, size), size)


def ptr_to_numpy(ptr, shape, npy_type):
    """An array over the memory at ``ptr`` (not a copy), dtype from the NumPy type number."""
    dtype = np.dtype(_NPY[npy_type])
    count = int(np.prod(shape))
    place = _place(ptr, count * dtype.itemsize)
    if place[0] == "device":
        return np.frombuffer(place[1], dtype=dtype, count=count, offset=place[2]).reshape(shape)
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(place[1])
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def start_thread(fn, args):
    """(thread id, ret): ``fn(args)`` on a new thread; the id is what subscribe_report takes."""
    thread = threading.Thread(target=fn, args=(args,), name="acl-sim-report", daemon=True)
    thread.start()
    _THREADS[thread.ident] = thread
    return thread.ident, C.ACL_SUCCESS


def stop_thread(thread_id):
    """Wait for a start_thread thread to return (it must leave its loop by itself)."""
    thread = _THREADS.pop(thread_id, None)
    if thread is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"stop_thread: unknown thread {thread_id!r}")
    thread.join()
    return C.ACL_SUCCESS
