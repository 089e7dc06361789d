"""``acl.rt``: devices, contexts, streams, memory and callbacks of the simulated runtime.

Return shapes follow pyACL: creators return ``(value, ret)``, actions return ``ret``. Every call
but get_run_mode/get_device_count needs acl.init and (except set_device/create_context/
set_context/reset_device) a current context in the calling thread. Python 3.7.
"""

from . import _core as C
from . import _memory as M
from . import _streams as S
from ._core import STATE

ACL_MEMCPY_KINDS = (
    0,
    1,
    2,
    3,
    4,
)  # HOST_TO_HOST .. DEVICE_TO_DEVICE, DEFAULT (all inferred from the pointers)


def get_run_mode():
    """(ACL_DEVICE=0 on the board, or ACL_HOST=1 with ACL_SIM_RUN_MODE=host, ret). Needs nothing."""
    return STATE.run_mode, C.ACL_SUCCESS


def get_device_count():
    return STATE.device_count, C.ACL_SUCCESS


def set_device(device_id):
    """Open a device; the calling thread gets the device's default context."""
    ret = C.check_ready(need_context=False) or C.fault("set_device")
    if ret:
        return ret
    if not isinstance(device_id, int) or not 0 <= device_id < STATE.device_count:
        return C.fail(C.ACL_ERROR_RT_INVALID_DEVICEID, f"set_device: no device {device_id}")
    with STATE.lock:
        ctx = STATE.devices.get(device_id)
        if ctx is None:
            ctx = C.new_handle("context", {"device": device_id, "default": True})
            STATE.devices[device_id] = ctx
    STATE.local.context = ctx
    return C.ACL_SUCCESS


def reset_device(device_id):
    ret = C.check_ready(need_context=False)
    if ret:
        return ret
    with STATE.lock:
        ctx = STATE.devices.pop(device_id, None)
    if ctx is None:
        return C.fail(C.ACL_ERROR_RT_INVALID_DEVICEID, f"reset_device: device {device_id} is not set")
    C.drop("context", ctx)
    return C.ACL_SUCCESS


def create_context(device_id):
    ret = C.check_ready(need_context=False)
    if ret:
        return None, ret
    if device_id not in STATE.devices:
        return None, C.fail(C.ACL_ERROR_RT_INVALID_DEVICEID, f"create_context: set_device({device_id}) first")
    ctx = C.new_handle("context", {"device": device_id, "default": False})
    STATE.local.context = ctx
    return ctx, C.ACL_SUCCESS


def set_context(context):
    ret = C.check_ready(need_context=False) or C.fault("set_context")
    if ret:
        return ret
    if C.lookup("context", context) is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"set_context: {context!r} is not a live context")
    STATE.local.context = context
    return C.ACL_SUCCESS


def get_context():
    ctx = C.current_context()
    if ctx is None:
        return None, C.fail(C.ACL_ERROR_RT_CONTEXT_NULL, "get_context: no current context")
    return ctx, C.ACL_SUCCESS


def destroy_context(context):
    ret = C.check_ready(need_context=False)
    if ret:
        return ret
    obj = C.lookup("context", context)
    if obj is None or obj["default"]:
        return C.fail(
            C.ACL_ERROR_INVALID_PARAM,
            f"destroy_context: {context!r} is not a context made by create_context",
        )
    C.drop("context", context)
    if getattr(STATE.local, "context", None) == context:
        STATE.local.context = None
    return C.ACL_SUCCESS


def create_stream():
    ret = C.check_ready() or C.fault("create_stream")
    if ret:
        return None, ret
    return C.new_handle("stream", S.Stream(C.current_context())), C.ACL_SUCCESS


def destroy_stream(stream):
    ret = C.check_ready()
    if ret:
        return ret
    obj = C.lookup("stream", stream)
    if obj is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"destroy_stream: {stream!r} is not a live stream")
    obj.synchronize()
    obj.close()
    C.drop("stream", stream)
    return C.ACL_SUCCESS


def synchronize_stream(stream):
    ret = C.check_ready()
    if ret:
        return ret
    obj = C.lookup("stream", stream)
    if obj is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"synchronize_stream: {stream!r} is not a live stream")
    return obj.synchronize()


def malloc(size, policy):
    """(device pointer, ret); the memory is zeroed. ``policy`` must be 0..2 (HUGE_FIRST/ONLY, NORMAL_ONLY)."""
    ret = C.check_ready() or C.fault("malloc")
    if ret:
        return 0, ret
    if not isinstance(size, int) or size <= 0 or policy not in (0, 1, 2):
        return 0, C.fail(C.ACL_ERROR_INVALID_PARAM, f"malloc: bad size {size!r} or policy {policy!r}")
    return M.device_alloc(size), C.ACL_SUCCESS


def free(ptr):
    ret = C.check_ready()
    if ret:
        return ret
    if not M.device_free(ptr):
        what = "memory from acl.media.dvpp_malloc: free it with dvpp_free" if M.is_dvpp(ptr) else "device memory from malloc"
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"free: {ptr!r} is not {what}")
    return C.ACL_SUCCESS


def malloc_host(size):
    ret = C.check_ready() or C.fault("malloc_host")
    if ret:
        return 0, ret
    if not isinstance(size, int) or size <= 0:
        return 0, C.fail(C.ACL_ERROR_INVALID_PARAM, f"malloc_host: bad size {size!r}")
    return M.host_alloc(size), C.ACL_SUCCESS


def free_host(ptr):
    ret = C.check_ready()
    if ret:
        return ret
    if not M.host_free(ptr):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"free_host: {ptr!r} is not host memory from malloc_host")
    return C.ACL_SUCCESS


def memcpy(dst, dest_max, src, count, kind):
    """Synchronous copy; ``kind`` is reserved (the direction comes from the pointers) but must be
    a known value. count > dest_max, or a range outside allocated memory, copies nothing."""
    ret = C.check_ready() or C.fault("memcpy")
    if ret:
        return ret
    if kind not in ACL_MEMCPY_KINDS:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"memcpy: unknown kind {kind!r}")
    return M.copy(dst, dest_max, src, count)


def subscribe_report(thread_id, stream):
    ret = C.check_ready()
    if ret:
        return ret
    obj = C.lookup("stream", stream)
    if obj is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"subscribe_report: {stream!r} is not a live stream")
    with S.REPORTS:
        if obj.subscriber is not None:
            return C.fail(
                C.ACL_ERROR_REPEAT_SUBSCRIBE, "subscribe_report: the stream already has a report thread"
            )
        obj.subscriber = thread_id
        S.REPORTS.notify_all()
    return C.ACL_SUCCESS


def unsubscribe_report(thread_id, stream):
    ret = C.check_ready()
    if ret:
        return ret
    obj = C.lookup("stream", stream)
    with S.REPORTS:
        if obj is None or obj.subscriber != thread_id:
            return C.fail(
                C.ACL_ERROR_STREAM_NOT_SUBSCRIBE, "unsubscribe_report: thread is not subscribed to it"
            )
        obj.subscriber = None
        S.REPORTS.notify_all()
    return C.ACL_SUCCESS


def launch_callback(fn, user_data, block_type, stream):
    """Queue ``fn(user_data)`` on the stream, after the work queued before it. It runs in the
    subscribed thread's process_report. Only ACL_CALLBACK_BLOCK (1) is supported on Ascend 310."""
    ret = C.check_ready() or C.fault("launch_callback")
    if ret:
        return ret
    obj = C.lookup("stream", stream)
    if obj is None or not callable(fn):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "launch_callback: bad stream or callback")
    if block_type != 1:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "launch_callback: only ACL_CALLBACK_BLOCK (1) on Ascend310")
    if obj.subscriber is None:
        return C.fail(
            C.ACL_ERROR_STREAM_NOT_SUBSCRIBE, "launch_callback: no report thread subscribed to the stream"
        )
    obj.put(S.callback_task(obj, fn, user_data, block_type))
    return C.ACL_SUCCESS


def process_report(timeout):
    ret = C.check_ready()
    if ret:
        return ret
    return S.process_report(timeout)
