"""The simulated DVPP (``acl.media``) against its documented Ascend 310 rules: dvpp_malloc memory,
JPEGD strides 128 x 16, VPC strides 16 x 2, YUV420SP sizes stride_w * stride_h * 3 / 2, odd
input sizes rounded down, ROI parity, scaling limits, the documented error codes, faults that do
no work, work done on the stream; decode of real photos as libjpeg (Pillow) decodes them."""

import io
import threading

import aclsim
import numpy as np
import pytest
from PIL import Image

PHOTOS = aclsim.REPO / "demo" / "images"
NV12, NV21, UNKNOWN = 1, 2, 10000


def _photo(name):
    path = PHOTOS / name
    if not path.is_file():
        pytest.skip("demo photos missing: run `python3 -m deploy model demo` first")
    return path


def _ready(acl):
    assert acl.init() == 0 and acl.rt.set_device(0) == 0
    ctx, ret = acl.rt.create_context(0)
    stream, ret2 = acl.rt.create_stream()
    assert ret == ret2 == 0
    channel = acl.media.dvpp_create_channel_desc()
    assert channel and acl.media.dvpp_create_channel(channel) == 0
    return ctx, stream, channel


def _dvpp(acl, data):
    """dvpp_malloc memory holding ``data``."""
    ptr, ret = acl.media.dvpp_malloc(len(data))
    assert ret == 0
    assert acl.rt.memcpy(ptr, len(data), acl.util.bytes_to_ptr(bytes(data)), len(data), 1) == 0
    return ptr


def _pic(acl, ptr, size, fmt, w, h, ws, hs):
    desc = acl.media.dvpp_create_pic_desc()
    m = acl.media
    for setter, value in ((m.dvpp_set_pic_desc_data, ptr), (m.dvpp_set_pic_desc_size, size),
                          (m.dvpp_set_pic_desc_format, fmt), (m.dvpp_set_pic_desc_width, w),
                          (m.dvpp_set_pic_desc_height, h), (m.dvpp_set_pic_desc_width_stride, ws),
                          (m.dvpp_set_pic_desc_height_stride, hs)):  # fmt: skip
        assert setter(desc, value) == 0
    return desc


def _read(acl, ptr, n):
    """ACL_DEVICE run mode: device memory is the board's RAM, ptr_to_bytes reads it."""
    return np.frombuffer(acl.util.ptr_to_bytes(ptr, n), np.uint8)


def _out_pic(acl, w, h, ws, hs, fmt=NV12, size=None):
    size = ws * hs * 3 // 2 if size is None else size
    ptr, ret = acl.media.dvpp_malloc(size)
    assert ret == 0
    return ptr, _pic(acl, ptr, size, fmt, w, h, ws, hs)


def _decode(acl, stream, channel, path, fmt=NV12):
    """The acllite jpegd flow: (output ptr, desc, w, h, ws, hs) after a synchronised decode."""
    data = path.read_bytes()
    src = _dvpp(acl, data)
    w, h, comps, ret = acl.media.dvpp_jpeg_get_image_info(acl.util.bytes_to_ptr(data), len(data))
    assert ret == 0 and comps == 3
    size, ret = acl.media.dvpp_jpeg_predict_dec_size(src, len(data), fmt)  # the board reads its own RAM
    ws, hs = -(-w // 128) * 128, -(-h // 16) * 16
    assert ret == 0 and size == ws * hs * 3 // 2
    out, desc = _out_pic(acl, w, h, ws, hs, fmt, size)
    assert acl.media.dvpp_jpeg_decode_async(channel, src, len(data), desc, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    return out, desc, w, h, ws, hs


def _planes(raw, ws, hs):
    return raw[: ws * hs].reshape(hs, ws), raw[ws * hs : ws * hs * 3 // 2].reshape(hs // 2, ws)


def test_dvpp_malloc_is_its_own_aligned_memory(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_FAIL="dvpp_malloc:3")
    assert acl.media.dvpp_malloc(100) == (0, 100001)  # before acl.init
    _ready(acl)
    a, ret = acl.media.dvpp_malloc(100)
    b, _ = acl.media.dvpp_malloc(1)
    assert ret == 0 and a % 128 == 0 and b % 128 == 0 and a >= 1 << 60  # device address space
    assert acl.media.dvpp_malloc(5) == (0, 207001)  # injected: nothing allocated
    assert _read(acl, a, 160).tolist() == [0] * 160  # ALIGN_UP(100, 32) + 32 bytes, zeroed
    with pytest.raises(RuntimeError):
        _read(acl, a, 161)
    dev, _ = acl.rt.malloc(64, 0)
    assert acl.rt.free(a) == 100000 and "dvpp_free" in acl.get_recent_err_msg()
    assert acl.media.dvpp_free(dev) == 100000
    assert acl.media.dvpp_free(a) == 0 and acl.media.dvpp_free(a) == 100000
    assert acl.rt.free(dev) == 0


def test_jpeg_decode_matches_libjpeg_and_lands_after_synchronize(monkeypatch):
    """chelsea.jpg is 451 wide: odd, as JPEGD allows. The Y plane is libjpeg's (Pillow's) own
    decode; the chroma is its 2x2 block means, within rounding; the strides' padding is black."""
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    path = _photo("chelsea.jpg")
    out, desc, w, h, ws, hs = _decode(acl, stream, channel, path)
    assert (w, h, ws, hs) == (451, 300, 512, 304)
    assert acl.media.dvpp_get_pic_desc_width(desc) == 451 and acl.media.dvpp_get_pic_desc_ret_code(desc) == 0
    y, uv = _planes(_read(acl, out, ws * hs * 3 // 2), ws, hs)
    ref = Image.open(path)
    ref.draft("YCbCr", ref.size)
    ycc = np.asarray(ref).astype(np.float64)
    assert np.array_equal(y[:h, :w], ycc[..., 0].astype(np.uint8)) and not y[:h, w:].any()
    pad = np.pad(ycc, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    means = (pad[0::2, 0::2] + pad[1::2, 0::2] + pad[0::2, 1::2] + pad[1::2, 1::2]) / 4
    cw = (w + 1) // 2
    got = np.stack([uv[: (h + 1) // 2, 0 : 2 * cw : 2], uv[: (h + 1) // 2, 1 : 2 * cw : 2]], -1)
    assert np.abs(got[:, :-1] - means[:, :-1, 1:]).max() <= 1  # the odd last column averages 2 pixels
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    yy = y[:h, :w].astype(np.float64)
    cb = np.repeat(np.repeat(got[..., 0], 2, 0), 2, 1)[:h, :w] - 128.0
    assert np.abs(yy + 1.772 * cb - rgb[..., 2]).mean() < 1.0  # blue from our planes vs libjpeg's RGB


def test_large_jpeg_decode_gives_the_stored_chroma(monkeypatch):
    """From 2 megapixels on JPEGD decodes the luma into the Y plane and the chroma at half scale,
    where libjpeg computes 4:2:0 chroma at its stored resolution: Y as libjpeg decodes it, chroma
    as stored (Pillow's own half-scale decode of the same file)."""
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    rng = np.random.RandomState(1)
    smooth = Image.fromarray(rng.randint(0, 256, (24, 40, 3)).astype(np.uint8)).resize((2001, 1201), Image.BICUBIC)
    jpeg = io.BytesIO()
    smooth.save(jpeg, "JPEG", quality=85)
    data = jpeg.getvalue()
    src = _dvpp(acl, data)
    ws, hs = 2048, 1216
    out, desc = _out_pic(acl, 2001, 1201, ws, hs)
    assert acl.media.dvpp_jpeg_decode_async(channel, src, len(data), desc, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    y, uv = _planes(_read(acl, out, ws * hs * 3 // 2), ws, hs)
    full = Image.open(io.BytesIO(data))
    full.draft("YCbCr", full.size)
    half = Image.open(io.BytesIO(data))
    half.draft("YCbCr", (1000, 600))
    assert half.size == (1001, 601)
    assert np.array_equal(y[:1201, :2001], np.asarray(full)[..., 0])
    stored = np.asarray(half)
    assert np.array_equal(uv[:601, 0:2002:2], stored[..., 1]) and np.array_equal(uv[:601, 1:2002:2], stored[..., 2])


def test_decode_is_queued_on_the_stream_behind_earlier_work(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    data = _photo("coffee.jpg").read_bytes()
    src = _dvpp(acl, data)
    out, desc = _out_pic(acl, 600, 400, 640, 400)
    assert acl.rt.subscribe_report(threading.get_ident(), stream) == 0
    assert acl.rt.launch_callback(lambda _: None, None, 1, stream) == 0  # blocks the stream until processed
    assert acl.media.dvpp_jpeg_decode_async(channel, src, len(data), desc, stream) == 0
    assert not _read(acl, out, 640 * 400).any()  # queued behind the callback: nothing decoded yet
    assert acl.rt.process_report(1000) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    assert _read(acl, out, 640 * 400).any()


@pytest.mark.parametrize("change, code, reason", [
    ({"width_stride": 600}, 100000, "multiple of 128"),
    ({"height_stride": 408}, 100000, "height_stride of 16"),
    ({"width_stride": 512}, 100000, "at least 640x400"),
    ({"size": 640 * 400}, 100000, "is less than"),
    ({"format": 12}, 100000, "NV12"),
    ({"memory": "rt"}, 100000, "acl.rt.malloc memory"),
    ({"memory": "host"}, 100000, "host memory"),
    ({"memory": "short"}, 100000, "run past the end"),
    ({"input": "rt"}, 100000, "acl.rt.malloc memory"),
    ({"input": "unaligned"}, 200003, "128-byte aligned"),
])  # fmt: skip
def test_jpeg_decode_refuses_what_the_rules_forbid_and_writes_nothing(monkeypatch, change, code, reason):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    data = _photo("coffee.jpg").read_bytes()  # 600x400: 640x400 strides, 384000 bytes
    fields = {"width_stride": 640, "height_stride": 400, "size": 640 * 400 * 3 // 2, "format": NV12}
    fields.update({k: v for k, v in change.items() if k in fields})
    out, _ = acl.media.dvpp_malloc(640 * 400 * 3 // 2)
    memory = change.get("memory")
    if memory == "rt":
        out, _ = acl.rt.malloc(640 * 400 * 3 // 2, 0)
    elif memory == "host":
        out, _ = acl.rt.malloc_host(640 * 400 * 3 // 2)
    elif memory == "short":
        out, _ = acl.media.dvpp_malloc(1000)
    src = _dvpp(acl, data)
    if change.get("input") == "rt":
        src, _ = acl.rt.malloc(len(data), 0)
        acl.rt.memcpy(src, len(data), acl.util.bytes_to_ptr(data), len(data), 1)
    elif change.get("input") == "unaligned":
        src, _ = acl.media.dvpp_malloc(len(data) + 64)
        src += 64
        acl.rt.memcpy(src, len(data), acl.util.bytes_to_ptr(data), len(data), 1)
    desc = _pic(acl, out, fields["size"], fields["format"], 600, 400, fields["width_stride"], fields["height_stride"])
    assert acl.media.dvpp_jpeg_decode_async(channel, src, len(data), desc, stream) == code
    assert reason in acl.get_recent_err_msg()
    assert acl.rt.synchronize_stream(stream) == 0
    if memory in (None, "short"):
        assert not _read(acl, out, 1000).any()


def test_jpeg_codings_jpegd_does_not_take_and_broken_data(monkeypatch, tmp_path):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    img = Image.open(_photo("coffee.jpg"))
    progressive = io.BytesIO()
    img.save(progressive, "JPEG", progressive=True)
    data = progressive.getvalue()
    assert acl.media.dvpp_jpeg_get_image_info(acl.util.bytes_to_ptr(data), len(data)) == (0, 0, 0, 148052)
    assert "progressive" in acl.get_recent_err_msg()
    out, desc = _out_pic(acl, 600, 400, 640, 400)
    assert acl.media.dvpp_jpeg_decode_async(channel, _dvpp(acl, data), len(data), desc, stream) == 148052
    junk = b"not a jpeg at all"
    assert acl.media.dvpp_jpeg_get_image_info_v2(acl.util.bytes_to_ptr(junk), len(junk))[-1] == 500001
    good = _photo("coffee.jpg").read_bytes()
    broken = good[: len(good) // 3]  # the headers are intact, the scan is cut
    assert acl.media.dvpp_jpeg_get_image_info_v2(acl.util.bytes_to_ptr(broken), len(broken)) == (600, 400, 3, 2, 0)
    assert acl.media.dvpp_jpeg_decode_async(channel, _dvpp(acl, broken), len(broken), desc, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 507018  # found on the device: ACL_ERROR_RT_AICPU_EXCEPTION
    assert acl.media.dvpp_get_pic_desc_ret_code(desc) == 507018
    assert acl.rt.synchronize_stream(stream) == 0  # reported once


def test_predict_sizes_and_where_the_host_may_read(monkeypatch):
    data = _photo("chelsea.jpg").read_bytes()
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_RUN_MODE="host")
    _ready(acl)
    host = acl.util.bytes_to_ptr(data)
    assert acl.media.dvpp_jpeg_predict_dec_size(host, len(data), NV12) == (512 * 304 * 3 // 2, 0)
    assert acl.media.dvpp_jpeg_predict_dec_size(host, len(data), UNKNOWN) == (512 * 304 * 3 // 2, 0)
    assert acl.media.dvpp_jpeg_predict_dec_size(host, len(data), 12) == (0, 100027)  # RGB: not a JPEGD output
    dev = _dvpp(acl, data)
    assert acl.media.dvpp_jpeg_predict_dec_size(dev, len(data), NV12) == (0, 100000)  # a host cannot read it
    assert "ACL_HOST" in acl.get_recent_err_msg()
    assert acl.media.dvpp_jpeg_get_image_info_v2(host, len(data)) == (451, 300, 3, 2, 0)  # ACL_JPEG_CSS_420


def _gradient_nv12(acl, w, h, ws, hs, fmt=NV12):
    """A picture whose Y rises along x, U along y, V constant; returns (ptr, desc, y, uv)."""
    y = np.zeros((hs, ws), np.uint8)
    y[:h, :w] = (np.arange(w) * 255 // (w - 1))[None, :]
    uv = np.zeros((hs // 2, ws), np.uint8)
    uv[: h // 2, 0:w:2] = (np.arange(h // 2) * 255 // (h // 2 - 1))[:, None]
    uv[: h // 2, 1:w:2] = 77
    raw = np.concatenate([y.ravel(), uv.ravel()]).tobytes()
    ptr = _dvpp(acl, raw)
    return ptr, _pic(acl, ptr, len(raw), fmt, w, h, ws, hs), y, uv


@pytest.mark.parametrize("interpolation", [0, 1, 2, 3, 4])
def test_resize_keeps_flat_planes_flat_and_ramps_ramps(monkeypatch, interpolation):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    src, src_desc, _, _ = _gradient_nv12(acl, 301, 200, 320, 200)  # odd width: rounded down to 300
    out, out_desc = _out_pic(acl, 100, 50, 112, 50, fmt=NV21)
    cfg = acl.media.dvpp_create_resize_config()
    assert acl.media.dvpp_set_resize_config_interpolation(cfg, interpolation) == 0
    assert acl.media.dvpp_set_resize_config_interpolation(cfg, 5) == 100000
    assert acl.media.dvpp_vpc_resize_async(channel, src_desc, out_desc, cfg, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    y, uv = _planes(_read(acl, out, 112 * 50 * 3 // 2), 112, 50)
    assert (uv[:25, 0:100:2] == 77).all()  # NV21 out: V first, constant
    assert np.abs(np.diff(uv[:25, 1:100:2].astype(int), axis=0) - 10).max() <= 3  # U ramp: 0..255 over 25 rows
    assert (np.diff(y[:50, :100].astype(int), axis=0) == 0).all()  # Y does not depend on y
    ramp = y[0, :100].astype(int)
    assert np.all(np.diff(ramp) >= 0) and abs(ramp[50] - 128) <= 4 and not y[:, 100:].any()


def test_resize_follows_opencv_bilinear_and_nearest(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    y_in = (np.arange(64 * 32).reshape(32, 64) * 7 % 251).astype(np.uint8)  # not smooth
    raw = np.concatenate([y_in.ravel(), np.full(64 * 16, 128, np.uint8)]).tobytes()
    src = _dvpp(acl, raw)
    src_desc = _pic(acl, src, len(raw), NV12, 64, 32, 64, 32)
    results = {}
    for mode in (1, 2):
        out, desc = _out_pic(acl, 32, 12, 32, 12)
        cfg = acl.media.dvpp_create_resize_config()
        acl.media.dvpp_set_resize_config_interpolation(cfg, mode)
        assert acl.media.dvpp_vpc_resize_async(channel, src_desc, desc, cfg, stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        results[mode] = _read(acl, out, 32 * 12).reshape(12, 32)
    assert np.array_equal(results[2], y_in[np.arange(12) * 32 // 12][:, np.arange(32) * 2])
    sx, sy = np.clip((np.arange(32) + 0.5) * 2 - 0.5, 0, 63), np.clip((np.arange(12) + 0.5) * 32 / 12 - 0.5, 0, 31)
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, (sy - y0)[:, None]
    f = y_in.astype(float)
    rows = f[y0] * (1 - fy) + f[np.minimum(y0 + 1, 31)] * fy
    expect = rows[:, x0] * (1 - fx) + rows[:, np.minimum(x0 + 1, 63)] * fx
    assert np.abs(results[1] - expect).max() <= 1


def test_crop_and_paste_writes_only_the_paste_area(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    src, src_desc, y_in, uv_in = _gradient_nv12(acl, 128, 64, 128, 64)
    out = _dvpp(acl, bytes([0x11]) * (64 * 64 * 3 // 2))
    out_desc = _pic(acl, out, 64 * 64 * 3 // 2, NV12, 64, 64, 64, 64)
    crop = acl.media.dvpp_create_roi_config(10, 41, 4, 19)  # 32x16 at (10, 4)
    paste = acl.media.dvpp_create_roi_config(16, 47, 8, 23)  # the same size at (16, 8): a plain copy
    assert acl.media.dvpp_vpc_crop_and_paste_async(channel, src_desc, out_desc, crop, paste, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    y, uv = _planes(_read(acl, out, 64 * 64 * 3 // 2).copy(), 64, 64)
    assert np.array_equal(y[8:24, 16:48], y_in[4:20, 10:42]) and np.array_equal(uv[4:12, 16:48], uv_in[2:10, 10:42])
    y[8:24, 16:48] = 0x11
    uv[4:12, 16:48] = 0x11
    assert (y == 0x11).all() and (uv == 0x11).all()
    for bad, reason in [((11, 41, 4, 19), "left and top must be even"), ((10, 40, 4, 19), "right and bottom odd"),
                        ((10, 135, 4, 19), "leaves the 128x64"), ((10, 15, 4, 19), "smaller than 10x6")]:  # fmt: skip
        assert acl.media.dvpp_set_roi_config(crop, *bad) == 0
        assert acl.media.dvpp_vpc_crop_and_paste_async(channel, src_desc, out_desc, crop, paste, stream) == 100000
        assert reason in acl.get_recent_err_msg()
    acl.media.dvpp_set_roi_config(crop, 10, 41, 4, 19)
    scaled = acl.media.dvpp_create_roi_config(16, 63, 32, 55)  # 48x24 at (16, 32): a resize, default filter
    assert acl.media.dvpp_vpc_crop_and_paste_async(channel, src_desc, out_desc, crop, scaled, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    y2, uv2 = _planes(_read(acl, out, 64 * 64 * 3 // 2).copy(), 64, 64)
    assert np.array_equal(y2[8:24, 16:48], y_in[4:20, 10:42])  # the first paste is still there
    assert np.abs(np.diff(y2[32:56, 16:64].astype(int), axis=1)).max() <= 4  # the ramp, stretched 1.5x
    y2[32:56, 16:64], uv2[16:28, 16:64], y2[8:24, 16:48], uv2[4:12, 16:48] = 0x11, 0x11, 0x11, 0x11
    assert (y2 == 0x11).all() and (uv2 == 0x11).all()  # nothing written outside the two paste areas
    assert acl.media.dvpp_set_roi_config_left(paste, 8) == 0
    assert acl.media.dvpp_vpc_crop_and_paste_async(channel, src_desc, out_desc, crop, paste, stream) == 100000
    assert "multiple of 16" in acl.get_recent_err_msg()


@pytest.mark.parametrize("what, value, reason", [
    ("in_width_stride", 136, "multiple of 16"),
    ("in_height_stride", 63, "height_stride even"),
    ("in_size", 100, "is less than"),
    ("out_width", 63, "must be even"),
    ("out_width", 8, "outside 10x6"),
    ("out_size", 64 * 64, "is less than"),
    ("scale", 4096, "outside 1/32..16"),
])  # fmt: skip
def test_vpc_resize_refuses_bad_pictures(monkeypatch, what, value, reason):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    src, src_desc, _, _ = _gradient_nv12(acl, 128, 64, 128, 64)
    out, out_desc = _out_pic(acl, 64, 64, 64, 64)
    m = acl.media
    setters = {"in_width_stride": (m.dvpp_set_pic_desc_width_stride, src_desc),
               "in_height_stride": (m.dvpp_set_pic_desc_height_stride, src_desc),
               "in_size": (m.dvpp_set_pic_desc_size, src_desc), "out_width": (m.dvpp_set_pic_desc_width, out_desc),
               "out_size": (m.dvpp_set_pic_desc_size, out_desc)}  # fmt: skip
    if what == "scale":  # 128 wide to 4096: 32x larger
        out, out_desc = _out_pic(acl, value, 64, value, 64)
    else:
        setter, desc = setters[what]
        assert setter(desc, value) == 0
    cfg = m.dvpp_create_resize_config()
    assert m.dvpp_vpc_resize_async(channel, src_desc, out_desc, cfg, stream) == 100000
    assert reason in acl.get_recent_err_msg()


def test_faults_do_no_work_and_channels_keep_their_order(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_FAIL="jpeg_decode:2,vpc_resize:1:507899")
    _, stream, channel = _ready(acl)
    data = _photo("coffee.jpg").read_bytes()
    src = _dvpp(acl, data)
    outs = [_out_pic(acl, 600, 400, 640, 400) for _ in range(3)]
    codes = [acl.media.dvpp_jpeg_decode_async(channel, src, len(data), d, stream) for _, d in outs]
    assert codes == [0, 507000, 0] and acl.rt.synchronize_stream(stream) == 0
    assert [bool(_read(acl, p, 640 * 400).any()) for p, _ in outs] == [True, False, True]
    small, small_desc = _out_pic(acl, 64, 64, 64, 64)
    cfg = acl.media.dvpp_create_resize_config()
    assert acl.media.dvpp_vpc_resize_async(channel, outs[0][1], small_desc, cfg, stream) == 507899
    assert acl.rt.synchronize_stream(stream) == 0 and not _read(acl, small, 64 * 64).any()
    assert acl.media.dvpp_vpc_resize_async(channel, outs[0][1], small_desc, cfg, stream) == 0
    assert acl.media.dvpp_destroy_channel_desc(channel) == 148051  # its channel still exists
    assert acl.media.dvpp_destroy_channel(channel) == 0 and acl.media.dvpp_destroy_channel_desc(channel) == 0
    assert acl.media.dvpp_vpc_resize_async(channel, outs[0][1], small_desc, cfg, stream) == 100000
    assert acl.rt.synchronize_stream(stream) == 0 and _read(acl, small, 64 * 64).any()


def test_jpeg_encode_round_trip(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    _, desc, w, h, ws, hs = _decode(acl, stream, channel, _photo("coffee.jpg"))
    cfg = acl.media.dvpp_create_jpege_config()
    assert acl.media.dvpp_set_jpege_config_level(cfg, 90) == 0 and acl.media.dvpp_get_jpege_config_level(cfg) == 90
    size, ret = acl.media.dvpp_jpeg_predict_enc_size(desc, cfg)
    assert ret == 0 and size == 2 << 20  # 640x400x3/2 + 768 bytes, rounded up to 2 MiB
    out, _ = acl.media.dvpp_malloc(size)
    holder = np.array([size], np.uint32).tobytes()
    assert acl.media.dvpp_jpeg_encode_async(channel, desc, out, acl.util.bytes_to_ptr(holder), cfg, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    n = int(np.frombuffer(holder, np.uint32)[0])
    assert 1000 < n < size
    back = Image.open(io.BytesIO(acl.util.ptr_to_bytes(out, n)))
    ref = np.asarray(Image.open(_photo("coffee.jpg")).convert("RGB"), np.float64)
    assert back.size == (w, h) and np.abs(np.asarray(back.convert("RGB"), np.float64) - ref).mean() < 4
    tiny = np.array([100], np.uint32).tobytes()
    assert acl.media.dvpp_jpeg_encode_async(channel, desc, out, acl.util.bytes_to_ptr(tiny), cfg, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 507018 and np.frombuffer(tiny, np.uint32)[0] == 100


def test_a_yuv420sp_aipp_model_takes_the_vpc_output_as_it_is(monkeypatch, tmp_path):
    """decode -> VPC resize to 224x224 NV12 (224*224*3/2 bytes in dvpp memory) -> the demo model with
    YUV420SP AIPP (JPEG CSC, then (x - 127) / 128) reads that buffer as its input: espresso."""
    from test_acl_conformance import ESPRESSO, YUV_AIPP

    demo = aclsim.require_demo_model()
    cfg = tmp_path / "yuv.cfg"
    cfg.write_text(YUV_AIPP)
    om = aclsim.build(demo, tmp_path / "eff_yuv", "--input_shape=input:1,3,224,224", f"--insert_op_conf={cfg}")
    acl = aclsim.fresh_acl(monkeypatch)
    _, stream, channel = _ready(acl)
    _, desc, *_ = _decode(acl, stream, channel, _photo("coffee.jpg"))
    nv12, small = _out_pic(acl, 224, 224, 224, 224)
    assert acl.media.dvpp_vpc_resize_async(channel, desc, small, acl.media.dvpp_create_resize_config(), stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    model_id, ret = acl.mdl.load_from_file(str(om))
    mdesc = acl.mdl.create_desc()
    assert ret == 0 and acl.mdl.get_desc(mdesc, model_id) == 0
    assert acl.mdl.get_input_size_by_index(mdesc, 0) == 224 * 224 * 3 // 2
    out_size = acl.mdl.get_output_size_by_index(mdesc, 0)
    out, _ = acl.rt.malloc(out_size, 0)
    ins, outs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(ins, acl.create_data_buffer(nv12, 224 * 224 * 3 // 2))
    acl.mdl.add_dataset_buffer(outs, acl.create_data_buffer(out, out_size))
    assert acl.mdl.execute(model_id, ins, outs) == 0
    assert int(np.argmax(np.frombuffer(acl.util.ptr_to_bytes(out, out_size), np.float32))) == ESPRESSO
