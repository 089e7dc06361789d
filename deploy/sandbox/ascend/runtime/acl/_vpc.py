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

import functools

import numpy as np

from . import _jpeg


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
    uv = suv[st // 2 : (st + sh) // 2, sl : sl + sw]
    out = duv[dt // 2 : (dt + dh) // 2, dl : dl + dw]
    if (sw, sh) == (dw, dh):
        dy[dt : dt + dh, dl : dl + dw] = sy[st : st + sh, sl : sl + sw]
        out[:] = uv
    elif interpolation == 0:  # the Y regions read and written in place: rows of ws bytes (the chroma plane follows)
        luma = _filtered_luma(_rows(src, st, sl, sh), src[2], sw, sh, dw, dh)
        _jpeg.write_plane(luma, _rows(dst, dt, dl, dh), dst[2])
        chroma = _filtered_chroma(_rows(src, src[3] + st // 2, sl, sh // 2), src[2], sw // 2, sh // 2, dw // 2, dh // 2)
        out[:] = np.frombuffer(chroma.tobytes("raw", "LA"), np.uint8).reshape(dh // 2, dw)
    else:
        dy[dt : dt + dh, dl : dl + dw] = _resize(sy[st : st + sh, sl : sl + sw], dw, dh, interpolation)
        out[:, 0::2] = _resize(uv[:, 0::2], dw // 2, dh // 2, interpolation)
        out[:, 1::2] = _resize(uv[:, 1::2], dw // 2, dh // 2, interpolation)
    if swap_uv:
        out.reshape(dh // 2, dw // 2, 2)[:] = out.reshape(dh // 2, dw // 2, 2)[:, :, ::-1].copy()


def _resize(plane, ow, oh, interpolation):
    """``plane`` (2-D uint8, possibly strided) resized to oh x ow: interpolation 1-4."""
    h, w = plane.shape
    if interpolation in (2, 4):
        return plane[_nearest(h, oh)][:, _nearest(w, ow)]
    return _bilinear(plane, ow, oh, half_pixel=interpolation == 1)


def _rows(picture, top, left, count):
    """``count`` rows of a picture's Y plane from (left, top), as a memoryview of count * ws bytes."""
    buf, offset, ws, _ = picture
    start = offset + top * ws + left
    return memoryview(buf)[start : start + count * ws]


def _pillow_resize(image, ow, oh):
    from PIL import Image

    bicubic = getattr(Image, "Resampling", Image).BICUBIC
    return image.resize((ow, oh), bicubic, reducing_gap=3.0)


def _filtered_luma(rows, stride, w, h, ow, oh):
    """Interpolation 0 of a Y region given as ``h`` rows of ``stride`` bytes (mapped, not copied):
    the resized Pillow image."""
    from PIL import Image

    return _pillow_resize(Image.frombuffer("L", (w, h), rows, "raw", "L", stride, 1), ow, oh)


def _filtered_chroma(rows, stride, w, h, ow, oh):
    """Interpolation 0 of an interleaved chroma region given as ``h`` rows of ``stride`` bytes: U and V
    unpacked by Pillow into the two bands of an "LA" image, each resized as an "L" image (Pillow
    resizes LA premultiplied by A), packed again: the resized "LA" image."""
    from PIL import Image

    u, v = Image.frombuffer("LA", (w, h), rows, "raw", "LA", stride, 1).split()
    return Image.merge("LA", (_pillow_resize(u, ow, oh), _pillow_resize(v, ow, oh)))


@functools.lru_cache(maxsize=256)
def _axis(n_in, n_out, half_pixel):
    """(i0, i1, weight of i1) for each output coordinate along one axis (cached: a pipeline resizes
    the same sizes over and over; the arrays are read-only)."""
    scale = n_in / n_out
    pos = np.arange(n_out, dtype=np.float64)
    pos = (pos + 0.5) * scale - 0.5 if half_pixel else pos * scale
    pos = np.minimum(np.maximum(pos, 0), n_in - 1)
    i0 = np.floor(pos).astype(np.intp)
    out = (i0, np.minimum(i0 + 1, n_in - 1), (pos - i0).astype(np.float32))
    for a in out:
        a.setflags(write=False)
    return out


@functools.lru_cache(maxsize=256)
def _nearest(n_in, n_out):
    index = np.minimum(np.arange(n_out) * n_in // n_out, n_in - 1)
    index.setflags(write=False)
    return index


def _bilinear(plane, ow, oh, half_pixel):
    y0, y1, fy = _axis(plane.shape[0], oh, half_pixel)
    x0, x1, fx = _axis(plane.shape[1], ow, half_pixel)
    # whole rows first, then columns by a slice + index (numpy's fast gathers; 2-D index arrays and
    # take(axis=1) are 3-6x slower, the latter on numpy 1.21)
    rows0, rows1 = plane[y0], plane[y1]
    top, bottom = rows0[:, x0].astype(np.float32), rows1[:, x0].astype(np.float32)
    right = rows0[:, x1].astype(np.float32)
    right -= top
    right *= fx
    top += right  # the top row, interpolated along x (in place: no temporaries)
    right = rows1[:, x1].astype(np.float32)
    right -= bottom
    right *= fx
    bottom += right
    bottom -= top
    bottom *= fy[:, None]
    top += bottom
    top += 0.5
    return top.astype(np.uint8)  # 0..255 already: a convex mix of uint8 values
