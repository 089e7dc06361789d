"""``acl.media``: the DVPP of the simulated runtime (JPEGD, JPEGE, VPC resize/crop/paste), Ascend 310 rules.

Return shapes follow pyACL: creators of descriptions and configs return the handle (0 when
they fail), ``dvpp_malloc`` / the predict and info calls return ``(value..., ret)``, actions
return ``ret``; getters return the value (0 for a bad handle, as the C API does).

Memory: ``dvpp_malloc`` gives device memory (the simulated device address space), 128-byte
aligned, its size rounded up to a multiple of 32 plus 32 bytes (documented); JPEGD/JPEGE/VPC
take their input and output pictures only in such memory. ``dvpp_free`` frees only it and
``acl.rt.free`` refuses it. Work queued with the ``*_async`` calls runs on the stream's device
thread, in order with model executions, and is visible after ``acl.rt.synchronize_stream``.

Failures: what the descriptions show is wrong (a handle, a format, a stride, a buffer too small
or not from dvpp_malloc) is returned by the call itself with ACL_ERROR_INVALID_PARAM (100000),
and nothing is queued; a misaligned JPEG input address gives ACL_ERROR_MEMORY_ADDRESS_UNALIGNED
(200003); a JPEG coding JPEGD does not decode gives ACL_ERROR_UNSUPPORTED_JPEG (148052). Data
that turns out broken on the device (a corrupt JPEG body, an encoding larger than its buffer)
sets the output description's ret code and makes synchronize_stream return
ACL_ERROR_RT_AICPU_EXCEPTION (507018): DVPP V1 tasks are AI CPU kernels. ``ACL_SIM_FAIL`` faults:
``dvpp_malloc``, ``create_channel``, ``jpeg_decode``, ``jpeg_encode``, ``vpc_resize``,
``vpc_crop``, ``vpc_crop_and_paste``, ``jpeg_predict_dec_size``, ``jpeg_get_image_info``.
Python 3.7.
"""

from . import _core as C
from . import _dvpp as D
from . import _memory as M
from ._dvpp import (  # noqa: F401  (acl.media.* names)
    dvpp_jpeg_decode_async,
    dvpp_jpeg_encode_async,
    dvpp_jpeg_get_image_info,
    dvpp_jpeg_get_image_info_v2,
    dvpp_jpeg_predict_dec_size,
    dvpp_jpeg_predict_enc_size,
    dvpp_vpc_crop_and_paste_async,
    dvpp_vpc_crop_async,
    dvpp_vpc_crop_resize_async,
    dvpp_vpc_resize_async,
)

# acldvppPixelFormat values apps pass (constants.py of acllite has them too)
PIXEL_FORMAT_YUV_400 = 0
PIXEL_FORMAT_YUV_SEMIPLANAR_420 = 1
PIXEL_FORMAT_YVU_SEMIPLANAR_420 = 2
PIXEL_FORMAT_UNKNOWN = 10000


def _align(value, to):
    return (value + to - 1) // to * to


def dvpp_malloc(size):
    """(device pointer, ret): zeroed DVPP memory, 128-byte aligned; ALIGN_UP(size, 32) + 32 bytes
    are reserved, as documented for acldvppMalloc."""
    ret = C.check_ready() or C.fault("dvpp_malloc")
    if ret:
        return 0, ret
    if not isinstance(size, int) or size <= 0:
        return 0, C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_malloc: bad size {size!r}")
    return M.device_alloc(_align(size, 32) + 32, dvpp=True), C.ACL_SUCCESS


def dvpp_free(ptr):
    ret = C.check_ready()
    if ret:
        return ret
    if not M.device_free(ptr, dvpp=True):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_free: {ptr!r} is not memory from acl.media.dvpp_malloc")
    return C.ACL_SUCCESS


# ---------------------------------------------------------------- channels


def dvpp_create_channel_desc():
    return C.new_handle(D.CHANNEL, {"created": False, "id": next(D.CHANNEL_IDS)})


def dvpp_destroy_channel_desc(channel_desc):
    """ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED (148051) while its channel is not destroyed (documented)."""
    obj = C.lookup(D.CHANNEL, channel_desc)
    if obj is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_destroy_channel_desc: bad channel desc {channel_desc!r}")
    if obj["created"]:
        return C.fail(
            C.ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED,
            "dvpp_destroy_channel_desc: destroy the channel first (dvpp_destroy_channel)",
        )
    C.drop(D.CHANNEL, channel_desc)
    return C.ACL_SUCCESS


def dvpp_create_channel(channel_desc):
    ret = C.check_ready() or C.fault("create_channel")
    if ret:
        return ret
    obj = C.lookup(D.CHANNEL, channel_desc)
    if obj is None or obj["created"]:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "dvpp_create_channel: bad channel desc, or its channel exists")
    obj["created"] = True
    return C.ACL_SUCCESS


def dvpp_destroy_channel(channel_desc):
    ret = C.check_ready()
    if ret:
        return ret
    obj = C.lookup(D.CHANNEL, channel_desc)
    if obj is None or not obj["created"]:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "dvpp_destroy_channel: no channel was created with this desc")
    obj["created"] = False
    return C.ACL_SUCCESS


def dvpp_get_channel_desc_channel_id(channel_desc):
    obj = C.lookup(D.CHANNEL, channel_desc)
    return obj["id"] if obj else 0


# ---------------------------------------------------------------- picture descriptions


def dvpp_create_pic_desc():
    return C.new_handle(D.PIC, D.PicDesc())


def dvpp_destroy_pic_desc(pic_desc):
    if not C.drop(D.PIC, pic_desc):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_destroy_pic_desc: bad pic desc {pic_desc!r}")
    return C.ACL_SUCCESS


def _setter(field):
    def setter(pic_desc, value):
        obj = C.lookup(D.PIC, pic_desc)
        if obj is None or not isinstance(value, int) or value < 0:
            return C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_set_pic_desc_{field}: bad desc or value {value!r}")
        setattr(obj, field, value)
        return C.ACL_SUCCESS

    setter.__name__ = f"dvpp_set_pic_desc_{field}"
    return setter


def _getter(field):
    def getter(pic_desc):
        obj = C.lookup(D.PIC, pic_desc)
        return getattr(obj, field) if obj is not None else 0

    getter.__name__ = f"dvpp_get_pic_desc_{field}"
    return getter


dvpp_set_pic_desc_data = _setter("data")
dvpp_set_pic_desc_size = _setter("size")
dvpp_set_pic_desc_format = _setter("format")
dvpp_set_pic_desc_width = _setter("width")
dvpp_set_pic_desc_height = _setter("height")
dvpp_set_pic_desc_width_stride = _setter("width_stride")
dvpp_set_pic_desc_height_stride = _setter("height_stride")
dvpp_get_pic_desc_data = _getter("data")
dvpp_get_pic_desc_size = _getter("size")
dvpp_get_pic_desc_format = _getter("format")
dvpp_get_pic_desc_width = _getter("width")
dvpp_get_pic_desc_height = _getter("height")
dvpp_get_pic_desc_width_stride = _getter("width_stride")
dvpp_get_pic_desc_height_stride = _getter("height_stride")
dvpp_get_pic_desc_ret_code = _getter("ret_code")


# ---------------------------------------------------------------- configs


def dvpp_create_resize_config():
    return C.new_handle(D.RESIZE, {"interpolation": 0})


def dvpp_destroy_resize_config(resize_config):
    return _destroy(D.RESIZE, resize_config, "dvpp_destroy_resize_config")


def dvpp_set_resize_config_interpolation(resize_config, interpolation):
    """0 (default, Huawei's high-order filter), 1 bilinear (OpenCV), 2 nearest (OpenCV), 3 bilinear
    (TensorFlow), 4 nearest (TensorFlow): the values the Ascend 310 takes."""
    obj = C.lookup(D.RESIZE, resize_config)
    if obj is None or interpolation not in (0, 1, 2, 3, 4):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_set_resize_config_interpolation: bad {interpolation!r}")
    obj["interpolation"] = interpolation
    return C.ACL_SUCCESS


def dvpp_get_resize_config_interpolation(resize_config):
    obj = C.lookup(D.RESIZE, resize_config)
    return obj["interpolation"] if obj else 0


def dvpp_create_roi_config(left, right, top, bottom):
    """A region by its inclusive offsets (width = right - left + 1). Checked when used: on the 310
    left/top must be even and right/bottom odd, a paste region's left 16-aligned."""
    if not all(isinstance(v, int) and v >= 0 for v in (left, right, top, bottom)):
        C.fail(C.ACL_ERROR_INVALID_PARAM, "dvpp_create_roi_config: offsets must be non-negative integers")
        return 0
    return C.new_handle(D.ROI, [left, right, top, bottom])


def dvpp_destroy_roi_config(roi_config):
    return _destroy(D.ROI, roi_config, "dvpp_destroy_roi_config")


def dvpp_set_roi_config(roi_config, left, right, top, bottom):
    obj = C.lookup(D.ROI, roi_config)
    if obj is None or not all(isinstance(v, int) and v >= 0 for v in (left, right, top, bottom)):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "dvpp_set_roi_config: bad config or offsets")
    obj[:] = [left, right, top, bottom]
    return C.ACL_SUCCESS


def _roi_setter(index, name):
    def setter(roi_config, value):
        obj = C.lookup(D.ROI, roi_config)
        if obj is None or not isinstance(value, int) or value < 0:
            return C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_set_roi_config_{name}: bad config or value")
        obj[index] = value
        return C.ACL_SUCCESS

    setter.__name__ = f"dvpp_set_roi_config_{name}"
    return setter


dvpp_set_roi_config_left = _roi_setter(0, "left")
dvpp_set_roi_config_right = _roi_setter(1, "right")
dvpp_set_roi_config_top = _roi_setter(2, "top")
dvpp_set_roi_config_bottom = _roi_setter(3, "bottom")


def dvpp_create_jpege_config():
    return C.new_handle(D.JPEGE, {"level": 100})


def dvpp_destroy_jpege_config(jpege_config):
    return _destroy(D.JPEGE, jpege_config, "dvpp_destroy_jpege_config")


def dvpp_set_jpege_config_level(jpege_config, level):
    """Encoding quality 0..100 (100: best, the default here)."""
    obj = C.lookup(D.JPEGE, jpege_config)
    if obj is None or not isinstance(level, int) or not 0 <= level <= 100:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"dvpp_set_jpege_config_level: bad config or level {level!r}")
    obj["level"] = level
    return C.ACL_SUCCESS


def dvpp_get_jpege_config_level(jpege_config):
    obj = C.lookup(D.JPEGE, jpege_config)
    return obj["level"] if obj else 0


def _destroy(kind, handle, what):
    if not C.drop(kind, handle):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"{what}: bad handle {handle!r}")
    return C.ACL_SUCCESS
