"""Static AIPP as the simulated model applies it: uint8 image in, the model's float input out.

Order (as documented for AIPP): channel swap, crop, colour-space conversion, normalisation:
``out = (in - mean_chn_i - min_chn_i) * var_reci_chn_i``. Input formats: RGB888_U8 (NHWC, 3
channels) and YUV420SP_U8 (NV12: a full-size Y plane, then interleaved U/V at half resolution;
``H * W * 3 / 2`` bytes per image; ``rbuv_swap_switch`` makes it NV21). CSC is the documented
integer one: ``out_c = (sum_k matrix_rc_k * (in_k - input_bias_k)) >> 8 + output_bias_c``,
clipped to 0..255 (the matrix rows give the output channels in order: the JPEG YUV->RGB matrix
gives R, G, B). The result is NCHW float32. Python 3.7, numpy only.

The config (what ``--insert_op_conf`` names) is protobuf text: ``aipp_op { key : value ... }``
blocks, fields separated by white space (one or several a line), ``#`` comments.
"""

import re

import numpy as np

# The growthpath template's YUV -> RGB matrix and bias (BT.601, x256), used when the config has
# csc_switch on and no matrix of its own.
_DEFAULT_MATRIX = ((256, 0, 359), (256, -88, -183), (256, 454, 0))
_DEFAULT_BIAS = (0, 128, 128)
_TOKEN = re.compile(r'#[^\n]*|"[^"\n]*"|[{}:]|[^\s{}:#"]+|\n|"')


def image_bytes(aipp, batch):
    """Bytes of the uint8 input for ``batch`` images."""
    w, h = int(aipp["src_image_size_w"]), int(aipp["src_image_size_h"])
    if aipp.get("input_format") == "YUV420SP_U8":
        return batch * w * h * 3 // 2
    return batch * w * h * 3


def input_dims(aipp, batch):
    """What get_input_dims reports for an AIPP input: NHWC of the source image."""
    return [batch, int(aipp["src_image_size_h"]), int(aipp["src_image_size_w"]), 3]


def _nv12_to_yuv(raw, batch, h, w):
    y = raw[: batch * h * w].reshape(batch, h, w)
    uv = raw[batch * h * w : batch * h * w * 3 // 2].reshape(batch, h // 2, w // 2, 2)
    uv = uv.repeat(2, axis=1).repeat(2, axis=2)
    return np.concatenate([y[..., None], uv], axis=3)  # N,H,W,3 (Y, U, V) uint8


def _matrix(aipp):
    if any(k.startswith("matrix_r") for k in aipp):
        return np.array([[int(aipp.get(f"matrix_r{r}c{c}", 0)) for c in range(3)] for r in range(3)])
    return np.array(_DEFAULT_MATRIX, dtype=np.int64)


def _csc(aipp, img, yuv):
    """The documented integer CSC of uint8 pixels (N,H,W,3): int32 0..255 out. One weighted sum of
    planes per output channel (numpy has no BLAS for integer matrix products)."""
    bias = [int(aipp.get(f"input_bias_{i}", _DEFAULT_BIAS[i] if yuv else 0)) for i in range(3)]
    centred = [img[..., k].astype(np.int32) - bias[k] for k in range(3)]
    matrix = _matrix(aipp)
    out = np.empty(img.shape, np.int32)
    for r in range(3):
        acc = np.zeros(img.shape[:-1], np.int32)
        for k in range(3):
            if matrix[r, k]:
                acc += int(matrix[r, k]) * centred[k]
        acc >>= 8  # an arithmetic shift: floors, as on the chip
        acc += int(aipp.get(f"output_bias_{r}", 0))
        out[..., r] = np.clip(acc, 0, 255)
    return out


def apply(aipp, raw, batch):
    """The model input (N,3,crop_h,crop_w float32) from ``raw`` uint8 bytes of ``batch`` images."""
    w, h = int(aipp["src_image_size_w"]), int(aipp["src_image_size_h"])
    data = np.frombuffer(raw, dtype=np.uint8)
    yuv = aipp.get("input_format") == "YUV420SP_U8"
    img = _nv12_to_yuv(data, batch, h, w) if yuv else data[: batch * h * w * 3].reshape(batch, h, w, 3)
    if is_on(aipp, "rbuv_swap_switch"):
        img = img[..., [0, 2, 1]] if yuv else img[..., ::-1]
    if is_on(aipp, "crop"):
        y0, x0 = int(aipp.get("load_start_pos_h", 0)), int(aipp.get("load_start_pos_w", 0))
        ch, cw = int(aipp.get("crop_size_h", h)), int(aipp.get("crop_size_w", w))
        img = img[:, y0 : y0 + ch, x0 : x0 + cw, :]
    if is_on(aipp, "csc_switch"):
        img = _csc(aipp, img, yuv)
    mean = np.array(
        [float(aipp.get(f"mean_chn_{i}", 0)) + float(aipp.get(f"min_chn_{i}", 0)) for i in range(3)],
        dtype=np.float32,
    )
    var = np.array([float(aipp.get(f"var_reci_chn_{i}", 1.0)) for i in range(3)], dtype=np.float32)
    img = (img.astype(np.float32) - mean) * var
    return np.ascontiguousarray(img.transpose(0, 3, 1, 2), dtype=np.float32)


def is_on(aipp, key):
    """A bool field: protobuf text takes true/false, True/False, t/f and 1/0."""
    return str(aipp.get(key, "false")).lower() in ("true", "t", "1")


def tokens(text):
    """(token, line number) of an AIPP config, comments dropped; ValueError for a stray quote."""
    out, line = [], 1
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "\n":
            line += 1
        elif tok == '"':
            raise ValueError(f"line {line}: unterminated string")
        elif not tok.startswith("#"):
            out.append((tok, line))
    return out


def parse_blocks(text):
    """Every ``aipp_op { ... }`` block as a list of ({field: value string}, {field: line})."""
    toks, blocks, i = tokens(text), [], 0
    while i < len(toks):
        word, line = toks[i]
        if word != "aipp_op":
            raise ValueError(f"line {line}: expected 'aipp_op {{', found {word!r}")
        i += 1 + (i + 1 < len(toks) and toks[i + 1][0] == ":")
        if i >= len(toks) or toks[i][0] != "{":
            raise ValueError(f"line {line}: 'aipp_op' must be followed by '{{'")
        fields, lines, i = {}, {}, i + 1
        while i < len(toks) and toks[i][0] != "}":
            key, kline = toks[i]
            if i + 2 >= len(toks) or toks[i + 1][0] != ":" or toks[i + 2][0] in "{}:":
                raise ValueError(f"line {kline}: expected 'name : value' at {key!r}")
            if key in fields:
                raise ValueError(f"line {kline}: {key} is set twice (line {lines[key]} first)")
            fields[key], lines[key] = toks[i + 2][0].strip('"'), kline
            i += 3
        if i >= len(toks):
            raise ValueError(f"line {line}: the aipp_op block opened here has no closing '}}'")
        blocks.append((fields, lines))
        i += 1
    return blocks


def parse(text):
    """The first ``aipp_op`` block as {field: value string} (what the simulated atc bakes in)."""
    blocks = parse_blocks(text)
    if not blocks:
        raise ValueError("no aipp_op block")
    return blocks[0][0]
