"""Preprocessing for a model with a YUV420SP_U8 AIPP input (the acl backend's ``decode: dvpp``).

:class:`DvppPreprocessor` stands where :class:`agent.preprocess.Preprocessor` stands in the pipeline
(``decode`` and ``normalizer``) and gives each image as the NV12 picture the model takes (``(h * 3 / 2,
w)`` uint8: the Y plane, then U and V interleaved at half resolution); the model's AIPP converts it to
RGB (CSC, the JPEG/BT.601 full-range matrix) and normalises it on the chip.

* An upright JPEG goes to DVPP (``backend.dvpp``, acl_dvpp.DvppDecoder): the region the CPU path would
  keep (the preset's resize + centre crop, :func:`agent.preprocess.plan`) is cropped from the decoded
  picture and resized to the model's size, so both paths show the model the same part of the photo.
* What DVPP does not take (PNG, BMP and other formats, progressive/arithmetic/CMYK JPEGs, JPEGs with an
  EXIF rotation, which DVPP would not apply, sizes outside its limits, a JPEG its device decode fails on)
  is decoded on the CPU as on the cpu path and converted to NV12 (:func:`rgb_to_nv12`). So a file is an
  error record exactly when the cpu path makes it one, with the same kind and message.
* The labelled copy's preview is the picture the model saw, converted back to RGB (DVPP never gives the
  host the whole photo).

numpy and Pillow (the agent's own dependencies). Python 3.7 compatible.
"""

import io

import numpy as np
from PIL import Image

from . import images
from .preprocess import Decoded, Preprocessor, plan

# Decoding threads with decode: dvpp (unless job.threads says otherwise): each waits on its DVPP lane, not
# on a core, and a lane runs JPEGD then VPC in turn, so 4 keep JPEGD's two units busy (2 did not: the
# benchmark's DVPP runs stopped at ~215 img/s against a 3 ms NPU).
LANES = 4


class YuvNormalizer:
    """Copies one NV12 picture into a slot of a batch buffer of NV12 pictures."""

    def __init__(self, width, height):
        self.item_shape = (height * 3 // 2, width)
        self.dtype = np.dtype(np.uint8)

    def batch_buffer(self, n):
        return np.zeros((n,) + self.item_shape, dtype=np.uint8)

    def write(self, picture, out):
        np.copyto(out, picture)
        return out


class DvppPreprocessor:
    """decode(path) -> Decoded(NV12 picture, preview): DVPP for the JPEGs it takes, else the CPU."""

    def __init__(self, cfg, dvpp):
        self.cfg = cfg
        self.dvpp = dvpp
        self.cpu = Preprocessor(cfg)
        width, height = cfg.out_size
        self.normalizer = YuvNormalizer(width, height)

    def decode(self, path, keep_preview=False):
        data = images.read_bytes(path)  # ImageError('unreadable' | 'decode') as on the cpu path
        reason = _not_for_dvpp(data)
        if reason is None:
            try:
                picture = self.dvpp.decode(data, self.region)
            except Exception as exc:  # acl_dvpp.Refused, or a runtime failure: the CPU decides
                reason = getattr(exc, "reason", None) or f"DVPP failed: {exc}"[:160]
            else:
                return Decoded(picture, nv12_to_rgb(picture) if keep_preview else None)
        self.dvpp.note_fallback(reason)
        res = self.cpu.decode(path, keep_preview)
        return Decoded(rgb_to_nv12(res.crop), res.preview)

    def region(self, width, height):
        """(left, top, width, height) of the source the cpu path keeps, even-aligned for the VPC."""
        (rw, rh), (left, top, right, bottom) = plan(self.cfg, width, height)
        sx, sy = width / float(rw), height / float(rh)
        x0, x1 = _even(left * sx), min(width & ~1, _even(right * sx))  # edges at the nearest even pixel
        y0, y1 = _even(top * sy), min(height & ~1, _even(bottom * sy))
        return x0, y0, x1 - x0, y1 - y0


def _even(x):
    return 2 * int(round(x / 2.0))


def _not_for_dvpp(data):
    """Why DVPP is not asked to decode ``data`` (a reason), or None."""
    if data[:3] != b"\xff\xd8\xff":
        return "not a JPEG"
    if jpeg_orientation(data) not in (1, None):
        return "an EXIF-rotated JPEG"
    return None


def rgb_to_nv12(rgb):
    """An ``(h, w, 3)`` uint8 RGB picture (even sizes) as NV12: the JPEG (BT.601 full range) YCbCr the
    AIPP's CSC turns back into RGB, the chroma averaged over each 2x2 block."""
    h, w = rgb.shape[:2]
    ycc = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("YCbCr"))
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = ycc[:, :, 0]
    chroma = ycc[:, :, 1:].reshape(h // 2, 2, w // 2, 2, 2).astype(np.uint16).sum(axis=(1, 3))
    out[h:] = ((chroma + 2) // 4).astype(np.uint8).reshape(h // 2, w)
    return out


def nv12_to_rgb(picture):
    """An NV12 picture as a Pillow RGB image (chroma repeated over each 2x2 block)."""
    h = picture.shape[0] * 2 // 3
    w = picture.shape[1]
    uv = picture[h:].reshape(h // 2, w // 2, 2).repeat(2, axis=0).repeat(2, axis=1)
    ycc = np.dstack([picture[:h], uv])
    return Image.fromarray(np.ascontiguousarray(ycc), "YCbCr").convert("RGB")


def jpeg_orientation(data):
    """The EXIF orientation (1..8) of a JPEG's bytes, read as the cpu path reads it (:func:`images.orientation`:
    1 when it has none); Pillow only parses the headers here."""
    try:
        return images.orientation(Image.open(io.BytesIO(data)))
    except Exception:  # not an image Pillow knows: the cpu path says what is wrong with it
        return 1
