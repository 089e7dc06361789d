"""Robust image reading: every way a file can fail becomes an :class:`ImageError` with a kind.

The kinds are those of :data:`agent.protocol.ERROR_KINDS`: ``unreadable`` (the OS refused the
read: permissions, a directory, a vanished file), ``decode`` (empty, truncated, not an image,
an unsupported mode) and ``too_large`` (more pixels than :data:`MAX_PIXELS`, a guard against
decompression bombs). Callers never see a Pillow exception.

Files are read into memory first and decoded from a ``BytesIO``: this keeps "could not read"
apart from "could not decode", and Pillow's decoder still releases the GIL, so a thread pool
decodes in parallel. Python 3.7 compatible.
"""

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

# 64 MP: a 48 MP phone photo passes, a 20000x20000 PNG bomb does not.
MAX_PIXELS = 64 * 1024 * 1024

# Pillow warns between MAX_IMAGE_PIXELS and twice that and raises above; we check the size
# ourselves right after the header is parsed, so the warning is noise.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# EXIF orientations that swap width and height.
_SWAPS_AXES = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112


class ImageError(Exception):
    """One image could not be used; ``kind`` is one of protocol.ERROR_KINDS."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def read_bytes(path):
    """The whole file; raises ImageError('unreadable') when the OS refuses, 'decode' if empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageError("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    if not data:
        raise ImageError("decode", "empty file (0 bytes)")
    return data


def open_image(data, max_pixels=None):
    """Parse the header of an in-memory image (lazy: pixels are decoded on load)."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from exc
    except getattr(Image, "UnidentifiedImageError", ()):
        raise ImageError("decode", "not an image, or a format Pillow cannot read") from None
    except Exception as exc:  # OSError, SyntaxError, ValueError... from a damaged header
        raise ImageError("decode", f"not a readable image: {exc}") from exc
    w, h = im.size
    if w * h > limit:
        raise ImageError("too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {limit}")
    if w < 1 or h < 1:
        raise ImageError("decode", f"image has no pixels ({w}x{h})")
    return im


def orientation(im):
    """EXIF orientation 1..8 (1 when absent or unreadable)."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if value in range(1, 9) else 1


def oriented_size(im):
    """(width, height) as the image will look after exif_transpose."""
    w, h = im.size
    return (h, w) if orientation(im) in _SWAPS_AXES else (w, h)


def load_rgb(im):
    """Decode pixels, apply the EXIF rotation and convert any mode to 8-bit RGB.

    Transparent images are composited onto white (what a viewer shows); 16-bit and 32-bit
    grayscale are scaled to 8 bits rather than clipped (Pillow's convert would clip).
    """
    try:
        im.load()
        if orientation(im) != 1:  # exif_transpose copies even an upright image (~0.2 ms a photo)
            im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from exc
    except MemoryError:
        raise ImageError("too_large", "out of memory while decoding") from None
    except Exception as exc:
        raise ImageError("decode", f"cannot decode: {exc}") from exc


def _to_rgb(im):
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im)
        if a.dtype.kind == "f":
            a = np.clip(a, 0, 255)
        else:
            peak = int(a.max()) if a.size else 0
            if peak > 65535:
                a = a >> 24 if peak > (1 << 24) else a >> 8
            elif peak > 255:
                a = a >> 8
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode_file(path, max_pixels=None):
    """Reference decode: whole file at full resolution, oriented, RGB."""
    return load_rgb(open_image(read_bytes(path), max_pixels))


def safe_id(name):
    """A str that always JSON-encodes to UTF-8: undecodable bytes (surrogateescape) become \\xNN."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
