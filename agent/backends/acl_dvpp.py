"""The acl backend's DVPP path (``backend_options.decode: dvpp``): JPEG decode (JPEGD) and crop + resize
(VPC) on the Ascend's media engine, into the YUV420SP (NV12) picture a model with a YUV420SP_U8 AIPP
input takes, as Huawei's acllite samples feed their models.

Per image (:meth:`DvppDecoder.decode`), on the calling thread's own channel and stream (a "lane": the
pipeline decodes on several threads, and DVPP channels and streams are per thread in the samples):

* ``media.dvpp_jpeg_get_image_info_v2`` on the file's bytes in host memory: the size, and whether JPEGD
  takes the coding (progressive, arithmetic, 12-bit and CMYK JPEGs it refuses: ACL_ERROR_UNSUPPORTED_JPEG);
* the bytes copied into ``media.dvpp_malloc`` memory (128-byte aligned, as JPEGD requires), reused while
  they fit;
* ``dvpp_jpeg_decode_async`` into an NV12 picture whose strides are the JPEG's size aligned to 128 x 16
  (JPEGD's output rule), then ``dvpp_vpc_crop_async`` of the region the caller names (left and top even,
  width and height even: the VPC's crop rule) resized to the model's picture, whose strides are aligned
  to 16 x 2 (VPC's output rule);
* ``rt.synchronize_stream``, then the picture copied out (its strides dropped): ``(h * 3 / 2, w)`` uint8.

Whatever DVPP does not take raises :class:`Refused` with a short reason (the caller then decodes on the
CPU); the reasons are counted in ``fallbacks``. numpy is imported when a picture is copied out. Python 3.7.
"""

import threading

from .acl_codes import (
    ACL_HOST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_SUCCESS,
    check,
    collect,
    error_text,
)

PIXEL_FORMAT_YUV_SEMIPLANAR_420 = 1  # NV12: the Y plane, then U and V interleaved at half resolution
ACL_ERROR_UNSUPPORTED_JPEG = 148052
JPEGD_SIDES = (32, 8192)  # the JPEGs JPEGD decodes: 32x32 to 8192x8192


class Refused(Exception):
    """DVPP does not take this image (``reason``: a short phrase, counted in ``fallbacks``)."""

    def __init__(self, reason, detail=""):
        Exception.__init__(self, f"{reason}{': ' if detail else ''}{detail}")
        self.reason = reason


def align(value, to):
    return (value + to - 1) // to * to


class _Lane:
    """One thread's channel, stream, descriptions and reused DVPP buffers."""

    def __init__(self):
        self.channel = self.stream = self.dec_desc = self.out_desc = self.roi = None
        self.created = False
        self.src = self.dec = self.out = None  # dvpp_malloc pointers
        self.src_size = self.dec_size = 0


class DvppDecoder:
    """JPEG bytes -> the model's NV12 picture on DVPP; thread-safe (one lane per calling thread)."""

    def __init__(self, acl, context, run_mode, width, height):
        self.acl, self.context, self.run_mode = acl, context, run_mode
        self.width, self.height = int(width), int(height)  # the model's picture (even sizes)
        self.ws, self.hs = align(self.width, 16), align(self.height, 2)
        self.out_size = self.ws * self.hs * 3 // 2
        self.decoded = 0
        self.fallbacks = {}  # reason -> images decoded on the CPU instead
        self._local = threading.local()
        self._lanes = []
        self._lock = threading.Lock()
        self._use_bytes = None

    def note_fallback(self, reason):
        with self._lock:
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    # --- per image -----------------------------------------------------------------------------
    def decode(self, data, region):
        """The NV12 picture (numpy ``(h * 3 / 2, w)`` uint8) of the JPEG ``data`` (bytes): ``region(w, h)``
        names the source region to crop and resize, ``(left, top, width, height)``, all even."""
        lane = self._lane()
        media = self.acl.media
        width, height = self._info(data)
        left, top, cw, ch = region(width, height)
        if cw < 10 or ch < 6 or not (cw / 32.0 <= self.width <= cw * 16 and ch / 32.0 <= self.height <= ch * 16):
            raise Refused("outside the VPC's crop and scaling limits", f"{cw}x{ch} to {self.width}x{self.height}")
        self._put_jpeg(lane, data)
        ws, hs = align(width, 128), align(height, 16)
        self._ensure(lane, "dec", ws * hs * 3 // 2)
        _picture(media, lane.dec_desc, lane.dec, lane.dec_size, width, height, ws, hs)
        _picture(media, lane.out_desc, lane.out, self.out_size, self.width, self.height, self.ws, self.hs)
        ret = media.dvpp_set_roi_config(lane.roi, left, left + cw - 1, top, top + ch - 1)
        if ret == ACL_SUCCESS:
            ret = media.dvpp_jpeg_decode_async(lane.channel, lane.src, len(data), lane.dec_desc, lane.stream)
        if ret == ACL_SUCCESS:
            ret = media.dvpp_vpc_crop_async(lane.channel, lane.dec_desc, lane.out_desc, lane.roi, lane.stream)
        sync = self.acl.rt.synchronize_stream(lane.stream)  # also after a refused call: nothing stays queued
        if ret != ACL_SUCCESS:
            raise Refused("refused by DVPP", f"ret={ret}{error_text(ret)}")
        if sync != ACL_SUCCESS:
            raise Refused("failed on the device", f"ret={sync}{error_text(sync)}")
        picture = self._copy_out(lane.out)
        with self._lock:
            self.decoded += 1
        return picture

    def _info(self, data):
        """(width, height) of the JPEG, or Refused when JPEGD would not take it."""
        ptr, keep = self._host_ptr(data)
        width, height, _, _, ret = self.acl.media.dvpp_jpeg_get_image_info_v2(ptr, len(data))
        del keep
        if ret == ACL_ERROR_UNSUPPORTED_JPEG:
            raise Refused("a JPEG coding JPEGD does not decode", self.acl.get_recent_err_msg() or "")
        if ret != ACL_SUCCESS:
            raise Refused("not a JPEG JPEGD can read", f"ret={ret}{error_text(ret)}")
        lo, hi = JPEGD_SIDES
        if not (lo <= width <= hi and lo <= height <= hi):
            raise Refused("outside JPEGD's 32x32..8192x8192", f"{width}x{height}")
        return width, height

    def _put_jpeg(self, lane, data):
        self._ensure(lane, "src", len(data))
        kind = ACL_MEMCPY_HOST_TO_DEVICE if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        ptr, keep = self._host_ptr(data)
        check("acl.rt.memcpy (JPEG in)", self.acl.rt.memcpy(lane.src, lane.src_size, ptr, len(data), kind))
        del keep

    def _copy_out(self, ptr):
        import numpy as np

        kind = ACL_MEMCPY_DEVICE_TO_HOST if self.run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        if self._bytes_api():
            host = bytes(self.out_size)
            dst = self.acl.util.bytes_to_ptr(host)
        else:
            host = np.empty(self.out_size, np.uint8)
            dst = self.acl.util.numpy_to_ptr(host)
        check("acl.rt.memcpy (picture out)", self.acl.rt.memcpy(dst, self.out_size, ptr, self.out_size, kind))
        pic = np.frombuffer(host, np.uint8) if self._bytes_api() else host
        ws, hs, w, h = self.ws, self.hs, self.width, self.height
        if (ws, hs) == (w, h):
            return pic.reshape(h * 3 // 2, w)
        planes = pic.reshape(hs * 3 // 2, ws)
        return np.concatenate([planes[:h, :w], planes[hs : hs + h // 2, :w]])

    # --- pointers and memory ---------------------------------------------------------------------
    def _bytes_api(self):
        if self._use_bytes is None:
            self._use_bytes = "bytes_to_ptr" in dir(self.acl.util)
        return self._use_bytes

    def _host_ptr(self, data):
        """(pointer, keep-alive object) of ``data``'s bytes in host memory."""
        if self._bytes_api():
            return self.acl.util.bytes_to_ptr(data), data
        import numpy as np

        arr = np.frombuffer(data, np.uint8).copy()
        return self.acl.util.numpy_to_ptr(arr), arr

    def _ensure(self, lane, which, size):
        """Lane buffer ``which`` (src | dec) of at least ``size`` bytes (grown by halves, never shrunk)."""
        if getattr(lane, which + "_size") >= size:
            return
        old = getattr(lane, which)
        if old is not None:
            setattr(lane, which, None)
            check("acl.media.dvpp_free", self.acl.media.dvpp_free(old))
        size = max(size, getattr(lane, which + "_size") * 3 // 2)
        ptr, ret = self.acl.media.dvpp_malloc(size)
        check(f"acl.media.dvpp_malloc({size})", ret)
        setattr(lane, which, ptr)
        setattr(lane, which + "_size", size)

    # --- lanes ----------------------------------------------------------------------------------
    def _lane(self):
        lane = getattr(self._local, "lane", None)
        if lane is not None:
            return lane
        acl, media = self.acl, self.acl.media
        check("acl.rt.set_context (DVPP lane)", acl.rt.set_context(self.context))
        lane = _Lane()
        with self._lock:
            self._lanes.append(lane)  # recorded first: close() releases what a failed build made
        lane.channel = media.dvpp_create_channel_desc()
        check("acl.media.dvpp_create_channel", media.dvpp_create_channel(lane.channel))
        lane.created = True
        lane.stream, ret = acl.rt.create_stream()
        check("acl.rt.create_stream (DVPP lane)", ret)
        lane.dec_desc, lane.out_desc = media.dvpp_create_pic_desc(), media.dvpp_create_pic_desc()
        lane.roi = media.dvpp_create_roi_config(0, 15, 0, 15)
        ptr, ret = media.dvpp_malloc(self.out_size)
        check(f"acl.media.dvpp_malloc({self.out_size})", ret)
        lane.out = ptr
        self._local.lane = lane
        return lane

    def release(self, errors):
        """Every lane's buffers, descriptions, channel and stream (failures go to ``errors``)."""
        acl, media = self.acl, self.acl.media
        for lane in self._lanes:
            if lane.stream is not None:
                collect(errors, "acl.rt.synchronize_stream (DVPP)", lambda s=lane.stream: acl.rt.synchronize_stream(s))
            for ptr in (lane.src, lane.dec, lane.out):
                if ptr is not None:
                    collect(errors, "acl.media.dvpp_free", lambda p=ptr: media.dvpp_free(p))
            for desc in (lane.dec_desc, lane.out_desc):
                if desc:
                    collect(errors, "acl.media.dvpp_destroy_pic_desc", lambda d=desc: media.dvpp_destroy_pic_desc(d))
            if lane.roi:
                collect(errors, "acl.media.dvpp_destroy_roi_config", lambda r=lane.roi: media.dvpp_destroy_roi_config(r))
            if lane.created:
                collect(errors, "acl.media.dvpp_destroy_channel", lambda c=lane.channel: media.dvpp_destroy_channel(c))
            if lane.channel:
                collect(errors, "acl.media.dvpp_destroy_channel_desc",
                        lambda c=lane.channel: media.dvpp_destroy_channel_desc(c))
            if lane.stream is not None:
                collect(errors, "acl.rt.destroy_stream (DVPP)", lambda s=lane.stream: acl.rt.destroy_stream(s))
        self._lanes = []

    def describe(self):
        return {"decode": "dvpp", "dvpp_decoded": self.decoded, "cpu_fallbacks": dict(self.fallbacks)}


def _picture(media, desc, ptr, size, width, height, ws, hs):
    """Fill an NV12 picture description."""
    for setter, value in (
        (media.dvpp_set_pic_desc_data, ptr), (media.dvpp_set_pic_desc_size, size),
        (media.dvpp_set_pic_desc_format, PIXEL_FORMAT_YUV_SEMIPLANAR_420),
        (media.dvpp_set_pic_desc_width, width), (media.dvpp_set_pic_desc_height, height),
        (media.dvpp_set_pic_desc_width_stride, ws), (media.dvpp_set_pic_desc_height_stride, hs),
    ):  # fmt: skip
        check(f"acl.media.{setter.__name__}", setter(desc, value))
