"""The DVPP operations behind ``acl.media``: the checks each call makes and the work its stream
does (see media.py for the conventions). Limits are the Ascend 310's (acldvpp "functions and
restrictions" pages): JPEGD output stride 128 x 16, VPC strides 16 x 2, YUV420SP sizes
stride_w * stride_h * 3 / 2, VPC pictures 10x6 to 4096x4096 (inputs to 8192 for YUV420SP),
scaling 1/32 to 16, odd input sizes rounded down to even.

Timing mode (``ACL_SIM_DEVICE_MS_PER_IMAGE`` set, as for the NPU in _model): a DVPP task takes the
device time of its unit and no host CPU: the stream's device thread sleeps until the unit's own
timeline says the task has ended (:class:`Engine`), and the picture is not computed (the output
memory keeps what it held; the output description gets the JPEG's size and format as on the
device), like a model execution in timing mode; ``ACL_SIM_TIMING_COMPUTE=1`` computes it too (on
the device thread, after its device time: host CPU of the simulator, not of the device). What the
call itself checks (the descriptions, the JPEG header) stays on the calling thread, as the real
runtime checks on the host. Unit times, from the 310's documented performance ("JPEGD/VPC
Performance Specifications"): JPEGD decodes 1080p at 128 fps a channel and 256 fps with two or
more channels, so two units of 1920 x 1080 x 128 pixels/s, by the JPEG's pixels; VPC 1080p at 360
fps a channel, 12 units of 1920 x 1080 x 360 pixels/s, by the larger of the input and output
pictures (the documented reference resolution). Python 3.7.
"""

import functools
import itertools
import os
import struct
import threading
import time

from . import _core as C
from . import _jpeg as J
from . import _memory as M
from . import _vpc as V
from ._core import STATE

CHANNEL, PIC, RESIZE, ROI, JPEGE = "dvpp_channel", "dvpp_pic", "dvpp_resize", "dvpp_roi", "dvpp_jpege"
NV12, NV21, UNKNOWN = 1, 2, 10000
_SIZE_FACTOR = {1: (3, 2), 2: (3, 2), 3: (2, 1), 4: (2, 1), 5: (3, 1), 6: (3, 1), 1000: (2, 1), 1001: (2, 1)}
_CSS_FORMAT = {J.CSS_420: NV21, J.CSS_GRAY: NV21, J.CSS_422: 4, J.CSS_444: 6, J.CSS_440: 1001}
CHANNEL_IDS = itertools.count(1)


class PicDesc:
    """acldvppPicDesc. A new one has format PIXEL_FORMAT_UNKNOWN (a guess: the C struct's default
    is not documented) and zeros elsewhere."""

    __slots__ = ("data", "size", "format", "width", "height", "width_stride", "height_stride", "ret_code")

    def __init__(self):
        self.data = self.size = self.width = self.height = self.width_stride = self.height_stride = 0
        self.format, self.ret_code = UNKNOWN, 0


class Refused(Exception):
    """A call's failure: ``code``, and the message (None: already recorded, e.g. an injected fault)."""

    def __init__(self, code, message=None):
        Exception.__init__(self, message or "")
        self.code, self.message = code, message


def _bad(message):
    return Refused(C.ACL_ERROR_INVALID_PARAM, message)


def api(*empty):
    """Turn a Refused into the pyACL return: ``ret``, or ``empty + (ret,)`` for calls returning values."""

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args):
            try:
                return fn(*args)
            except Refused as exc:
                code = exc.code if exc.message is None else C.fail(exc.code, f"{fn.__name__}: {exc.message}")
                return empty + (code,) if empty else code

        return call

    return wrap


def _align(value, to):
    return (value + to - 1) // to * to


def _ready(fault, channel_desc, stream):
    """The stream object of an async call, once init, context, fault, channel and stream are fine."""
    code = C.check_ready() or C.fault(fault)
    if code:
        raise Refused(code)
    channel = C.lookup(CHANNEL, channel_desc)
    if channel is None or not channel["created"]:
        raise _bad("no channel: dvpp_create_channel_desc, then dvpp_create_channel")
    stream_obj = C.lookup("stream", stream)
    if stream_obj is None:
        raise _bad(f"{stream!r} is not a live stream")
    return stream_obj


def _handle(kind, handle, what):
    obj = C.lookup(kind, handle)
    if obj is None:
        raise _bad(f"{what} {handle!r} is not a live {kind.replace('_', ' ')}")
    return obj


def dvpp_buffer(ptr, size, what):
    """(bytearray, offset) of ``size`` bytes of dvpp_malloc memory at ``ptr``; Refused otherwise."""
    place = M.dvpp_place(ptr, size)
    if place is not None:
        return place[0], place[1]
    found = M.locate(ptr, 1)
    if found is None:
        raise _bad(f"{what} {ptr!r} is not allocated memory")
    if found[0] == "host":
        raise _bad(f"{what} {ptr:#x} is host memory: DVPP takes memory from acl.media.dvpp_malloc")
    if M.dvpp_place(ptr, 1) is None:
        raise _bad(f"{what} {ptr:#x} is acl.rt.malloc memory: DVPP takes memory from acl.media.dvpp_malloc")
    raise _bad(f"{what}: {size} bytes at {ptr:#x} run past the end of its dvpp_malloc region")


def _picture_memory(pic, need, what):
    if pic.size < need:
        raise _bad(f"{what} size {pic.size} is less than width_stride * height_stride * 3 / 2 = {need}")
    buf, offset = dvpp_buffer(pic.data, need, f"{what} data")
    return buf, offset


def vpc_picture(pic, what, output):
    """The checked (buf, offset, ws, hs) of a YUV420SP VPC picture and its usable (w, h)."""
    if pic.format not in (NV12, NV21):
        raise _bad(f"{what} format {pic.format}: the simulated VPC takes YUV420SP NV12 (1) / NV21 (2) only")
    w, h, ws, hs = pic.width, pic.height, pic.width_stride, pic.height_stride
    if output and (w % 2 or h % 2):
        raise _bad(f"{what} {w}x{h}: YUV420SP output width and height must be even")
    w, h = w & ~1, h & ~1  # an odd input is rounded down (documented for the 310)
    top = 4096 if output else 8192
    if not (10 <= w <= top and 6 <= h <= top):
        raise _bad(f"{what} {pic.width}x{pic.height} is outside 10x6..{top}x{top}")
    if ws % 16 or ws < pic.width or not 32 <= ws <= top or hs % 2 or hs < pic.height or not 6 <= hs <= top:
        raise _bad(f"{what} stride {ws}x{hs}: width_stride must be a multiple of 16 (32..{top}) >= width, "
                   f"height_stride even >= height")  # fmt: skip
    buf, offset = _picture_memory(pic, ws * hs * 3 // 2, what)
    return (buf, offset, ws, hs), (w, h)


def roi(handle, bound, what, paste=False):
    """(left, top, width, height) of an ROI config inside ``bound`` (w, h), checked as on the 310."""
    left, right, top, bottom = _handle(ROI, handle, what)
    if left % 2 or top % 2 or right % 2 == 0 or bottom % 2 == 0:
        raise _bad(f"{what} ({left}, {right}, {top}, {bottom}): left and top must be even, right and bottom odd")
    if paste and left % 16:
        raise _bad(f"{what}: a paste area's left offset must be a multiple of 16, not {left}")
    w, h = right - left + 1, bottom - top + 1
    if right >= bound[0] or bottom >= bound[1] or w < 10 or h < 6:
        raise _bad(f"{what} {w}x{h} at ({left}, {top}) is smaller than 10x6 or leaves the {bound[0]}x{bound[1]} picture")
    return left, top, w, h


def check_scale(src, dst):
    for a, b in ((src[2], dst[2]), (src[3], dst[3])):
        if not a / 32 <= b <= a * 16:
            raise _bad(f"scaling {src[2]}x{src[3]} to {dst[2]}x{dst[3]} is outside 1/32..16")


class Engine:
    """Timing mode's DVPP unit(s): each task goes to the unit free first and takes ``pixels / rate``
    seconds on that unit's timeline, starting when its stream got to it (``ready_at``) or later; the
    caller (the stream's device thread) sleeps until it ends: no CPU."""

    def __init__(self, units, pixels_per_s):
        self.lock = threading.Lock()
        self.free_at = [0.0] * units
        self.rate = float(pixels_per_s)

    def occupy(self, pixels, ready_at):
        with self.lock:
            unit = min(range(len(self.free_at)), key=self.free_at.__getitem__)
            start = max(self.free_at[unit], ready_at)
            self.free_at[unit] = end = start + pixels / self.rate
        delay = end - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return end


JPEGD = Engine(2, 1920 * 1080 * 128)
VPC = Engine(12, 1920 * 1080 * 360)


def timing():
    """(timing mode on, compute the pictures too)."""
    on = bool(os.environ.get("ACL_SIM_DEVICE_MS_PER_IMAGE"))
    return on, not on or bool(os.environ.get("ACL_SIM_TIMING_COMPUTE"))


def device_task(work, desc=None, engine=None, pixels=0, shape=None):
    """A stream task running ``work()``; a J.JpegError there is the device's failure (507018). In
    timing mode the task first takes ``pixels`` of ``engine``'s device time, and runs ``work`` only
    with ACL_SIM_TIMING_COMPUTE; ``shape()`` then stands in for it (what the description learns).
    Without an engine (JPEGE: not timed) the work always runs."""
    timed, compute = timing()
    timed, compute = timed and engine is not None, compute or engine is None

    def task(ready_at):
        ended = engine.occupy(pixels, ready_at) if timed else None
        try:
            if compute:
                work()
            elif shape is not None:
                shape()
        except J.JpegError as exc:
            C.set_error(f"DVPP task failed on the device: {exc}")
            if desc is not None:
                desc.ret_code = C.ACL_ERROR_RT_AICPU_EXCEPTION
            return C.ACL_ERROR_RT_AICPU_EXCEPTION, time.monotonic()
        if desc is not None:
            desc.ret_code = 0
        return 0, ended if ended is not None and not compute else time.monotonic()

    task.on_caller = not timed  # synchronize_stream may run it on the waiting thread (see _streams)
    return task


# ---------------------------------------------------------------- VPC


@api()
def dvpp_vpc_resize_async(channel_desc, input_desc, output_desc, resize_config, stream):
    """Resize the whole input picture to the output picture's size."""
    stream_obj = _ready("vpc_resize", channel_desc, stream)
    interpolation = _handle(RESIZE, resize_config, "resize config")["interpolation"]
    return _vpc(stream_obj, input_desc, output_desc, None, None, interpolation)


@api()
def dvpp_vpc_crop_async(channel_desc, input_desc, output_desc, crop_area, stream):
    """Crop ``crop_area`` of the input and resize it to the whole output picture."""
    stream_obj = _ready("vpc_crop", channel_desc, stream)
    return _vpc(stream_obj, input_desc, output_desc, crop_area, None, 0)


@api()
def dvpp_vpc_crop_resize_async(channel_desc, input_desc, output_desc, crop_area, resize_config, stream):
    """Crop ``crop_area`` and resize it to the output picture with the config's interpolation."""
    stream_obj = _ready("vpc_crop", channel_desc, stream)
    interpolation = _handle(RESIZE, resize_config, "resize config")["interpolation"]
    return _vpc(stream_obj, input_desc, output_desc, crop_area, None, interpolation)


@api()
def dvpp_vpc_crop_and_paste_async(channel_desc, input_desc, output_desc, crop_area, paste_area, stream):
    """Crop ``crop_area``, resize it to ``paste_area`` and write it there; the rest of the output
    picture keeps what its memory held (an overlay when it held a picture)."""
    stream_obj = _ready("vpc_crop_and_paste", channel_desc, stream)
    return _vpc(stream_obj, input_desc, output_desc, crop_area, paste_area, 0)


def _vpc(stream_obj, input_desc, output_desc, crop_area, paste_area, interpolation):
    src_pic, dst_pic = _handle(PIC, input_desc, "input desc"), _handle(PIC, output_desc, "output desc")
    src, (sw, sh) = vpc_picture(src_pic, "input picture", output=False)
    dst, (dw, dh) = vpc_picture(dst_pic, "output picture", output=True)
    src_region = roi(crop_area, (sw, sh), "crop area") if crop_area is not None else (0, 0, sw, sh)
    dst_region = roi(paste_area, (dw, dh), "paste area", paste=True) if paste_area is not None else (0, 0, dw, dh)
    check_scale(src_region, dst_region)
    swap = src_pic.format != dst_pic.format

    def work():
        V.process(src, src_region, dst, dst_region, interpolation, swap)

    pixels = max(sw * sh, dw * dh)  # the reference resolution: the larger picture
    stream_obj.put(device_task(work, dst_pic, VPC, pixels))
    return C.ACL_SUCCESS


# ---------------------------------------------------------------- JPEG


def _readable(ptr, size, what):
    """A memoryview of ``size`` bytes the host side can read at ``ptr`` (host memory; device memory
    too in ACL_DEVICE run mode, where it is the board's own RAM)."""
    if not isinstance(size, int) or size <= 0:
        raise _bad(f"{what}: bad size {size!r}")
    place = M.locate(ptr, size)
    if place is None:
        raise _bad(f"{what}: {size} bytes at {ptr!r} are not allocated memory")
    if place[0] == "device" and STATE.run_mode != C.ACL_DEVICE:
        raise _bad(f"{what}: {ptr:#x} is device memory, which a host (ACL_HOST run mode) cannot read")
    return M.view(place, size)


def _jpeg_info(data, decodable=False):
    try:
        info = J.parse(data)
        if decodable:
            info.check_decodable()
    except J.JpegError as exc:
        raise Refused(C.ACL_ERROR_UNSUPPORTED_JPEG if exc.unsupported else C.ACL_ERROR_FAILURE, str(exc)) from None
    return info


@api(0, 0, 0)
def dvpp_jpeg_get_image_info(data, size):
    """(width, height, components, ret); ACL_ERROR_UNSUPPORTED_JPEG for a coding JPEGD refuses."""
    width, height, components, _, ret = dvpp_jpeg_get_image_info_v2(data, size)
    return width, height, components, ret


@api(0, 0, 0, J.CSS_UNKNOWN)
def dvpp_jpeg_get_image_info_v2(data, size):
    """(width, height, components, acldvppJpegFormat, ret)."""
    code = C.check_ready(need_context=False) or C.fault("jpeg_get_image_info")
    if code:
        raise Refused(code)
    info = _jpeg_info(_readable(data, size, "JPEG data"), decodable=True)
    return info.width, info.height, info.components, info.css, C.ACL_SUCCESS


@api(0)
def dvpp_jpeg_predict_dec_size(data, size, output_format):
    """(bytes JPEGD needs for the picture, ret): YUV420SP stride_w * stride_h * 3 / 2 with the
    strides aligned to 128 x 16; for the other formats the source layout's factor."""
    code = C.check_ready(need_context=False) or C.fault("jpeg_predict_dec_size")
    if code:
        raise Refused(code)
    info = _jpeg_info(_readable(data, size, "JPEG data"))
    if not (J.MIN_SIDE <= info.width <= J.MAX_SIDE and J.MIN_SIDE <= info.height <= J.MAX_SIDE):
        raise _bad(f"a {info.width}x{info.height} JPEG is outside 32x32..8192x8192")
    fmt = _CSS_FORMAT.get(info.css) if output_format == UNKNOWN else output_format
    if fmt not in _SIZE_FACTOR:
        raise Refused(C.ACL_ERROR_FORMAT_NOT_MATCH, f"output format {output_format} is not one JPEGD writes")
    num, den = _SIZE_FACTOR[fmt]
    return _align(info.width, 128) * _align(info.height, 16) * num // den, C.ACL_SUCCESS


def _jpegd_format(pic, info):
    if pic.format == UNKNOWN:  # "the source's format, V before U": NV21 for 4:2:0 and greyscale
        if _CSS_FORMAT.get(info.css) != NV21:
            raise _bad("PIXEL_FORMAT_UNKNOWN keeps the source's 4:2:2/4:4:4/4:4:0 layout, which the simulated "
                       "JPEGD does not write: set YUV420SP NV12 (1) or NV21 (2)")  # fmt: skip
        return NV21
    if pic.format not in (NV12, NV21):
        raise _bad(f"output format {pic.format}: the simulated JPEGD writes YUV420SP NV12 (1) / NV21 (2) only")
    return pic.format


@api()
def dvpp_jpeg_decode_async(channel_desc, data, size, output_desc, stream):
    """Queue the decode of the JPEG at ``data`` (dvpp_malloc memory, 128-aligned) into the output
    picture; its width/height become the JPEG's when the stream has run it."""
    stream_obj = _ready("jpeg_decode", channel_desc, stream)
    pic = _handle(PIC, output_desc, "output desc")
    if not isinstance(size, int) or size <= 0:
        raise _bad(f"bad JPEG size {size!r}")
    src, src_off = dvpp_buffer(data, size, "JPEG data")
    if data % 128:
        raise Refused(C.ACL_ERROR_MEMORY_ADDRESS_UNALIGNED, f"JPEG data at {data:#x} is not 128-byte aligned")
    info = _jpeg_info(memoryview(src)[src_off : src_off + size], decodable=True)
    if not (J.MIN_SIDE <= info.width <= J.MAX_SIDE and J.MIN_SIDE <= info.height <= J.MAX_SIDE):
        raise _bad(f"a {info.width}x{info.height} JPEG is outside 32x32..8192x8192")
    fmt = _jpegd_format(pic, info)
    ws, hs = pic.width_stride, pic.height_stride
    if ws % 128 or hs % 16 or ws < info.width or hs < info.height:
        raise _bad(f"output stride {ws}x{hs}: JPEGD writes {info.width}x{info.height} with width_stride a multiple "
                   f"of 128 and height_stride of 16 (at least {_align(info.width, 128)}x{_align(info.height, 16)})")  # fmt: skip
    out, out_off = _picture_memory(pic, ws * hs * 3 // 2, "output picture")

    def work():
        jpeg = memoryview(src)[src_off : src_off + size]  # read where it is (the decoder copies it once)
        view = memoryview(out)[out_off : out_off + ws * hs * 3 // 2]
        pic.width, pic.height = J.decode_nv12(jpeg, view, ws, hs, nv21=fmt == NV21)
        pic.format = fmt

    def shape():
        pic.width, pic.height, pic.format = info.width, info.height, fmt

    stream_obj.put(device_task(work, pic, JPEGD, info.width * info.height, shape))
    return C.ACL_SUCCESS


# ---------------------------------------------------------------- JPEGE


def _jpege_input(pic):
    """(buf, offset, ws, hs) of a JPEGE input picture, checked as documented for JPEGE."""
    if pic.format not in (NV12, NV21):
        raise _bad(f"input format {pic.format}: the simulated JPEGE takes YUV420SP NV12 (1) / NV21 (2) only")
    w, h, ws, hs = pic.width, pic.height, pic.width_stride, pic.height_stride
    if w % 2 or h % 2 or not (J.MIN_SIDE <= w <= J.MAX_SIDE and J.MIN_SIDE <= h <= J.MAX_SIDE):
        raise _bad(f"input {w}x{h}: JPEGE takes even sizes in 32x32..8192x8192")
    if ws % 16 or ws < w or not (hs == h or (hs > h and hs % 16 == 0)):
        raise _bad(f"input stride {ws}x{hs}: width_stride a multiple of 16 >= width, height_stride the height "
                   "or a multiple of 16 above it")  # fmt: skip
    buf, offset = _picture_memory(pic, ws * hs * 3 // 2, "input picture")
    return buf, offset, ws, hs


@api(0)
def dvpp_jpeg_predict_enc_size(input_desc, jpege_config):
    """(bytes to allocate for the encoded JPEG, ret): the input's YUV420SP size plus 768 bytes of
    header, rounded up to 2 MiB (how the open-source acl computes it)."""
    pic = _handle(PIC, input_desc, "input desc")
    _handle(JPEGE, jpege_config, "jpege config")
    _, _, ws, hs = _jpege_input(pic)
    return _align(ws * hs * 3 // 2 + 640 + 128, 2 << 20), C.ACL_SUCCESS


@api()
def dvpp_jpeg_encode_async(channel_desc, input_desc, data, size_ptr, jpege_config, stream):
    """Queue the JPEG encoding of the input picture into ``data`` (dvpp_malloc memory); the uint32
    at ``size_ptr`` holds the buffer's size and gets the JPEG's when the stream has run it."""
    stream_obj = _ready("jpeg_encode", channel_desc, stream)
    pic = _handle(PIC, input_desc, "input desc")
    level = _handle(JPEGE, jpege_config, "jpege config")["level"]
    buf, offset, ws, hs = _jpege_input(pic)
    size_view = _readable(size_ptr, 4, "output size")
    capacity = struct.unpack("<I", bytes(size_view))[0]
    if capacity == 0:
        raise _bad("the output size must be the output buffer's size (> 0)")
    out, out_off = dvpp_buffer(data, capacity, "output data")
    w, h, nv21 = pic.width, pic.height, pic.format == NV21

    def work():
        y, uv = V.planes(buf, offset, ws, hs)
        jpeg = J.encode_nv12(y[:h, :w], uv[: h // 2, :w], level, nv21)
        if len(jpeg) > capacity:
            raise J.JpegError(f"the encoded JPEG ({len(jpeg)} bytes) does not fit the {capacity}-byte buffer")
        out[out_off : out_off + len(jpeg)] = jpeg
        size_view[:] = struct.pack("<I", len(jpeg))

    stream_obj.put(device_task(work))
    return C.ACL_SUCCESS
