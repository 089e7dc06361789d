"""Preprocessing presets, the fast decode path and normalisation into a reused batch buffer.

Presets (``job.preprocess = {"preset": NAME, ...overrides}``):

``imagenet``  resize short side 256, centre crop 224, RGB, x/255, mean .485/.456/.406, std .229/.224/.225
``caffe``     resize to 256x256, centre crop 224, BGR, 0..255, mean 104/117/123 (the Caffe ResNet-50 sample)
``cifar``     resize to 224x224, BGR, x/255, mean .4914/.4822/.4465, std .2023/.1994/.2010 (the MindSpore sample)

``caffe`` and ``cifar`` resample BICUBIC, Pillow's default for ``resize`` that the samples rely on;
``imagenet`` and ``raw-u8`` use BILINEAR (torchvision's Resize).
``raw-u8``    resize short side 256, centre crop 224, RGB, no normalisation (it lives in the model or AIPP)

Overrides: ``mean``, ``std`` (3 numbers, or 1 for all channels; in the units after ``scale``),
``scale`` (multiplier applied to 0..255 pixels first), ``resize`` (int = short side, [w, h] =
exact size), ``crop`` (int or [w, h], null = no crop), ``color`` (RGB | BGR), ``resample``
(nearest | bilinear | bicubic | box | lanczos), ``layout`` and
``dtype`` (normally taken from the model's input), ``fast`` (false = the reference path).
So EfficientNet-Lite's mean 127 / std 128 is ``{"preset": "imagenet", "scale": 1, "mean": 127, "std": 128}``.
``mean``/``std`` are per *output* channel, i.e. in BGR order when color is BGR, as in the samples.

Output value = (pixel * scale - mean) / std, computed as pixel * S + B with S = scale/std and
B = -mean/std precomputed, written straight into a preallocated NCHW/NHWC buffer.

Two decode paths give nearly the same crop:

* :meth:`Preprocessor.reference` decodes the whole file, resizes it, then crops (the plain way).
* :meth:`Preprocessor.decode` (fast) asks libjpeg for a DCT-scaled draft no smaller than the
  resize target, then resizes only the crop region (``resize(box=...)``) straight to the output.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from . import images

PRESETS = {
    "imagenet": {
        "resize": 256,
        "crop": 224,
        "color": "RGB",
        "scale": 1 / 255.0,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "normalize": True,
    },
    "caffe": {
        "resize": (256, 256),
        "crop": 224,
        "color": "BGR",
        "resample": "bicubic",
        "scale": 1.0,
        "mean": (104.0, 117.0, 123.0),
        "std": (1.0, 1.0, 1.0),
        "normalize": True,
    },
    "cifar": {
        "resize": (224, 224),
        "crop": 224,
        "color": "BGR",
        "resample": "bicubic",
        "scale": 1 / 255.0,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2023, 0.1994, 0.2010),
        "normalize": True,
    },
    "raw-u8": {
        "resize": 256,
        "crop": 224,
        "color": "RGB",
        "scale": 1.0,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "normalize": False,
    },
}

RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "lanczos": Image.LANCZOS,
}
_OVERRIDES = (
    "resize",
    "crop",
    "color",
    "resample",
    "scale",
    "mean",
    "std",
    "layout",
    "dtype",
    "fast",
    "normalize",
    "max_pixels",
)
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8")
PREVIEW_MAX = 512  # longest side of the labelled copy (a preview: drawing + JPEG encode cost CPU)


class PreprocessError(ValueError):
    """The preprocess configuration is invalid (bad preset, override or model input)."""


@dataclass(frozen=True)
class Config:
    """A fully resolved preprocessing recipe."""

    preset: str
    resize: object  # int (short side) or (w, h)
    crop: Optional[Tuple[int, int]]
    color: str
    scale: float
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    normalize: bool
    layout: str
    dtype: str
    fast: bool = True
    max_pixels: Optional[int] = None
    resample: str = "bilinear"

    @property
    def out_size(self):
        """(width, height) of the model input."""
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, tuple):
            return self.resize
        return (self.resize, self.resize)


def _pair(value, what):
    if isinstance(value, bool):
        raise PreprocessError(f"{what} must be a number or [w, h]")
    if isinstance(value, (int, float)):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise PreprocessError(f"{what} must be a number or [w, h], not {value!r}")


def _triple(value, what):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) in (1, 3):
        vals = tuple(float(v) for v in value)
        return vals * 3 if len(vals) == 1 else vals
    raise PreprocessError(f"{what} must be a number or 3 numbers, not {value!r}")


def input_geometry(shape, layout=None):
    """(layout, height, width) from a model input shape; H/W None when dynamic."""
    if shape is None or len(shape) != 4:
        raise PreprocessError(f"model input must be 4-D (N,C,H,W or N,H,W,C), got {shape!r}")
    if layout is None:
        if shape[1] == 3:
            layout = "NCHW"
        elif shape[3] == 3:
            layout = "NHWC"
        else:
            layout = "NCHW"
    if layout == "NCHW":
        c, h, w = shape[1], shape[2], shape[3]
    else:
        h, w, c = shape[1], shape[2], shape[3]
    if c not in (3, None):
        raise PreprocessError(f"model input has {c} channels; only 3-channel images are supported")
    return layout, h, w


def resolve(spec, input_shape=None, input_dtype=None, input_layout=None):
    """Build a Config from job.preprocess plus the model's input (shape, dtype, layout).

    The model's input fills in what the job leaves open: its layout and dtype, and a fixed H x W,
    around which the preset's resize/crop ratio is kept unless the job sets ``resize`` or ``crop``.
    Raises PreprocessError for the first bad option, or when the result does not fit the model.
    """
    spec = dict(spec or {})
    name = spec.pop("preset", "imagenet")
    base = _preset(name, spec)
    layout, model_size = _layout(spec.get("layout"), input_shape, input_layout)
    dtype = spec.get("dtype") or input_dtype or ("uint8" if name == "raw-u8" else "float32")
    if dtype not in DTYPES:
        raise PreprocessError("dtype must be one of {}, not {!r}".format(", ".join(DTYPES), dtype))
    resize, crop = _resize_crop(spec, base, model_size)
    cfg = Config(
        preset=name,
        resize=resize,
        crop=crop,
        layout=layout,
        dtype=dtype,
        fast=bool(spec.get("fast", True)),
        max_pixels=spec.get("max_pixels"),
        **_pixel_values(spec, base)
    )
    if model_size and cfg.out_size != model_size:
        raise PreprocessError(
            f"preprocess produces {cfg.out_size[0]}x{cfg.out_size[1]} but the model wants {model_size[0]}x{model_size[1]}"
        )
    _check_geometry(cfg)
    return cfg


def _preset(name, overrides):
    """The preset's settings; PreprocessError for an unknown preset or override name."""
    if name not in PRESETS:
        raise PreprocessError(
            "unknown preprocess preset {!r} (known: {})".format(name, ", ".join(sorted(PRESETS)))
        )
    unknown = set(overrides) - set(_OVERRIDES)
    if unknown:
        raise PreprocessError("unknown preprocess option(s): {}".format(", ".join(sorted(unknown))))
    return dict(PRESETS[name])


def _layout(layout, input_shape, input_layout):
    """(layout, model (w, h) or None when not fixed) from the job's layout and the model's input."""
    model_h = model_w = None
    if input_shape is not None:
        layout, model_h, model_w = input_geometry(tuple(input_shape), layout or input_layout)
    layout = layout or input_layout or "NCHW"
    if layout not in LAYOUTS:
        raise PreprocessError(f"layout must be NCHW or NHWC, not {layout!r}")
    model_size = (model_w, model_h) if isinstance(model_w, int) and isinstance(model_h, int) else None
    return layout, model_size


def _resize_crop(spec, base, model_size):
    """(resize: int short side or (w, h), crop: (w, h) or None), fitted to a fixed model input size."""
    resize = spec.get("resize", base["resize"])
    crop = spec.get("crop", base["crop"])
    if model_size and "crop" not in spec and "resize" not in spec and crop is not None:
        # The model fixes its input size: keep the preset's resize/crop ratio (256/224) around it.
        if (crop, crop) != model_size:
            crop_w = crop if isinstance(crop, int) else crop[0]
            if isinstance(resize, int):
                resize = int(round(min(model_size) * resize / float(crop_w)))
            else:
                resize = tuple(int(round(m * r / float(crop_w))) for m, r in zip(model_size, resize))
            crop = model_size
    if isinstance(resize, bool) or not isinstance(resize, (int, float, list, tuple)):
        raise PreprocessError(f"resize must be an int (short side) or [w, h], not {resize!r}")
    resize = int(resize) if isinstance(resize, (int, float)) else _pair(resize, "resize")
    crop = None if crop is None else _pair(crop, "crop")
    return resize, crop


def _pixel_values(spec, base):
    """Config's colour, resampling and normalisation fields: the job's overrides, else the preset's."""
    color = str(spec.get("color", base["color"])).upper()
    if color not in ("RGB", "BGR"):
        raise PreprocessError(f"color must be RGB or BGR, not {color!r}")
    scale = spec.get("scale", base["scale"])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise PreprocessError(f"scale must be a positive number, not {scale!r}")
    resample = str(spec.get("resample", base.get("resample", "bilinear"))).lower()
    if resample not in RESAMPLE:
        raise PreprocessError("resample must be one of {}, not {!r}".format(", ".join(RESAMPLE), resample))
    mean = _triple(spec.get("mean", base["mean"]), "mean")
    std = _triple(spec.get("std", base["std"]), "std")
    if any(s == 0 for s in std):
        raise PreprocessError("std must not contain 0")
    normalize = bool(spec.get("normalize", base["normalize"] or "mean" in spec or "std" in spec))
    return {
        "color": color,
        "scale": float(scale),
        "mean": mean,
        "std": std,
        "normalize": normalize,
        "resample": resample,
    }


def _check_geometry(cfg):
    if isinstance(cfg.resize, tuple) and cfg.crop is not None:
        if cfg.crop[0] > cfg.resize[0] or cfg.crop[1] > cfg.resize[1]:
            raise PreprocessError(f"crop {cfg.crop} is larger than resize {cfg.resize}")
    elif isinstance(cfg.resize, int) and cfg.crop is not None and max(cfg.crop) > cfg.resize:
        raise PreprocessError(f"crop {cfg.crop} is larger than the resized short side {cfg.resize}")


def plan(cfg, width, height):
    """Geometry for one image: (resized (w, h), crop box in resized coordinates)."""
    if isinstance(cfg.resize, tuple):
        rw, rh = cfg.resize
    else:
        s = cfg.resize / float(min(width, height))
        rw, rh = max(1, int(round(width * s))), max(1, int(round(height * s)))
        if width <= height:
            rw = cfg.resize
        else:
            rh = cfg.resize
    cw, ch = cfg.crop if cfg.crop is not None else (rw, rh)
    left = int(round((rw - cw) / 2.0))
    top = int(round((rh - ch) / 2.0))
    return (rw, rh), (left, top, left + cw, top + ch)


class Normalizer:
    """Writes one uint8 HWC RGB crop into a slot of a batch buffer, colour/layout/dtype applied."""

    def __init__(self, cfg):
        self.cfg = cfg
        mean = np.array(cfg.mean, dtype=np.float64)
        std = np.array(cfg.std, dtype=np.float64)
        if cfg.normalize and cfg.dtype != "uint8":
            scale, bias = cfg.scale / std, -mean / std
        else:
            scale, bias = np.ones(3), np.zeros(3)
        shape = (3, 1, 1) if cfg.layout == "NCHW" else (3,)
        self.scale = scale.astype(np.float32).reshape(shape)
        self.bias = bias.astype(np.float32).reshape(shape)
        w, h = cfg.out_size
        self.item_shape = (3, h, w) if cfg.layout == "NCHW" else (h, w, 3)
        self.dtype = np.dtype(cfg.dtype)
        self._scratch = np.empty(self.item_shape, np.float32) if self.dtype == np.float16 else None

    def batch_buffer(self, n):
        return np.zeros((n,) + self.item_shape, dtype=self.dtype)

    def write(self, crop, out):
        """crop: (h, w, 3) uint8 RGB; out: one item of a batch buffer (written in place)."""
        src = crop[:, :, ::-1] if self.cfg.color == "BGR" else crop
        if self.cfg.layout == "NCHW":
            src = src.transpose(2, 0, 1)
        if self.dtype == np.uint8:
            np.copyto(out, src)
        elif self.dtype == np.float32:
            np.multiply(src, self.scale, out=out)
            out += self.bias
        else:
            tmp = self._scratch
            np.multiply(src, self.scale, out=tmp)
            tmp += self.bias
            np.copyto(out, tmp, casting="same_kind")
        return out


class Decoded:
    """A decoded image: the model-sized uint8 RGB crop, and a small preview for the labelled copy."""

    __slots__ = ("crop", "preview")

    def __init__(self, crop, preview=None):
        self.crop = crop
        self.preview = preview


class Preprocessor:
    """Decode (fast or reference) and normalise, according to one Config. Thread-safe decode."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.normalizer = Normalizer(cfg)

    def decode(self, path, keep_preview=False):
        """The fast path; raises images.ImageError."""
        if not self.cfg.fast:
            return self.reference_decode(path, keep_preview)
        im = images.open_image(images.read_bytes(path), self.cfg.max_pixels)
        ow, oh = images.oriented_size(im)
        (rw, rh), (left, top, right, bottom) = plan(self.cfg, ow, oh)
        if im.format == "JPEG":
            # Request the draft in stored orientation; the DCT scale is the same either way.
            req = (rw, rh) if (ow, oh) == im.size else (rh, rw)
            try:
                im.draft("RGB", req)
            except Exception:
                pass
        rgb = images.load_rgb(im)
        dw, dh = rgb.size
        sx, sy = dw / float(rw), dh / float(rh)
        box = (left * sx, top * sy, right * sx, bottom * sy)
        try:
            out = rgb.resize(
                (right - left, bottom - top), RESAMPLE[self.cfg.resample], box=box, reducing_gap=3.0
            )
            crop = np.asarray(out, dtype=np.uint8)
        except Exception as exc:
            raise images.ImageError("preprocess", f"resize failed: {exc}") from exc
        return Decoded(crop, _preview(rgb) if keep_preview else None)

    def reference_decode(self, path, keep_preview=False):
        """The plain path: full decode, resize the whole image, then crop."""
        rgb = images.decode_file(path, self.cfg.max_pixels)
        (rw, rh), box = plan(self.cfg, rgb.size[0], rgb.size[1])
        try:
            crop = np.asarray(rgb.resize((rw, rh), RESAMPLE[self.cfg.resample]).crop(box), dtype=np.uint8)
        except Exception as exc:
            raise images.ImageError("preprocess", f"resize failed: {exc}") from exc
        return Decoded(crop, _preview(rgb) if keep_preview else None)

    def reference(self, path):
        """Reference tensor (1, ...) for one image, written the straightforward way (a test oracle)."""
        crop = self.reference_decode(path).crop.astype(np.float32)
        if self.cfg.color == "BGR":
            crop = crop[:, :, ::-1]
        if self.cfg.normalize and self.cfg.dtype != "uint8":
            crop = (crop * self.cfg.scale - np.array(self.cfg.mean, np.float32)) / np.array(
                self.cfg.std, np.float32
            )
        if self.cfg.layout == "NCHW":
            crop = crop.transpose(2, 0, 1)
        return np.ascontiguousarray(crop[None]).astype(self.cfg.dtype)


def _preview(rgb):
    """The labelled copy's image: ``rgb`` itself when it fits PREVIEW_MAX, else ``rgb`` reduced by
    the smallest integer factor that makes it fit (a box average: no aliasing).

    An integer reduce costs ~0.3 ms where an exact BILINEAR resize to 512 px cost 2.1 ms (the
    draft images here are 525-750 px, so most need only a 1.03-1.46x downscale that Pillow's
    non-SIMD resampler makes expensive); previews end up 256-512 px on the long side.
    """
    w, h = rgb.size
    k = -(-max(w, h) // PREVIEW_MAX)  # ceil
    if k <= 1:
        return rgb
    if hasattr(rgb, "reduce"):  # Pillow >= 7
        return rgb.reduce(k)
    return rgb.resize((max(1, -(-w // k)), max(1, -(-h // k))), Image.BOX)
