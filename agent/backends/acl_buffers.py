"""The acl backend's device memory: a pool of slots, each one input and one output dataset, and the
copies between host arrays and a slot.

* A slot is built as the samples build their datasets: per input ``rt.malloc`` (HUGE_FIRST) ->
  ``mdl.create_dataset`` -> per buffer ``create_data_buffer`` + ``mdl.add_dataset_buffer``, then
  the same for the outputs. Every handle is recorded as soon as it exists, so :meth:`DevicePool.release`
  frees what a failed build made.
* In: the batch is checked against the image input (a dtype numpy would have to convert unsafely,
  or a size that is not one batch, is refused) and copied with one ``rt.memcpy``, HOST_TO_DEVICE on
  a host (ACL_HOST) and DEVICE_TO_DEVICE on the board (ACL_DEVICE, as acllite does); a dynamic-batch
  model gets ``mdl.set_dynamic_batch_size`` at its gear right after.
* Out: each output is copied once, device -> a fresh host buffer (``bytes_to_ptr`` when
  ``dir(acl.util)`` has it, CANN >= 6.0; else ``numpy_to_ptr``, the probe the samples use), DEVICE_TO_HOST
  on a host and DEVICE_TO_DEVICE on the board.

numpy is imported when a copy is made (job validation imports the backend modules). Python 3.7.
"""

import queue

from .acl_codes import (
    ACL_HOST,
    ACL_MEM_MALLOC_HUGE_FIRST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    check,
    collect,
)
from .base import BackendError


def nbytes(shape, dtype):
    """Bytes of a dense array of ``shape`` and ``dtype`` (a numpy dtype name)."""
    import numpy as np

    return int(np.prod(shape)) * np.dtype(dtype).itemsize


class Io:
    """The model's buffers in the backend's terms (the backend's describe fills it): every input's and
    output's size in bytes, the image input (its index among the inputs, its spec, the bytes of one
    batch), the output specs, and a dynamic-batch model's ``ascend_mbatch_shape_data`` input and gear."""

    def __init__(self):
        self.in_sizes, self.out_sizes = [], []
        self.data_index = None
        self.input = None
        self.copy_size = None
        self.outputs = []
        self.mbatch_index = None
        self.gear = None  # the dynamic batch the backend runs at, or None


class Slot:
    """One input dataset + one output dataset in device memory (a memory-pool entry)."""

    __slots__ = ("in_ptrs", "in_bufs", "in_ds", "out_ptrs", "out_bufs", "out_ds")

    def __init__(self):
        self.in_ptrs, self.in_bufs, self.in_ds = [], [], None
        self.out_ptrs, self.out_bufs, self.out_ds = [], [], None


class DevicePool:
    """The slots of one loaded model (``slots``), which of them no execution uses (``free``, a queue of
    indices), and the copies in and out of a slot."""

    def __init__(self, acl, model_id, run_mode, io):
        self.acl = acl
        self.model_id = model_id
        self.run_mode = run_mode
        self.io = io
        self.slots = []
        self.free = queue.Queue()
        self._use_bytes = None  # pointer API probe (_bytes_api)

    # --- building ----------------------------------------------------------------------------
    def _malloc(self, size):
        ptr, ret = self.acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
        check(f"acl.rt.malloc({size})", ret)
        return ptr

    def _fill(self, ds, ptrs, sizes, bufs):
        """Wrap each pointer in a data buffer and add it to ``ds``. Every buffer is recorded in
        ``bufs`` as soon as it exists, so release() frees it even when adding it failed."""
        acl = self.acl
        for ptr, size in zip(ptrs, sizes):
            buf = acl.create_data_buffer(ptr, size)
            if not buf:
                raise BackendError(f"acl.create_data_buffer({size}) failed")
            bufs.append(buf)
            _, ret = acl.mdl.add_dataset_buffer(ds, buf)
            check("acl.mdl.add_dataset_buffer", ret)

    def add(self):
        """One more slot, free at once."""
        io = self.io
        slot = Slot()
        self.slots.append(slot)
        for size in io.in_sizes:
            slot.in_ptrs.append(self._malloc(size))
        slot.in_ds = self.acl.mdl.create_dataset()
        self._fill(slot.in_ds, slot.in_ptrs, io.in_sizes, slot.in_bufs)
        for size in io.out_sizes:
            slot.out_ptrs.append(self._malloc(size))
        slot.out_ds = self.acl.mdl.create_dataset()
        self._fill(slot.out_ds, slot.out_ptrs, io.out_sizes, slot.out_bufs)
        self.free.put(len(self.slots) - 1)

    # --- data movement -----------------------------------------------------------------------
    def _bytes_api(self):
        """Whether pyACL has bytes_to_ptr (CANN >= 6.0), by the samples' probe, made once."""
        if self._use_bytes is None:
            self._use_bytes = "bytes_to_ptr" in dir(self.acl.util)
        return self._use_bytes

    def _host_ptr(self, arr):
        """(pointer, keep-alive object) of a C-contiguous array's bytes, with the samples' probe."""
        if self._bytes_api():
            data = arr.tobytes()
            return self.acl.util.bytes_to_ptr(data), data
        return self.acl.util.numpy_to_ptr(arr), arr

    def copy_in(self, index, batch):
        """``batch`` into slot ``index``'s image input (and the gear, for a dynamic-batch model)."""
        import numpy as np

        acl, io = self.acl, self.io
        slot = self.slots[index]
        spec = io.input
        src = np.asarray(batch)
        if src.dtype != np.dtype(spec.dtype) and not np.can_cast(src.dtype, spec.dtype, casting="same_kind"):
            raise BackendError(
                f"input batch is {src.dtype}, the model wants {spec.dtype}: refusing to convert"
            )
        arr = np.ascontiguousarray(src, dtype=spec.dtype)
        size = io.copy_size
        if arr.nbytes != size:
            raise BackendError(
                f"input batch is {arr.nbytes} bytes ({arr.shape}), the model wants {size} ({spec.shape})"
            )
        kind = ACL_MEMCPY_HOST_TO_DEVICE if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        ptr, keep = self._host_ptr(arr)
        i = io.data_index
        check("acl.rt.memcpy (input)", acl.rt.memcpy(slot.in_ptrs[i], io.in_sizes[i], ptr, size, kind))
        del keep  # had to stay alive until memcpy returned
        if io.gear:
            check(
                "acl.mdl.set_dynamic_batch_size",
                acl.mdl.set_dynamic_batch_size(self.model_id, slot.in_ds, io.mbatch_index, io.gear),
            )

    def copy_out(self, index):
        """Each output of slot ``index`` copied once, from device memory into a new host array."""
        import numpy as np

        slot = self.slots[index]
        kind = ACL_MEMCPY_DEVICE_TO_HOST if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        use_bytes = self._bytes_api()
        outs = []
        for i, spec in enumerate(self.io.outputs):
            size = self.io.out_sizes[i]
            dtype = np.dtype(spec.dtype)
            if use_bytes:
                host = bytes(size)  # a fresh object: the copy lands in it
                ptr = self.acl.util.bytes_to_ptr(host)
            else:
                host = np.empty(size // dtype.itemsize, dtype=dtype)
                ptr = self.acl.util.numpy_to_ptr(host)
            check(f"acl.rt.memcpy (output {i})", self.acl.rt.memcpy(ptr, size, slot.out_ptrs[i], size, kind))
            arr = np.frombuffer(host, dtype=dtype) if use_bytes else host
            outs.append(arr.reshape(spec.shape) if int(np.prod(spec.shape)) == arr.size else arr)
        return outs

    # --- teardown ----------------------------------------------------------------------------
    def release(self, errors):
        """Per slot, inputs then outputs: data buffers, device memory, the dataset (failures go to ``errors``)."""
        acl = self.acl
        for slot in self.slots:
            for ds, bufs, ptrs in (
                (slot.in_ds, slot.in_bufs, slot.in_ptrs),
                (slot.out_ds, slot.out_bufs, slot.out_ptrs),
            ):
                for buf in bufs:
                    collect(errors, "acl.destroy_data_buffer", lambda b=buf: acl.destroy_data_buffer(b))
                for ptr in ptrs:
                    collect(errors, "acl.rt.free", lambda p=ptr: acl.rt.free(p))
                if ds is not None:
                    collect(errors, "acl.mdl.destroy_dataset", lambda d=ds: acl.mdl.destroy_dataset(d))
        self.slots = []
