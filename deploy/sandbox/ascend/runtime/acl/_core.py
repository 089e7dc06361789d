"""Process state of the simulated pyACL: return codes, fault injection, contexts, handles, memory.

Memory model. Host memory is real process memory: ``rt.malloc_host`` allocates a ctypes buffer,
``util.bytes_to_ptr``/``numpy_to_ptr`` give the real address of a bytes object / array (and, as
in pyACL, a copy into that address changes the object). Device memory is a separate, simulated
address space (addresses from ``DEVICE_BASE`` up, far above any user-space pointer) backed by
bytearrays; only ``rt.memcpy`` moves bytes between the two, after checking both ranges. Host
regions are known to the runtime only when they came from malloc_host or a *_to_ptr call (the
last ``_HOST_KEEP`` of those are tracked and kept alive); a copy touching anything else fails.

Contexts are per thread (``threading.local``): set_device gives the calling thread the device's
default context, create_context makes the new one current there, set_context binds one; a call
that needs a context from a thread with none returns ACL_ERROR_RT_CONTEXT_NULL (107002).

Faults: ``ACL_SIM_FAIL="malloc:3,memcpy:5,execute:2:507011"`` makes the 3rd malloc, 5th memcpy
and 2nd execute (counted per process) return their code (the default below, or the one given)
without doing anything. Python 3.7.
"""

import os
import sys
import threading
from collections import OrderedDict

ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_INVALID_MODEL_ID = 100011
ACL_ERROR_PARSE_MODEL = 100013
ACL_ERROR_MODEL_INPUT_NOT_MATCH = 100017
ACL_ERROR_MODEL_OUTPUT_NOT_MATCH = 100018
ACL_ERROR_MODEL_NOT_DYNAMIC = 100019
ACL_ERROR_FORMAT_NOT_MATCH = 100027
ACL_ERROR_REPEAT_SUBSCRIBE = 100033
ACL_ERROR_STREAM_NOT_SUBSCRIBE = 100034
ACL_ERROR_THREAD_NOT_SUBSCRIBE = 100035
ACL_ERROR_WAIT_CALLBACK_TIMEOUT = 100036
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED = 148051
ACL_ERROR_UNSUPPORTED_JPEG = 148052
ACL_ERROR_MEMORY_ADDRESS_UNALIGNED = 200003
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_INVALID_HANDLE = 107017
ACL_ERROR_RT_MEMORY_ALLOCATION = 207001
ACL_ERROR_RT_NO_STREAM_RESOURCE = 207008
ACL_ERROR_RT_INTERNAL_ERROR = 507000
ACL_ERROR_RT_MODEL_EXECUTE = 507011
ACL_ERROR_RT_AICPU_EXCEPTION = 507018
ACL_ERROR_FAILURE = 500001
ACL_ERROR_RT_SYS_DMA = 507013
ACL_ERROR_RT_SOC_VERSION = 507008
ACL_ERROR_RT_DEV_SETUP_ERROR = 507033
ACL_ERROR_RT_STREAM_SYNC_TIMEOUT = 507046

ACL_DEVICE, ACL_HOST = 0, 1
DEVICE_BASE = 0x1000000000000000
_HOST_KEEP = 256

# What an injected fault returns when ACL_SIM_FAIL gives no code.
FAULT_CODES = {
    "malloc": ACL_ERROR_RT_MEMORY_ALLOCATION,
    "malloc_host": ACL_ERROR_RT_MEMORY_ALLOCATION,
    "memcpy": ACL_ERROR_RT_SYS_DMA,
    "execute": ACL_ERROR_RT_MODEL_EXECUTE,
    "execute_async": ACL_ERROR_RT_MODEL_EXECUTE,
    "launch_callback": ACL_ERROR_RT_INTERNAL_ERROR,
    "set_device": ACL_ERROR_RT_DEV_SETUP_ERROR,
    "create_stream": ACL_ERROR_RT_NO_STREAM_RESOURCE,
    "load_from_file": ACL_ERROR_PARSE_MODEL,
    "dvpp_malloc": ACL_ERROR_RT_MEMORY_ALLOCATION,
}


def _parse_faults(text):
    faults = {}
    for item in (text or "").split(","):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) < 2 or not parts[0]:
            continue
        code = int(parts[2]) if len(parts) > 2 else FAULT_CODES.get(parts[0], ACL_ERROR_RT_INTERNAL_ERROR)
        faults.setdefault(parts[0], {})[int(parts[1])] = code
    return faults


class _State:
    def __init__(self):
        self.lock = threading.RLock()
        self.initialised = False
        self.finalized = False
        self.local = threading.local()
        self.faults = _parse_faults(os.environ.get("ACL_SIM_FAIL"))
        self.counts = {}
        self.next_handle = 0x5000
        self.handles = {}  # handle -> (kind, object)
        self.device_mem = {}  # base -> bytearray
        self.device_bases = []  # sorted
        self.dvpp_mem = set()  # bases of the device regions acl.media.dvpp_malloc gave
        self.next_device = DEVICE_BASE
        self.host_mem = {}  # malloc_host base -> ctypes buffer
        self.host_views = OrderedDict()  # bytes_to_ptr / numpy_to_ptr base -> (size, object)
        self.devices = {}  # device id -> default context handle
        self.run_mode = ACL_HOST if os.environ.get("ACL_SIM_RUN_MODE", "device") == "host" else ACL_DEVICE
        self.device_count = int(os.environ.get("ACL_SIM_DEVICE_COUNT", "1"))
        self.soc_version = os.environ.get("ACL_SIM_SOC_VERSION", "Ascend310")


STATE = _State()


def set_error(message):
    """Remember the last failure of this thread (acl.get_recent_err_msg) and log it to stderr
    when ACL_SIM_LOG is set (the real runtime writes plog files)."""
    STATE.local.err = message
    if os.environ.get("ACL_SIM_LOG"):
        sys.stderr.write(f"[ACL-SIM ERROR] {message}\n")


def fail(code, message):
    set_error(f"{message} (ret={code})")
    return code


def fault(name):
    """The injected code for this call of ``name``, or None; counts every call."""
    with STATE.lock:
        n = STATE.counts.get(name, 0) + 1
        STATE.counts[name] = n
        code = STATE.faults.get(name, {}).get(n)
    if code is not None:
        set_error(f"injected fault: {name} call {n} fails")
    return code


def check_ready(need_context=True):
    """0, or the code a call must return: not initialised / finalized / no current context."""
    if not STATE.initialised:
        return fail(ACL_ERROR_UNINITIALIZE, "acl.init has not been called (or acl.finalize has)")
    if need_context and current_context() is None:
        return fail(ACL_ERROR_RT_CONTEXT_NULL, "no current context in this thread: call acl.rt.set_context")
    return ACL_SUCCESS


def current_context():
    ctx = getattr(STATE.local, "context", None)
    if ctx is not None and ctx not in STATE.handles:
        STATE.local.context = None
        return None
    return ctx


def new_handle(kind, obj):
    with STATE.lock:
        STATE.next_handle += 16
        STATE.handles[STATE.next_handle] = (kind, obj)
        return STATE.next_handle


def lookup(kind, handle):
    """The object behind ``handle`` if it is a live handle of ``kind``, else None."""
    try:
        entry = STATE.handles.get(handle)
    except TypeError:
        return None
    if entry is None or entry[0] != kind:
        return None
    return entry[1]


def drop(kind, handle):
    with STATE.lock:
        if lookup(kind, handle) is None:
            return False
        del STATE.handles[handle]
        return True
