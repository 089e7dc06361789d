"""Static AIPP for ``atc --insert_op_conf``: the preprocessing a model does on the chip (crop, colour space
conversion, mean/var normalisation), as the config text atc reads, from a preset or the app's preprocessing;
or an AIPP config file of the user's, read and checked (:func:`read_aipp_file`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSpecError


@dataclass(frozen=True)
class AippPreset:
    """Static AIPP normalisation: out = (in - min_chn) * var_reci_chn, per channel after the swap.

    `mean`/`var_reci` are in 0..255 pixel units, ordered as the channels reach the model (i.e. after
    `bgr` swapped R and B). `int_mean` uses the integer `mean_chn_*` fields instead of the float
    `min_chn_*` ones, which is how the documented Caffe configs are written.
    """

    mean: tuple[float, float, float]
    var_reci: tuple[float, float, float]
    bgr: bool = False
    int_mean: bool = False
    center_crop_from: tuple[int, int] | None = None  # default source (w, h) to centre-crop from
    yuv: bool = False  # YUV420SP_U8 (NV12) input + CSC to RGB (BGR when bgr): DVPP's pictures (decode: dvpp)


def _from_mean_std(mean: Sequence[float], std: Sequence[float], *, bgr: bool = False, yuv: bool = False) -> AippPreset:
    """torchvision-style mean/std (fractions of 1, in the model's channel order) -> AIPP units."""
    if len(mean) != 3 or len(std) != 3:
        raise ModelSpecError("AIPP mean and std need exactly 3 values each")
    if any(s <= 0 for s in std):
        raise ModelSpecError("AIPP std values must be positive")
    return AippPreset(
        mean=tuple(m * 255 for m in mean),  # type: ignore[arg-type]
        var_reci=tuple(1 / (s * 255) for s in std),  # type: ignore[arg-type]
        bgr=bgr,
        yuv=yuv,
    )


# The same preset names as agent/preprocess.py, so an .om with AIPP does on the chip exactly what
# the onnxruntime backend does on the CPU. `raw-u8` means "no AIPP" and so is not listed.
AIPP_PRESETS: dict[str, AippPreset] = {
    # growthpath README: src 256x256, crop 224 at offset 16, RGB mean/std.
    "imagenet": AippPreset(
        mean=(123.675, 116.28, 103.53),
        var_reci=(0.0171247538316637, 0.0175070028011204, 0.0174291938997821),
        center_crop_from=(256, 256),
    ),
    # Caffe ResNet: BGR, integer means 104/117/123, no scaling.
    "caffe": AippPreset(mean=(104, 117, 123), var_reci=(1.0, 1.0, 1.0), bgr=True, int_mean=True),
    # The seed app's CIFAR preprocessing: BGR, mean .4914/.4822/.4465, std .2023/.1994/.2010.
    "cifar": _from_mean_std((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), bgr=True),
}


def _num(value: float) -> str:
    """15 significant digits: reproduces the documented values (0.0171247538316637, 123.675, 1.0)."""
    if float(value).is_integer():
        return f"{value:.1f}"
    return f"{value:.15g}"


def aipp_config(
    preset: str | Mapping[str, object] = "imagenet",
    *,
    model_size: tuple[int, int] = (224, 224),
    src_size: tuple[int, int] | None = None,
    crop: tuple[int, int] | None = None,
) -> str:
    """Return a static AIPP config (the `--insert_op_conf` file) for a preprocessing preset.

    AIPP turns the model's first input into UINT8 RGB888 (HWC) of `src_size`, and does the crop and
    normalisation on the chip. So the agent must then feed raw uint8 pixels of exactly `src_size`
    (its `raw-u8` path), not normalised floats.

    preset: a name from AIPP_PRESETS or a mapping {"mean": [..3], "std": [..3], "bgr": bool} with
    torchvision-style values (fractions of 1, in the model's channel order).
    model_size: (w, h) of the model input; the crop size.
    src_size: (w, h) of the image handed to the model. Defaults to the preset's (imagenet: 256x256,
    the resize-256/crop-224 recipe), else model_size (no crop).
    crop: (x, y) load_start_pos of the crop; default centred.
    """
    spec = _aipp_preset(preset)
    if src_size is None:
        src_size = spec.center_crop_from if spec.center_crop_from else model_size
    crop = _aipp_crop(model_size, src_size, crop)
    return _aipp_text(spec, model_size, src_size, crop)


def _aipp_preset(preset: str | Mapping[str, object]) -> AippPreset:
    """A preset by name, or one made from a torchvision-style {"mean", "std", "bgr"} mapping."""
    if not isinstance(preset, str):
        return _from_mean_std(preset.get("mean", ()), preset.get("std", ()), bgr=bool(preset.get("bgr")),  # type: ignore[arg-type]
                              yuv=bool(preset.get("yuv")))
    try:
        return AIPP_PRESETS[preset]
    except KeyError:
        known = ", ".join(sorted(AIPP_PRESETS))
        raise ModelSpecError(f"unknown AIPP preset {preset!r} (known: {known}, or mean/std)") from None


def _aipp_crop(
    model_size: tuple[int, int], src_size: tuple[int, int], crop: tuple[int, int] | None
) -> tuple[int, int]:
    """The crop's (x, y) in the source image (default: centred); the model-sized crop must fit in it."""
    model_w, model_h = model_size
    src_w, src_h = src_size
    if src_w < model_w or src_h < model_h:
        raise ModelSpecError(
            f"AIPP source {src_w}x{src_h} is smaller than the model input {model_w}x{model_h}"
        )
    if crop is None:
        crop = ((src_w - model_w) // 2, (src_h - model_h) // 2)
    x, y = crop
    if x < 0 or y < 0 or x + model_w > src_w or y + model_h > src_h:
        raise ModelSpecError(
            f"AIPP crop at ({x},{y}) of {model_w}x{model_h} leaves the {src_w}x{src_h} source"
        )
    return crop


def _aipp_text(
    spec: AippPreset, model_size: tuple[int, int], src_size: tuple[int, int], crop: tuple[int, int]
) -> str:
    """The ``aipp_op { ... }`` block: RGB888_U8 input of ``src_size``, cropped, then normalised."""
    (model_w, model_h), (src_w, src_h), (x, y) = model_size, src_size, crop
    if spec.yuv and (src_w % 2 or src_h % 2 or x % 2 or y % 2):
        raise ModelSpecError(f"a YUV420SP_U8 AIPP input needs even sizes and crop offsets, not {src_w}x{src_h} at ({x},{y})")
    lines = [
        "aipp_op {",
        "    aipp_mode : static",
        f"    input_format : {'YUV420SP_U8' if spec.yuv else 'RGB888_U8'}",
        f"    src_image_size_w : {src_w}",
        f"    src_image_size_h : {src_h}",
    ]
    if (src_w, src_h) != (model_w, model_h):
        lines += [
            "    crop : true",
            f"    load_start_pos_h : {y}",
            f"    load_start_pos_w : {x}",
            f"    crop_size_w : {model_w}",
            f"    crop_size_h : {model_h}",
        ]
    else:
        lines.append("    crop : false")
    lines += _csc_lines(spec) if spec.yuv else [
        "    csc_switch : false",
        f"    rbuv_swap_switch : {'true' if spec.bgr else 'false'}",
    ]
    field = "mean_chn" if spec.int_mean else "min_chn"
    for i, m in enumerate(spec.mean):
        lines.append(f"    {field}_{i} : {int(m) if spec.int_mean else _num(m)}")
    for i, v in enumerate(spec.var_reci):
        lines.append(f"    var_reci_chn_{i} : {_num(v)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# YUV (JPEG's full-range BT.601 YCbCr, what JPEGD writes) -> R, G, B, x256: the growthpath template's matrix.
_CSC_RGB = ((256, 0, 359), (256, -88, -183), (256, 454, 0))


def _csc_lines(spec: AippPreset) -> list[str]:
    """CSC of an NV12 input (U before V: no rbuv swap) into the model's channel order (B, G, R when bgr)."""
    rows = _CSC_RGB[::-1] if spec.bgr else _CSC_RGB
    lines = ["    csc_switch : true", "    rbuv_swap_switch : false"]
    lines += [f"    matrix_r{r}c{c} : {rows[r][c]}" for r in range(3) for c in range(3)]
    lines += [f"    output_bias_{i} : 0" for i in range(3)]
    lines += [f"    input_bias_{i} : {b}" for i, b in enumerate((0, 128, 128))]
    return lines


def aipp_from_preprocess(preprocess: Mapping[str, object], *, yuv: bool = False) -> dict | None:
    """AIPP that normalises exactly as the agent's ``job.preprocess`` would on the CPU, or None when that
    preprocessing does not normalise (``raw-u8``: the model does it itself).

    Only the normalisation moves to the chip: with a uint8 model input the agent still resizes, crops
    and orders the channels (BGR for caffe/cifar) itself and feeds the model-sized image, so the AIPP
    neither crops nor swaps. value = (pixel * scale - mean) / std = (pixel - mean/scale) * scale/std,
    i.e. torchvision-style mean/std (fractions of 1) of mean/(255*scale) and std/(255*scale).

    ``yuv`` (the acl backend's ``decode: dvpp``): the input is the YUV420SP_U8 picture DVPP makes of the
    same crop, and the AIPP's CSC gives the channels in the preprocessing's order (BGR for caffe/cifar).
    Such an input needs AIPP even for ``raw-u8`` (the CSC): then mean 0, std 1/255 (pixels unchanged).
    """
    from agent.preprocess import PreprocessError, resolve

    try:
        cfg = resolve(dict(preprocess))
    except PreprocessError as exc:
        raise ModelSpecError(f"app.preprocess cannot become AIPP: {exc}") from None
    if not cfg.normalize:
        return {"mean": [0.0] * 3, "std": [1 / 255] * 3, "bgr": cfg.color == "BGR", "yuv": True} if yuv else None
    unit = 255 * cfg.scale
    return {"mean": [m / unit for m in cfg.mean], "std": [v / unit for v in cfg.std],
            "bgr": yuv and cfg.color == "BGR", "yuv": yuv}




# ---------------------------------------------------------------- an atc AIPP config file (--aipp FILE)

_FORMATS = ("YUV420SP_U8", "XRGB8888_U8", "RGB888_U8", "YUV400_U8", "NC1HWC0DI_FP16", "NC1HWC0DI_S8",
            "ARGB8888_U8", "YUYV_U8", "YUV422SP_U8", "AYUV444_U8", "RAW10", "RAW12", "RAW16", "RAW24",
            "RGB16", "RGB20", "RGB24", "RGB8_IR", "RGB16_IR", "RGB24_IR")
_ENUMS = {"aipp_mode": ("static", "dynamic"), "input_format": _FORMATS}
_BOOLS = ("crop", "padding", "resize", "csc_switch", "rbuv_swap_switch", "ax_swap_switch", "single_line_mode",
          "support_rotation")
_INTS: dict[str, tuple[int, int]] = {
    "related_input_rank": (0, 31), "max_src_image_size": (0, 2**31 - 1),
    "src_image_size_w": (0, 4096), "src_image_size_h": (0, 4096),
    "load_start_pos_w": (0, 4095), "load_start_pos_h": (0, 4095), "crop_size_w": (0, 4096), "crop_size_h": (0, 4096),
    "resize_output_w": (0, 4096), "resize_output_h": (0, 4096),
    **{f"{side}_padding_size": (0, 32) for side in ("left", "right", "top", "bottom")},
    **{f"matrix_r{r}c{c}": (-32768, 32767) for r in range(3) for c in range(3)},
    **{f"{kind}_bias_{i}": (0, 255) for kind in ("input", "output") for i in range(3)},
    **{f"mean_chn_{i}": (0, 255) for i in range(4)},
}  # fmt: skip
_FLOATS = ("padding_value", *(f"min_chn_{i}" for i in range(4)), *(f"var_reci_chn_{i}" for i in range(4)))
_TOKEN = re.compile(r'#[^\n]*|"[^"\n]*"|[{}:]|[^\s{}:#"]+|\n|"')


@dataclass(frozen=True)
class AippFile:
    """A checked ``--insert_op_conf`` file: its text (what atc gets) and the first ``aipp_op`` block's
    fields (value strings) with the line each was set on."""

    path: Path
    text: str
    fields: dict[str, str]
    lines: dict[str, int]

    def where(self, field: str | None = None) -> str:
        """``file:line`` of a field (of the block's first line when it is not set)."""
        return f"{self.path}:{self.lines.get(field or '', self.lines.get('aipp_op', 1))}"

    def number(self, field: str, default: int = 0) -> int:
        return int(self.fields.get(field, default))

    def on(self, field: str) -> bool:
        return self.fields.get(field, "false").lower() in ("true", "t", "1")


def _tokens(path: Path, text: str) -> list[tuple[str, int]]:
    out, line = [], 1
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "\n":
            line += 1
        elif tok == '"':
            raise ModelSpecError(f"{path}:{line}: unterminated string")
        elif not tok.startswith("#"):
            out.append((tok, line))
    return out


def _blocks(path: Path, text: str) -> list[tuple[dict[str, str], dict[str, int]]]:
    """The ``aipp_op { name : value ... }`` blocks (protobuf text: several fields a line or one each)."""
    toks, blocks, i = _tokens(path, text), [], 0
    while i < len(toks):
        word, line = toks[i]
        if word != "aipp_op":
            raise ModelSpecError(f"{path}:{line}: expected 'aipp_op {{', found {word!r}")
        i += 2 if i + 1 < len(toks) and toks[i + 1][0] == ":" else 1
        if i >= len(toks) or toks[i][0] != "{":
            raise ModelSpecError(f"{path}:{line}: 'aipp_op' must be followed by '{{'")
        fields, lines, i = {}, {"aipp_op": line}, i + 1
        while i < len(toks) and toks[i][0] != "}":
            key, at = toks[i]
            if i + 2 >= len(toks) or toks[i + 1][0] != ":" or toks[i + 2][0] in ("{", "}", ":"):
                raise ModelSpecError(f"{path}:{at}: expected 'name : value' at {key!r}")
            if key in fields:
                raise ModelSpecError(f"{path}:{at}: {key} is set twice (first on line {lines[key]})")
            fields[key], lines[key] = toks[i + 2][0].strip('"'), at
            i += 3
        if i >= len(toks):
            raise ModelSpecError(f"{path}:{line}: the aipp_op block opened here is not closed with '}}'")
        blocks.append((fields, lines))
        i += 1
    if not blocks:
        raise ModelSpecError(f"{path}:1: no aipp_op block")
    return blocks


def _check_value(path: Path, key: str, value: str, line: int) -> None:
    where = f"{path}:{line}"
    if key in _ENUMS:
        if value not in _ENUMS[key]:
            raise ModelSpecError(f"{where}: {key} {value!r} is not one of {', '.join(_ENUMS[key])}")
    elif key in _BOOLS:
        if value.lower() not in ("true", "false", "t", "f", "1", "0"):
            raise ModelSpecError(f"{where}: {key} takes true or false, not {value!r}")
    elif key in _INTS:
        lo, hi = _INTS[key]
        if not re.fullmatch(r"-?\d+", value) or not lo <= int(value) <= hi:
            raise ModelSpecError(f"{where}: {key} takes an integer in {lo}..{hi}, not {value!r}")
    elif key in _FLOATS:
        try:
            float(value)
        except ValueError:
            raise ModelSpecError(f"{where}: {key} takes a number, not {value!r}") from None
    else:
        raise ModelSpecError(f"{where}: unknown AIPP field {key!r}")


def _check_block(cfg: AippFile) -> None:
    """What the documented template requires of one static/dynamic block beyond each value's type."""
    for key in ("aipp_mode",) + (("input_format",) if cfg.fields.get("aipp_mode") == "static" else ()):
        if key not in cfg.fields:
            raise ModelSpecError(f"{cfg.where()}: the aipp_op block needs {key}")
    if cfg.fields.get("input_format") == "YUV420SP_U8":
        odd = [k for k in ("src_image_size_w", "src_image_size_h") if cfg.number(k) % 2]
        odd += [k for k in ("load_start_pos_w", "load_start_pos_h") if cfg.on("crop") and cfg.number(k) % 2]
        if odd:
            raise ModelSpecError(f"{cfg.where(odd[0])}: {odd[0]} must be even for YUV420SP_U8")
    if cfg.on("crop"):
        for side in ("w", "h"):
            src, start, size = (cfg.number(f"{k}_{side}") for k in ("src_image_size", "load_start_pos", "crop_size"))
            if src and size and start + size > src:
                raise ModelSpecError(f"{cfg.where(f'crop_size_{side}')}: the crop ({start} + {size}) leaves the "
                                     f"source ({src}) along {side}")  # fmt: skip


def read_aipp_file(path: str | os.PathLike) -> AippFile:
    """Read and check an atc AIPP config (the documented ``aipp_op { ... }`` format); a bad file is a
    ModelSpecError naming ``file:line``. Several blocks (one per input, ``related_input_rank``) are
    checked; :class:`AippFile` describes the first."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelSpecError(f"AIPP config {path}: cannot read it ({exc})") from None
    configs = []
    for fields, lines in _blocks(path, text):
        for key, value in fields.items():
            _check_value(path, key, value, lines[key])
        configs.append(AippFile(path, text, fields, lines))
        _check_block(configs[-1])
    return configs[0]


def check_aipp_fits(cfg: AippFile, model_size: tuple[int, int] | None) -> None:
    """A static block's output (the crop, else the source; 0 = the model's own size) must be the model
    input's (w, h), as atc requires."""
    if model_size is None or cfg.fields.get("aipp_mode") != "static":
        return
    for side, want in zip(("w", "h"), model_size, strict=True):
        key = f"crop_size_{side}" if cfg.on("crop") else f"src_image_size_{side}"
        got = cfg.number(key) or want
        if got != want:
            raise ModelSpecError(f"{cfg.where(key)}: the AIPP output is {got} along {side} but the model input "
                                 f"is {model_size[0]}x{model_size[1]} (w x h)")  # fmt: skip
