"""The pyACL backend against a recording fake ``acl`` module (no NPU here).

The fake implements the documented pyACL semantics the backend relies on: (value, ret) tuples,
device memory as byte arrays addressed by integer pointers, synchronous memcpy with a size
check, datasets of data buffers, a stream whose queued execute_async/launch_callback work is
carried out by whichever thread calls process_report, and the two pointer APIs (bytes_to_ptr /
ptr_to_bytes for CANN >= 6, numpy_to_ptr / ptr_to_numpy before). Its "model" is the colour
model of conftest_agent: logits = 4 x the mean of each input channel. This verifies the
backend's logic (call order, return codes, sizes, teardown, callbacks), not the real runtime.
"""

import ctypes
import threading
import time

import conftest_agent as H
import numpy as np
import pytest

from agent import job as jobmod
from agent.backends import BackendError, get_backend
from agent.backends.acl import AclBackend
from agent.runner import execute


class _NS:
    pass


class FakeAcl:
    def __init__(self, batch=1, run_mode=0, new_api=True, fail=None, dims=None, classes=3):
        self.calls = []
        self.fail = dict(fail or {})
        self.run_mode = run_mode
        self.in_dims = list(dims or [batch, 3, 224, 224])
        self.out_dims = [batch, classes]
        self.classes = classes
        self.mem = {}  # device/host pointer -> bytearray
        self.host = set()  # pointers from malloc_host
        self.temp = {}  # pointers from bytes_to_ptr / numpy_to_ptr
        self.datasets = {}
        self.buffers = {}
        self.queue = []
        self.cv = threading.Condition()
        self.threads = {}
        self.subscribed = {}
        self.memcpys = []
        self._next = 1000
        self.lock = threading.Lock()
        self.rt, self.mdl, self.util = _NS(), _NS(), _NS()
        for name in (
            "set_device create_context create_stream get_run_mode malloc malloc_host free free_host memcpy "
            "destroy_stream destroy_context reset_device set_context process_report subscribe_report "
            "unsubscribe_report launch_callback synchronize_stream"
        ).split():
            setattr(self.rt, name, self._recorder("rt." + name, getattr(self, "rt_" + name)))
        for name in (
            "load_from_file create_desc get_desc get_num_inputs get_num_outputs get_input_dims get_output_dims "
            "get_input_data_type get_output_data_type get_input_size_by_index get_output_size_by_index "
            "get_input_format get_input_name_by_index get_output_name_by_index create_dataset add_dataset_buffer "
            "destroy_dataset execute execute_async unload destroy_desc"
        ).split():
            setattr(self.mdl, name, self._recorder("mdl." + name, getattr(self, "mdl_" + name)))
        utils = "start_thread stop_thread " + (
            "bytes_to_ptr ptr_to_bytes" if new_api else "numpy_to_ptr ptr_to_numpy"
        )
        for name in utils.split():
            setattr(self.util, name, self._recorder("util." + name, getattr(self, "util_" + name)))
        self.init = self._recorder("init", lambda *a: 0)
        self.finalize = self._recorder("finalize", lambda: 0)
        self.create_data_buffer = self._recorder("create_data_buffer", self.create_data_buffer_)
        self.destroy_data_buffer = self._recorder("destroy_data_buffer", self.destroy_data_buffer_)

    # --- recording and failure injection ---
    def _recorder(self, name, fn):
        def call(*args):
            with self.lock:
                self.calls.append(name)
            if name in self.fail:
                ret = self.fail[name]
                result = fn(*args)
                return (result[0], ret) if isinstance(result, tuple) else ret
            return fn(*args)

        return call

    def names(self, prefix=""):
        return [c for c in self.calls if c.startswith(prefix)]

    def _ptr(self):
        self._next += 16
        return self._next

    # --- runtime ---
    def rt_set_device(self, dev):
        return 0

    def rt_create_context(self, dev):
        return "ctx", 0

    def rt_create_stream(self):
        return "stream", 0

    def rt_get_run_mode(self):
        return self.run_mode, 0

    def rt_malloc(self, size, policy):
        p = self._ptr()
        self.mem[p] = bytearray(size)
        return p, 0

    def rt_malloc_host(self, size):
        p, _ = self.rt_malloc(size, 0)
        self.host.add(p)
        return p, 0

    def rt_free(self, p):
        if p not in self.mem or p in self.host:
            return 100000
        del self.mem[p]
        return 0

    def rt_free_host(self, p):
        if p not in self.host:
            return 100000
        self.host.discard(p)
        del self.mem[p]
        return 0

    def _read(self, p):
        if p in self.mem:
            return self.mem[p]
        obj = self.temp[p]
        return obj.tobytes() if isinstance(obj, np.ndarray) else obj

    def rt_memcpy(self, dst, dst_max, src, count, kind):
        self.memcpys.append((dst_max, count, kind))
        data = self._read(src)
        if dst in self.temp:  # into the caller's bytes object / array, as pyACL does
            obj = self.temp[dst]
            if count > dst_max or count > len(data) or count > _nbytes(obj):
                return 100000
            _write_into(obj, bytes(data[:count]))
            return 0
        if count > dst_max or count > len(data) or dst not in self.mem:
            return 100000
        self.mem[dst][:count] = bytes(data[:count])
        return 0

    def rt_destroy_stream(self, s):
        return 0

    def rt_destroy_context(self, c):
        return 0

    def rt_reset_device(self, d):
        return 0

    def rt_set_context(self, c):
        return 0

    def rt_subscribe_report(self, tid, stream):
        self.subscribed[stream] = tid
        return 0

    def rt_unsubscribe_report(self, tid, stream):
        self.subscribed.pop(stream, None)
        return 0

    def rt_launch_callback(self, fn, data, block, stream):
        if stream not in self.subscribed or block != 1:
            return 100000
        with self.cv:
            self.queue.append(("cb", fn, data))
            self.cv.notify_all()
        return 0

    def rt_process_report(self, timeout_ms):
        """Carry out the queued stream work (the 'device' finishing, then the callbacks)."""
        with self.cv:
            if not self.queue:
                self.cv.wait(timeout_ms / 1000.0)
            work, self.queue = self.queue, []
        for op in work:
            if op[0] == "exec":
                self._compute(op[1], op[2])
            else:
                op[1](op[2])
        with self.cv:
            self.cv.notify_all()
        return 0

    def rt_synchronize_stream(self, stream):
        deadline = time.monotonic() + 10
        with self.cv:
            while self.queue:
                if stream not in self.subscribed:  # nobody to run callbacks: run the executes ourselves
                    work, self.queue = self.queue, []
                    for op in work:
                        if op[0] == "exec":
                            self._compute(op[1], op[2])
                    continue
                if not self.cv.wait(0.5) and time.monotonic() > deadline:
                    return 500003
        return 0

    # --- model ---
    def mdl_load_from_file(self, path):
        return 7, 0

    def mdl_create_desc(self):
        return "desc"

    def mdl_get_desc(self, desc, mid):
        return 0

    def mdl_get_num_inputs(self, desc):
        return 1

    def mdl_get_num_outputs(self, desc):
        return 1

    def mdl_get_input_dims(self, desc, i):
        return {"name": "input", "dims": list(self.in_dims)}, 0

    def mdl_get_output_dims(self, desc, i):
        return {"name": "logits", "dims": list(self.out_dims)}, 0

    def mdl_get_input_data_type(self, desc, i):
        return 0

    def mdl_get_output_data_type(self, desc, i):
        return 0

    def mdl_get_input_size_by_index(self, desc, i):
        return int(np.prod([max(d, 1) for d in self.in_dims])) * 4

    def mdl_get_output_size_by_index(self, desc, i):
        return int(np.prod(self.out_dims)) * 4

    def mdl_get_input_format(self, desc, i):
        return 0

    def mdl_get_input_name_by_index(self, desc, i):
        return "input"

    def mdl_get_output_name_by_index(self, desc, i):
        return "logits"

    def mdl_create_dataset(self):
        ds = f"ds{self._ptr()}"
        self.datasets[ds] = []
        return ds

    def create_data_buffer_(self, ptr, size):
        b = f"buf{self._ptr()}"
        self.buffers[b] = (ptr, size)
        return b

    def destroy_data_buffer_(self, b):
        return 0 if self.buffers.pop(b, None) else 100000

    def mdl_add_dataset_buffer(self, ds, b):
        self.datasets[ds].append(b)
        return ds, 0

    def mdl_destroy_dataset(self, ds):
        return 0 if self.datasets.pop(ds, None) is not None else 100000

    def _compute(self, in_ds, out_ds):
        ptr, size = self.buffers[self.datasets[in_ds][0]]
        x = np.frombuffer(bytes(self.mem[ptr][:size]), np.float32).reshape(self.in_dims)
        logits = (x.mean(axis=(2, 3)) @ (np.eye(3, self.classes, dtype=np.float32) * 4)).astype(np.float32)
        optr, osize = self.buffers[self.datasets[out_ds][0]]
        self.mem[optr][:osize] = logits.tobytes()

    def mdl_execute(self, mid, in_ds, out_ds):
        self._compute(in_ds, out_ds)
        return 0

    def mdl_execute_async(self, mid, in_ds, out_ds, stream):
        with self.cv:
            self.queue.append(("exec", in_ds, out_ds))
        return 0

    def mdl_unload(self, mid):
        return 0

    def mdl_destroy_desc(self, desc):
        return 0

    # --- util ---
    def util_start_thread(self, fn, args):
        t = threading.Thread(target=fn, args=(args,), daemon=True)
        t.start()
        tid = self._ptr()
        self.threads[tid] = t
        return tid, 0

    def util_stop_thread(self, tid):
        t = self.threads.pop(tid)
        t.join(5)
        return 0 if not t.is_alive() else 500003

    def util_bytes_to_ptr(self, data):
        p = self._ptr()
        self.temp[p] = data
        return p

    def util_numpy_to_ptr(self, arr):
        assert arr.flags["C_CONTIGUOUS"]
        p = self._ptr()
        self.temp[p] = arr
        return p

    def util_ptr_to_bytes(self, p, size):
        return bytes(self.mem[p][:size])

    def util_ptr_to_numpy(self, p, shape, npy_type):
        assert npy_type == 11
        return np.frombuffer(self.mem[p], np.float32, count=int(np.prod(shape))).reshape(shape)


def _nbytes(obj):
    return obj.nbytes if isinstance(obj, np.ndarray) else len(obj)


def _write_into(obj, data):
    """Write into a bytes object's or an array's own memory (what a copy to bytes_to_ptr does)."""
    if isinstance(obj, np.ndarray):
        obj.reshape(-1).view(np.uint8)[: len(data)] = np.frombuffer(data, np.uint8)
    else:
        ctypes.memmove(ctypes.cast(ctypes.c_char_p(obj), ctypes.c_void_p).value, data, len(data))


def _batch(colours):
    """NCHW float32 batch where each image is flat in one colour (0..1 scale)."""
    return np.stack(
        [np.broadcast_to(np.array(c, np.float32)[:, None, None] / 255, (3, 224, 224)) for c in colours]
    )


def _expected(colours):
    return np.stack([np.array(c, np.float32) / 255 * 4 for c in colours])


def _subsequence(seq, wanted):
    it = iter(seq)
    return all(any(x == w for x in it) for w in wanted)


LOAD_ORDER = [
    "init", "rt.set_device", "rt.create_context", "rt.create_stream", "rt.get_run_mode",
    "mdl.load_from_file", "mdl.create_desc", "mdl.get_desc", "mdl.get_input_dims", "rt.malloc", "mdl.create_dataset",
]  # fmt: skip
TEARDOWN_ORDER = [
    "mdl.unload", "mdl.destroy_desc", "destroy_data_buffer", "rt.free", "mdl.destroy_dataset",
    "rt.destroy_stream", "rt.destroy_context", "rt.reset_device", "finalize",
]  # fmt: skip


def _assert_all_released(fake):
    assert fake.mem == {}, "device/host memory leaked"
    assert fake.datasets == {} and fake.buffers == {}


@pytest.mark.parametrize("new_api", [True, False])
def test_sync_run_call_order_sizes_and_teardown(new_api):
    fake = FakeAcl(batch=2, new_api=new_api)
    b = get_backend("acl", acl_module=fake).load("m.om")
    spec = b.inputs[0]
    assert (spec.shape, spec.dtype, spec.layout, spec.batch) == ((2, 3, 224, 224), "float32", "NCHW", 2)
    assert _subsequence(fake.calls, LOAD_ORDER)
    colours = [H.COLOURS["red"], H.COLOURS["blue"]]
    out = b.run(_batch(colours))
    assert out[0].shape == (2, 3)
    np.testing.assert_allclose(out[0], _expected(colours), rtol=1e-5)
    assert ("util.bytes_to_ptr" in fake.calls) == new_api and ("util.numpy_to_ptr" in fake.calls) == (
        not new_api
    )
    size = 2 * 3 * 224 * 224 * 4
    assert fake.memcpys[0] == (size, size, 3)  # on the board (ACL_DEVICE): device-to-device
    assert fake.memcpys[1] == (24, 24, 3)
    # the output must not alias the staging buffer that the next run overwrites
    first = out[0].copy()
    b.run(_batch([H.COLOURS["green"]] * 2))
    np.testing.assert_array_equal(out[0], first)
    fake.calls.clear()
    b.close()
    assert _subsequence(fake.calls, TEARDOWN_ORDER)
    assert fake.calls.index("rt.reset_device") > max(i for i, c in enumerate(fake.calls) if c == "rt.free")
    _assert_all_released(fake)
    b.close()  # idempotent
    assert fake.calls.count("finalize") == 1


def test_host_run_mode_uses_directional_copies_and_no_staging():
    fake = FakeAcl(run_mode=1)
    b = AclBackend(acl_module=fake).load("m.om")
    out = b.run(_batch([H.COLOURS["red"]]))
    np.testing.assert_allclose(out[0], _expected([H.COLOURS["red"]]), rtol=1e-5)
    assert [k for _, _, k in fake.memcpys] == [1, 2]  # HOST_TO_DEVICE, DEVICE_TO_HOST
    assert "rt.malloc_host" not in fake.calls  # outputs go straight into a host array
    b.close()
    _assert_all_released(fake)


def test_failed_load_reports_the_code_and_releases_what_was_made():
    fake = FakeAcl(fail={"mdl.load_from_file": 100003})
    with pytest.raises(BackendError, match="load_from_file.*100003.*ACL_ERROR_INVALID_FILE"):
        AclBackend(acl_module=fake).load("missing.om")
    tail = fake.calls[fake.calls.index("mdl.load_from_file") + 1 :]
    assert tail == ["rt.destroy_stream", "rt.destroy_context", "rt.reset_device", "finalize"]


def test_failed_set_device_still_finalizes():
    fake = FakeAcl(fail={"rt.set_device": 507033})
    with pytest.raises(BackendError, match="set_device.*507033"):
        AclBackend(acl_module=fake).load("m.om")
    assert fake.calls[-1] == "finalize" and "rt.reset_device" not in fake.calls


def test_execute_failure_and_wrong_input_size_raise():
    fake = FakeAcl(fail={"mdl.execute": 500002})
    b = AclBackend(acl_module=fake).load("m.om")
    with pytest.raises(BackendError, match="execute.*500002"):
        b.run(_batch([H.COLOURS["red"]]))
    with pytest.raises(BackendError, match="bytes"):
        b.run(np.zeros((1, 3, 200, 200), np.float32))
    b.close()
    _assert_all_released(fake)


def test_dynamic_dims_are_refused():
    fake = FakeAcl(dims=[-1, 3, 224, 224])
    with pytest.raises(BackendError, match="fixed --input_shape"):
        AclBackend(acl_module=fake).load("m.om")
    _assert_all_released(fake)


def test_teardown_keeps_going_and_reports_failures():
    fake = FakeAcl(fail={"mdl.unload": 100011})
    b = AclBackend(acl_module=fake).load("m.om")
    with pytest.raises(BackendError, match="unload ret=100011"):
        b.close()
    assert fake.calls[-1] == "finalize"
    _assert_all_released(fake)


def test_async_callbacks_every_n_executions():
    fake = FakeAcl(batch=1)
    b = AclBackend(acl_module=fake, async_mode=True, callback_interval=3, pool_size=4).load("m.om")
    assert fake.names("rt.malloc").count("rt.malloc") == 4 * 2  # pool: input and output per slot
    colours = [list(H.COLOURS.values())[i % 3] for i in range(7)]
    got, threads = {}, set()

    def done(tag, outs, err):
        assert err is None
        got[tag] = outs[0].copy()
        threads.add(threading.get_ident())

    for i, c in enumerate(colours):
        b.submit(_batch([c]), i, done)
    b.drain()
    assert sorted(got) == list(range(7))
    for i, c in enumerate(colours):
        np.testing.assert_allclose(got[i], _expected([c]), rtol=1e-5)
    assert fake.calls.count("rt.launch_callback") == 3  # after 3, after 6, and the flush of the 7th
    assert fake.calls.count("mdl.execute_async") == 7 and "mdl.execute" not in fake.calls
    assert threads and threading.get_ident() not in threads  # delivered on the report thread
    assert _subsequence(fake.calls, ["util.start_thread", "rt.subscribe_report", "mdl.execute_async"])
    # run() on an async backend goes through the same path
    np.testing.assert_allclose(b.run(_batch([H.COLOURS["red"]]))[0], _expected([H.COLOURS["red"]]), rtol=1e-5)
    fake.calls.clear()
    b.close()
    assert _subsequence(fake.calls, ["rt.unsubscribe_report", "util.stop_thread"] + TEARDOWN_ORDER)
    _assert_all_released(fake)


def test_async_pool_smaller_than_callback_interval_flushes_instead_of_blocking():
    fake = FakeAcl()
    b = AclBackend(acl_module=fake, async_mode=True, callback_interval=8, pool_size=4).load("m.om")
    got = {}
    for i in range(10):
        b.submit(_batch([H.COLOURS["red"]]), i, lambda tag, outs, err: got.__setitem__(tag, err))
    b.drain()
    assert got == {i: None for i in range(10)}
    b.close()
    _assert_all_released(fake)


@pytest.mark.parametrize("async_mode", [False, True])
def test_agent_run_through_the_acl_backend(tmp_path, async_mode):
    d = tmp_path / "imgs"
    expected = {}
    for i in range(5):
        colour = list(H.COLOURS)[i % 3]
        expected[f"{i}.jpg"] = colour
        H.solid(d / f"{i}.jpg", H.COLOURS[colour])
    (d / "bad.jpg").write_bytes(b"xx")
    job = jobmod.from_dict(
        {
            "run_id": "acl", "mode": "run", "release": str(tmp_path), "out_dir": str(tmp_path / "out"),
            "model": "m.om", "backend": "acl", "labels": H.write_labels(tmp_path / "l.txt"),
            "inputs": [str(d)], "batch": 1, "labelled": False,
        }
    )  # fmt: skip
    fake = FakeAcl(batch=2)
    backend = AclBackend(acl_module=fake, async_mode=async_mode, callback_interval=2)
    assert execute(job, echo=False, backend=backend, handle_signals=False) == 2
    import json

    recs = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    got = {r["image"]: r["topk"][0][1] for r in recs if r["ok"]}
    assert got == expected
    assert [r["kind"] for r in recs if not r["ok"]] == ["decode"]
    assert (
        fake.calls.count("mdl.execute_async" if async_mode else "mdl.execute") == 3
    )  # 5 images, batch 2, padded
    assert fake.calls[-1] == "finalize"
    _assert_all_released(fake)
