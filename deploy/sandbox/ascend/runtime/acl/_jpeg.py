"""JPEG for the simulated DVPP: what a header says (stdlib only) and the JPEGD/JPEGE work (Pillow).

JPEGD on the Ascend 310 decodes baseline/extended Huffman JPEGs with YUV components sampled
4:4:4, 4:2:2, 4:2:0, 4:4:0 or 4:0:0 (greyscale), 32x32 to 8192x8192; arithmetic coding,
progressive and lossless JPEGs are refused with ACL_ERROR_UNSUPPORTED_JPEG. The simulator writes
YUV420SP (NV12, or NV21): the Y plane as libjpeg decodes it, the chroma planes at half
resolution (libjpeg's upsampled chroma averaged over each 2x2 block, which gives back the
stored 4:2:0 chroma up to a [1 6 1]/8 blur), greyscale with U = V = 0x80 as documented.

Pillow is imported when a JPEG is decoded or encoded (the simulated board has it beside numpy:
the agent's own dependencies), never by ``import acl``. Python 3.7.
"""

import io

CSS_444, CSS_422, CSS_420, CSS_GRAY, CSS_440, CSS_411, CSS_UNKNOWN = 0, 1, 2, 3, 4, 5, 1000
MIN_SIDE, MAX_SIDE = 32, 8192
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOF_NAMES = {0xC2: "progressive", 0xC6: "progressive", 0xC3: "lossless", 0xC7: "lossless"}
_STANDALONE = {0x01} | set(range(0xD0, 0xD8))


class JpegError(ValueError):
    """A stream JPEGD cannot take; ``unsupported`` tells a refused coding from a broken file."""

    def __init__(self, message, unsupported=False):
        ValueError.__init__(self, message)
        self.unsupported = unsupported


class Info:
    """What the frame header says: size, components, sampling (acldvppJpegFormat), coding."""

    __slots__ = ("width", "height", "components", "css", "marker", "precision")

    def __init__(self, width, height, components, css, marker, precision):
        self.width, self.height, self.components = width, height, components
        self.css, self.marker, self.precision = css, marker, precision

    def check_decodable(self):
        """Raise JpegError (unsupported) for what JPEGD refuses: coding, precision, sampling, size."""
        if self.marker not in (0xC0, 0xC1):
            how = _SOF_NAMES.get(self.marker, "arithmetic-coded" if self.marker >= 0xC9 else "hierarchical")
            raise JpegError(f"{how} JPEG (SOF{self.marker - 0xC0}): JPEGD decodes Huffman sequential only", True)
        if self.precision != 8:
            raise JpegError(f"{self.precision}-bit samples: JPEGD decodes 8-bit JPEGs only", True)
        if self.css in (CSS_411, CSS_UNKNOWN):
            raise JpegError(f"{self.components} components with sampling JPEGD does not take", True)


def _u16(buf, at):
    return (buf[at] << 8) | buf[at + 1]


def parse(buf):
    """The Info of the JPEG in ``buf`` (bytes or memoryview); JpegError when there is none."""
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise JpegError("not a JPEG: no SOI marker at the start")
    i = 2
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise JpegError(f"corrupt JPEG: no marker at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            raise JpegError("corrupt JPEG: no frame header (SOF) before the scan")
        length = _u16(buf, i + 2)
        if length < 2 or i + 2 + length > n:
            raise JpegError("truncated JPEG: a header segment runs past the end of the data")
        if marker in _SOF:
            return _frame(buf, i + 4, length - 2, marker)
        i += 2 + length
    raise JpegError("truncated JPEG: no frame header (SOF)")


def _frame(buf, at, length, marker):
    if length < 6:
        raise JpegError("corrupt JPEG: short frame header")
    precision, height, width, count = buf[at], _u16(buf, at + 1), _u16(buf, at + 3), buf[at + 5]
    if length < 6 + 3 * count or count == 0:
        raise JpegError("corrupt JPEG: frame header lists more components than it holds")
    samp = [(buf[at + 7 + 3 * k] >> 4, buf[at + 7 + 3 * k] & 15) for k in range(count)]
    return Info(width, height, count, _css(samp), marker, precision)


def _css(samp):
    """acldvppJpegFormat from the components' (h, v) sampling factors."""
    if len(samp) == 1:
        return CSS_GRAY if samp[0][0] == samp[0][1] else CSS_UNKNOWN
    if len(samp) != 3 or samp[1] != samp[2]:
        return CSS_UNKNOWN
    (yh, yv), (uh, uv) = samp[0], samp[1]
    table = {(2, 2): CSS_420, (2, 1): CSS_422, (1, 1): CSS_444, (1, 2): CSS_440, (4, 1): CSS_411}
    if yh % uh or yv % uv:
        return CSS_UNKNOWN
    return table.get((yh // uh, yv // uv), CSS_UNKNOWN)


# From this many pixels on, two libjpeg passes (luma only, then half scale) beat one full decode
# whose chroma must then be averaged down (measured: 1920x1080 about even, 4000x3000 1.6x faster).
TWO_PASS_PIXELS = 2_000_000


def decode_nv12(data, out, width_stride, height_stride, nv21=False):
    """Decode the JPEG ``data`` into ``out`` (a writable memoryview of width_stride * height_stride
    * 3 / 2 bytes or more) as YUV420SP; returns (width, height). Raises JpegError (broken data).

    Small pictures: one decode to YCbCr, the chroma averaged over 2x2 blocks. Large ones: libjpeg
    decodes the luma alone straight into the Y plane, then the picture at half scale, where it
    computes a 4:2:0 JPEG's chroma at its stored resolution (IDCT scaling, no upsampling): the
    chroma samples themselves."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        luma = memoryview(out)[: h * width_stride]
        if im.mode != "L" and w * h >= TWO_PASS_PIXELS:
            _decode_luma_into(data, luma, width_stride)
            im = Image.open(io.BytesIO(data))
            im.draft("YCbCr", (w // 2, h // 2))
        elif im.mode != "L":
            im.draft("YCbCr", im.size)
        im.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise JpegError(f"JPEGD failed: {exc}") from None
    if im.mode not in ("L", "YCbCr"):
        im = im.convert("YCbCr")
    y_plane = width_stride * height_stride
    if im.size == (w, h):
        write_plane(im, luma, width_stride, band=0, whole_rows=True)
    if im.mode == "L":
        out[y_plane : y_plane + y_plane // 2] = b"\x80" * (y_plane // 2)
        return w, h
    half = im.reduce(2) if im.size == (w, h) else im  # (ceil(w/2), ceil(h/2)): the 2x2 block averages
    u, v = half.getchannel(1), half.getchannel(2)
    chroma = Image.merge("LA", (v, u) if nv21 else (u, v)).tobytes("raw", ("LA", width_stride))
    out[y_plane : y_plane + len(chroma)] = chroma
    return w, h


def _decode_luma_into(data, rows, stride):
    """libjpeg's greyscale decode of ``data`` written by Pillow's decoder straight into ``rows``
    (an "L" image mapped over them is the decoder's target)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.draft("L", im.size)
    target = Image.frombuffer("L", im.size, rows, "raw", "L", stride, 1).im
    im.im = target
    im.load()
    if im.im is not target:  # this Pillow decoded into memory of its own: copy from there
        write_plane(im, rows, stride)


def write_plane(image, rows, stride, band=None, whole_rows=False):
    """Write ``image`` (or its band 0, Y) into ``rows``, ``image.height`` rows of ``stride`` bytes
    (``whole_rows``: the bytes after the picture in each row may be overwritten too).
    Large pictures: Pillow copies the band straight into that memory (an "L" image mapped over it
    is the target of a paste); small ones through tobytes, which is faster there (one pass, then a
    memcpy) but twice as long on 12 megapixels (a chunked copy)."""
    from PIL import Image

    w, h = image.size
    if w * h >= 1_000_000:
        try:
            target = Image.frombuffer("L", (w, h), rows, "raw", "L", stride, 1)
            source = image.im.getband(band) if band is not None and image.mode != "L" else image.im
            target.im.paste(source, (0, 0, w, h))
            return
        except (AttributeError, TypeError, ValueError):
            pass  # a Pillow whose core objects do not allow it
    raw = image.tobytes("raw", ("L" if image.mode == "L" else "Y", stride if whole_rows else w))
    if stride == w or whole_rows:
        rows[: len(raw)] = raw
    else:  # only the picture's own bytes of each row: the rest may belong to something else
        import numpy as np

        np.frombuffer(rows, np.uint8, count=h * stride).reshape(h, stride)[:, :w] = np.frombuffer(raw, np.uint8).reshape(h, w)


def encode_nv12(y, uv, level, nv21=False):
    """JPEG bytes (quality ``level``, 4:2:0) of the picture whose Y plane is the 2-D uint8 array
    ``y`` and interleaved chroma plane ``uv`` (h/2 rows of w bytes)."""
    import numpy as np
    from PIL import Image

    u, v = np.ascontiguousarray(uv[:, 0::2]), np.ascontiguousarray(uv[:, 1::2])
    if nv21:
        u, v = v, u
    size = (y.shape[1], y.shape[0])
    planes = [Image.fromarray(np.ascontiguousarray(y))]
    planes += [Image.fromarray(c).resize(size, Image.NEAREST) for c in (u, v)]
    out = io.BytesIO()
    Image.merge("YCbCr", planes).save(out, "JPEG", quality=max(1, min(100, int(level))), subsampling=2)
    return out.getvalue()
