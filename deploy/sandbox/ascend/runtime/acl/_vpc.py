"""VPC on YUV420SP pictures: crop a region, resize it, paste it into the output. numpy (+ Pillow
for the default filter). Python 3.7.

A picture is (buffer, offset, width_stride, height_stride): the Y plane (height_stride rows of
width_stride bytes), then the interleaved chroma plane (height_stride / 2 rows). Regions are
(left, top, width, height) with even left/top and even sizes (the Ascend 310 rules), so the
chroma region is exactly half of the luma one.

Interpolation (acldvppSetResizeConfigInterpolation on the 310):

* 0 (default): "Huawei's high-order filter", not published. Simulated with Pillow's BICUBIC,
  which filters over the whole reduced footprint (no aliasing when shrinking), with
  ``reducing_gap=3`` (a box reduction by whole factors first; Pillow: "indistinguishable from
  fair resampling in most cases");
* 1 / 3: bilinear as OpenCV (pixel centres at +0.5) / TensorFlow (corners at 0), no filtering;
* 2 / 4: nearest neighbour, ``floor(dst * in / out)`` (OpenCV's and TensorFlow's legacy rule).
"""

import numpy as np


def planes(buf, offset, ws, hs):
    """(Y, UV) numpy views of a picture in ``buf`` (writable when the buffer is)."""
    data = np.frombuffer(buf, np.uint8, count=ws * hs * 3 // 2, offset=offset)
    return data[: ws * hs].reshape(hs, ws), data[ws * hs :].reshape(hs // 2, ws)


def process(src, src_region, dst, dst_region, interpolation, swap_uv=False):
    """Resize ``src_region`` of picture ``src`` to ``dst_region`` of picture ``dst`` (pictures
    are (buf, offset, ws, hs)); the rest of ``dst`` is left as it was."""
    sy, suv = planes(*src)
    dy, duv = planes(*dst)
    sl, st, sw, sh = src_region
    dl, dt, dw, dh = dst_region
    dy[dt : dt + dh, dl : dl + dw] = _resize(sy[st : st + sh, sl : sl + sw], dw, dh, interpolation)
    uv = suv[st // 2 : (st + sh) // 2, sl : sl + sw]
    u = _resize(uv[:, 0::2], dw // 2, dh // 2, interpolation)
    v = _resize(uv[:, 1::2], dw // 2, dh // 2, interpolation)
    out = duv[dt // 2 : (dt + dh) // 2, dl : dl + dw]
    out[:, 0::2], out[:, 1::2] = (v, u) if swap_uv else (u, v)


def _resize(plane, ow, oh, interpolation):
    """``plane`` (2-D uint8, possibly strided) resized to oh x ow."""
    h, w = plane.shape
    if (w, h) == (ow, oh):
        return plane
    if interpolation == 0:
        return _filtered(plane, ow, oh)
    if interpolation in (2, 4):
        ys = np.minimum(np.arange(oh) * h // oh, h - 1)
        xs = np.minimum(np.arange(ow) * w // ow, w - 1)
        return plane[ys][:, xs]
    return _bilinear(plane, ow, oh, half_pixel=interpolation == 1)


def _filtered(plane, ow, oh):
    from PIL import Image

    bicubic = getattr(Image, "Resampling", Image).BICUBIC
    return np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize((ow, oh), bicubic, reducing_gap=3.0))


def _axis(n_in, n_out, half_pixel):
    """(i0, i1, weight of i1) for each output coordinate along one axis."""
    scale = n_in / n_out
    pos = np.arange(n_out, dtype=np.float64)
    pos = (pos + 0.5) * scale - 0.5 if half_pixel else pos * scale
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.intp)
    return i0, np.minimum(i0 + 1, n_in - 1), (pos - i0).astype(np.float32)


def _bilinear(plane, ow, oh, half_pixel):
    y0, y1, fy = _axis(plane.shape[0], oh, half_pixel)
    x0, x1, fx = _axis(plane.shape[1], ow, half_pixel)
    top, bottom = plane[y0].astype(np.float32), plane[y1].astype(np.float32)
    rows = top + (bottom - top) * fy[:, None]
    left, right = rows[:, x0], rows[:, x1]
    return np.clip(left + (right - left) * fx + 0.5, 0, 255).astype(np.uint8)
