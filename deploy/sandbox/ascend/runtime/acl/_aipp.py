"""Static AIPP as the simulated model applies it: uint8 image in, the model's float input out.

Order (as documented for AIPP): channel swap, crop, colour-space conversion, normalisation:
``out = (in - mean_chn_i - min_chn_i) * var_reci_chn_i``. Input formats: RGB888_U8 (NHWC, 3
channels) and YUV420SP_U8 (NV12: a full-size Y plane, then interleaved U/V at half resolution;
``H * W * 3 / 2`` bytes per image). The result is NCHW float32. Python 3.7, numpy only.
"""

import numpy as np

# The growthpath template's YUV -> RGB matrix and bias (BT.601, x256), used when the config has
# csc_switch on and no matrix of its own.
_DEFAULT_MATRIX = ((256, 0, 359), (256, -88, -183), (256, 454, 0))
_DEFAULT_BIAS = (0, 128, 128)


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
    y = raw[: batch * h * w].reshape(batch, h, w).astype(np.float32)
    uv = raw[batch * h * w :].reshape(batch, h // 2, w // 2, 2).astype(np.float32)
    uv = uv.repeat(2, axis=1).repeat(2, axis=2)
    return np.concatenate([y[..., None], uv], axis=3)  # N,H,W,3 (Y, U, V)


def _matrix(aipp):
    if any("matrix_r0c0" == k for k in aipp):
        return np.array([[float(aipp.get(f"matrix_r{r}c{c}", 0)) for c in range(3)] for r in range(3)])
    return np.array(_DEFAULT_MATRIX, dtype=np.float64)


def apply(aipp, raw, batch):
    """The model input (N,3,crop_h,crop_w float32) from ``raw`` uint8 bytes of ``batch`` images."""
    w, h = int(aipp["src_image_size_w"]), int(aipp["src_image_size_h"])
    data = np.frombuffer(raw, dtype=np.uint8)
    yuv = aipp.get("input_format") == "YUV420SP_U8"
    if yuv:
        img = _nv12_to_yuv(data, batch, h, w)
    else:
        img = data[: batch * h * w * 3].reshape(batch, h, w, 3).astype(np.float32)
    if _on(aipp, "rbuv_swap_switch"):
        img = img[..., [0, 2, 1]] if yuv else img[..., ::-1]
    if _on(aipp, "crop"):
        y0, x0 = int(aipp.get("load_start_pos_h", 0)), int(aipp.get("load_start_pos_w", 0))
        ch, cw = int(aipp.get("crop_size_h", h)), int(aipp.get("crop_size_w", w))
        img = img[:, y0 : y0 + ch, x0 : x0 + cw, :]
    if _on(aipp, "csc_switch"):
        bias = np.array(
            [float(aipp.get(f"input_bias_{i}", _DEFAULT_BIAS[i] if yuv else 0)) for i in range(3)]
        )
        out_bias = np.array([float(aipp.get(f"output_bias_{i}", 0)) for i in range(3)])
        img = np.clip((img - bias) @ _matrix(aipp).T / 256.0 + out_bias, 0, 255)
    mean = np.array(
        [float(aipp.get(f"mean_chn_{i}", 0)) + float(aipp.get(f"min_chn_{i}", 0)) for i in range(3)],
        dtype=np.float32,
    )
    var = np.array([float(aipp.get(f"var_reci_chn_{i}", 1.0)) for i in range(3)], dtype=np.float32)
    img = (img.astype(np.float32) - mean) * var
    return np.ascontiguousarray(img.transpose(0, 3, 1, 2), dtype=np.float32)


def _on(aipp, key):
    return str(aipp.get(key, "false")).lower() in ("true", "1")


def parse(text):
    """The ``aipp_op { key : value ... }`` config (what --insert_op_conf names) as a dict of strings."""
    body = text
    if "{" in text:
        body = text[text.index("{") + 1 : text.rindex("}")]
    out = {}
    for line in body.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if ":" not in line:
            raise ValueError(f"AIPP config line without ':': {line!r}")
        key, value = (s.strip() for s in line.split(":", 1))
        out[key] = value.strip('"')
    return out
