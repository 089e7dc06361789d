"""pyACL's numbers as the acl backend uses them: return codes and their names, data types, tensor
formats, memcpy kinds; :func:`check` and :func:`collect` turn a return code into a BackendError or a
teardown note. From acl_base.h / acl_rt.h (CANN 5.x/6.x) and acllite's constants.py.

Shared by acl.py, acl_buffers.py and acl_async.py. Stdlib only. Python 3.7 compatible.
"""

from .base import BackendError

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_THREAD_NOT_SUBSCRIBE = 100035
ACL_ERROR_WAIT_CALLBACK_TIMEOUT = 100036
ACL_DEVICE, ACL_HOST = 0, 1
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_CALLBACK_BLOCK = 1
MBATCH_INPUT = "ascend_mbatch_shape_data"
NPY_TYPES = {
    "bool": 0, "int8": 1, "uint8": 2, "int16": 3, "uint16": 4, "int32": 5, "uint32": 6, "int64": 7,
    "uint64": 8, "float32": 11, "float64": 12, "float16": 23,
}  # fmt: skip
# aclDataType -> numpy dtype name (acl_base.h; acllite constants.py)
ACL_DTYPES = {
    0: "float32", 1: "float16", 2: "int8", 3: "int32", 4: "uint8", 6: "int16", 7: "uint16",
    8: "uint32", 9: "int64", 10: "uint64", 11: "float64", 12: "bool",
}  # fmt: skip
ACL_FORMATS = {0: "NCHW", 1: "NHWC"}
ERROR_NAMES = {
    100000: "ACL_ERROR_INVALID_PARAM", 100001: "ACL_ERROR_UNINITIALIZE", 100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100003: "ACL_ERROR_INVALID_FILE", 100011: "ACL_ERROR_INVALID_MODEL_ID", 100012: "ACL_ERROR_DESERIALIZE_MODEL",
    100013: "ACL_ERROR_PARSE_MODEL", 100017: "ACL_ERROR_MODEL_INPUT_NOT_MATCH",
    100018: "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH", 100019: "ACL_ERROR_MODEL_NOT_DYNAMIC",
    100033: "ACL_ERROR_REPEAT_SUBSCRIBE", 100034: "ACL_ERROR_STREAM_NOT_SUBSCRIBE",
    100035: "ACL_ERROR_THREAD_NOT_SUBSCRIBE", 100036: "ACL_ERROR_WAIT_CALLBACK_TIMEOUT",
    100037: "ACL_ERROR_REPEAT_FINALIZE", 200000: "ACL_ERROR_BAD_ALLOC", 200002: "ACL_ERROR_INVALID_DEVICE",
    107000: "ACL_ERROR_RT_PARAM_INVALID", 107001: "ACL_ERROR_RT_INVALID_DEVICEID",
    107002: "ACL_ERROR_RT_CONTEXT_NULL", 107003: "ACL_ERROR_RT_STREAM_CONTEXT",
    107004: "ACL_ERROR_RT_MODEL_CONTEXT", 107011: "ACL_ERROR_RT_STREAM_SUBSCRIBE",
    107012: "ACL_ERROR_RT_THREAD_SUBSCRIBE", 107015: "ACL_ERROR_RT_STREAM_NO_CB_REG",
    107017: "ACL_ERROR_RT_INVALID_HANDLE", 107019: "ACL_ERROR_RT_WAIT_TIMEOUT", 107020: "ACL_ERROR_RT_TASK_TIMEOUT",
    207000: "ACL_ERROR_RT_FEATURE_NOT_SUPPORT", 207001: "ACL_ERROR_RT_MEMORY_ALLOCATION",
    207002: "ACL_ERROR_RT_MEMORY_FREE", 207004: "ACL_ERROR_RT_NO_DEVICE", 207008: "ACL_ERROR_RT_NO_STREAM_RESOURCE",
    207018: "ACL_ERROR_RT_DEVICE_OOM", 500002: "ACL_ERROR_GE_FAILURE", 500003: "ACL_ERROR_RT_FAILURE",
    507000: "ACL_ERROR_RT_INTERNAL_ERROR", 507001: "ACL_ERROR_RT_TS_ERROR", 507004: "ACL_ERROR_RT_STREAM_NOT_COMPLETE",
    507008: "ACL_ERROR_RT_SOC_VERSION", 507010: "ACL_ERROR_RT_LOST_HEARTBEAT", 507011: "ACL_ERROR_RT_MODEL_EXECUTE",
    507012: "ACL_ERROR_RT_REPORT_TIMEOUT", 507013: "ACL_ERROR_RT_SYS_DMA", 507014: "ACL_ERROR_RT_AICORE_TIMEOUT",
    507015: "ACL_ERROR_RT_AICORE_EXCEPTION", 507033: "ACL_ERROR_RT_DEV_SETUP_ERROR",
    507046: "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT", 507899: "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
}  # fmt: skip


def error_text(ret):
    """`` (ACL_ERROR_...)`` for a return code pyACL documents, else empty."""
    name = ERROR_NAMES.get(ret, "")
    return f" ({name})" if name else ""


def check(what, ret):
    """Raise a BackendError naming the call and the code unless ``ret`` is ACL_SUCCESS."""
    if ret != ACL_SUCCESS:
        raise BackendError(f"{what} failed: ret={ret}{error_text(ret)}")


def collect(errors, what, call):
    """Teardown: make the call; a failure (a raise or a return code) is noted in ``errors``, never raised."""
    try:
        ret = call()
    except Exception as exc:
        errors.append(f"{what} raised {exc}")
        return
    if isinstance(ret, tuple):  # a few calls return (value, ret)
        ret = ret[-1]
    if ret not in (None, ACL_SUCCESS):
        errors.append(f"{what} ret={ret}{error_text(ret)}")


def dtype_name(code, what):
    """numpy dtype name of an aclDataType; a clear error for one the agent cannot handle."""
    try:
        return ACL_DTYPES[code]
    except (KeyError, TypeError):
        raise BackendError(f"{what} has aclDataType {code!r}, which the agent does not support") from None
