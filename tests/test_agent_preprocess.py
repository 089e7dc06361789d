"""Preprocessing presets against straightforward reference code (the vendor samples' own lines)."""

import conftest_agent as H
import numpy as np
import pytest
from PIL import Image

from agent import preprocess
from agent.preprocess import PreprocessError, Preprocessor, resolve


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return H.photo_like(tmp_path_factory.mktemp("pre") / "photo.jpg", size=(1024, 683), seed=1)


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    return H.photo_like(tmp_path_factory.mktemp("pre") / "portrait.jpg", size=(480, 800), seed=2)


def _short_side(im, s):
    w, h = im.size
    return (s, int(round(h * s / w))) if w <= h else (int(round(w * s / h)), s)


def _center_crop(a, size):
    h, w = a.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return a[top : top + size, left : left + size]


def imagenet_reference(path):
    """torchvision-style: Resize(256) + CenterCrop(224) + ToTensor + Normalize, plainly in float32."""
    im = Image.open(path).convert("RGB")
    im = im.resize(_short_side(im, 256), Image.BILINEAR)
    a = _center_crop(np.array(im), 224).astype(np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((a - mean) / std).transpose(2, 0, 1)[None]


def mindspore_sample_reference(path):
    """The MindSpore ResNet-50 sample's pre_process, line for line (seed 001)."""
    input_image = Image.open(path)
    input_image = input_image.resize((224, 224))
    img = np.array(input_image)
    height, width = img.shape[0], img.shape[1]
    h_off, w_off = int((height - 224) / 2), int((width - 224) / 2)
    crop_img = img[h_off : height - h_off, w_off : width - w_off, :]
    img = crop_img[:, :, ::-1]
    shape = img.shape
    img = img.astype("float32")
    for c in range(3):
        img[:, :, c] *= 0.003922
    img[:, :, 0] -= 0.4914
    img[:, :, 0] = img[:, :, 0] / 0.2023
    img[:, :, 1] -= 0.4822
    img[:, :, 1] = img[:, :, 1] / 0.1994
    img[:, :, 2] -= 0.4465
    img[:, :, 2] = img[:, :, 2] / 0.2010
    img = img.reshape([1] + list(shape))
    return img.transpose([0, 3, 1, 2]).copy()


def caffe_sample_reference(path):
    """The Caffe ResNet-50 sample's transfer_pic (resize 256x256, crop 224, BGR, minus 104/117/123)."""
    with Image.open(path) as image_file:
        image_file = image_file.resize((256, 256))
        img = np.array(image_file)
    height, width = img.shape[0], img.shape[1]
    h_off, w_off = int((height - 224) / 2), int((width - 224) / 2)
    img = img[h_off : height - h_off, w_off : width - w_off, :][:, :, ::-1].astype("float32")
    img[:, :, 0] -= 104
    img[:, :, 1] -= 117
    img[:, :, 2] -= 123
    return img[None].transpose([0, 3, 1, 2])


def _normalised(cfg, path, fast):
    pre = Preprocessor(cfg)
    decoded = pre.decode(path) if fast else pre.reference_decode(path)
    buf = pre.normalizer.batch_buffer(2)
    buf[1] = 99  # the other slot must stay untouched
    pre.normalizer.write(decoded.crop, buf[0])
    assert np.all(buf[1] == 99)
    return buf[:1]


@pytest.mark.parametrize("image", ["photo", "portrait"])
def test_imagenet_preset_matches_torchvision_style_reference(image, request):
    path = request.getfixturevalue(image)
    cfg = resolve({"preset": "imagenet"}, (None, 3, 224, 224), "float32")
    got = _normalised(cfg, path, fast=False)
    want = imagenet_reference(path)
    assert got.shape == want.shape == (1, 3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(Preprocessor(cfg).reference(path), want, atol=1e-5)


def test_cifar_preset_matches_the_mindspore_sample(photo):
    cfg = resolve({"preset": "cifar"}, (1, 3, 224, 224), "float32")
    got = _normalised(cfg, photo, fast=False)
    # the sample multiplies by 0.003922, not 1/255: 0.01% apart
    np.testing.assert_allclose(got, mindspore_sample_reference(photo), atol=2e-3)


def test_caffe_preset_matches_the_caffe_sample(photo):
    cfg = resolve({"preset": "caffe"}, (1, 3, 224, 224), "float32")
    got = _normalised(cfg, photo, fast=False)
    want = caffe_sample_reference(photo)
    # Pillow's resize and numpy's offset crop agree to the pixel: identical values
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_raw_u8_is_the_crop_itself(photo, layout):
    shape = (1, 3, 224, 224) if layout == "NCHW" else (1, 224, 224, 3)
    cfg = resolve({"preset": "raw-u8"}, shape, "uint8")
    assert cfg.layout == layout and cfg.dtype == "uint8"
    got = _normalised(cfg, photo, fast=False)
    crop = np.array(Image.open(photo).convert("RGB").resize((384, 256), Image.BILINEAR))[16:240, 80:304]
    want = crop.transpose(2, 0, 1)[None] if layout == "NCHW" else crop[None]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_overrides_mean_127_std_128_on_0_255(photo):
    spec = {"preset": "imagenet", "scale": 1, "mean": 127, "std": 128}
    cfg = resolve(spec, (None, 3, 224, 224), "float32")
    got = _normalised(cfg, photo, fast=False)
    crop = Preprocessor(cfg).reference_decode(photo).crop.astype(np.float32)
    np.testing.assert_allclose(got[0], ((crop - 127) / 128).transpose(2, 0, 1), atol=1e-6)
    assert got.min() >= -1.0 and got.max() <= 1.0


def test_bgr_override_and_float16_nhwc(photo):
    cfg = resolve({"preset": "imagenet", "color": "bgr"}, (1, 224, 224, 3), "float16")
    assert (cfg.layout, cfg.dtype, cfg.color) == ("NHWC", "float16", "BGR")
    got = _normalised(cfg, photo, fast=False)
    crop = Preprocessor(cfg).reference_decode(photo).crop.astype(np.float32)[:, :, ::-1] / 255.0
    want = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got[0].astype(np.float32), want, atol=4e-3)


def test_model_input_size_drives_the_crop(photo):
    cfg = resolve({"preset": "imagenet"}, (1, 3, 240, 240), "float32")
    assert cfg.crop == (240, 240) and cfg.resize == 274
    pre = Preprocessor(cfg)
    assert pre.decode(photo).crop.shape == (240, 240, 3)
    assert pre.normalizer.batch_buffer(3).shape == (3, 3, 240, 240)


def test_fast_path_is_close_to_the_reference(photo, portrait):
    cfg = resolve({"preset": "imagenet"}, (None, 3, 224, 224), "float32")
    pre = Preprocessor(cfg)
    for path in (photo, portrait):
        fast = pre.decode(path).crop.astype(np.int16)
        ref = pre.reference_decode(path).crop.astype(np.int16)
        assert fast.shape == ref.shape == (224, 224, 3)
        diff = np.abs(fast - ref)
        # DCT-scaled draft + one box resize vs full decode + resize + crop: a few levels at most on average
        assert diff.mean() < 3.0, diff.mean()
        assert np.percentile(diff, 99) < 20


def test_exif_rotation_is_applied_before_the_crop(tmp_path):
    # A 400x200 picture, left half red, right half blue, stored rotated with EXIF orientation 6.
    a = np.zeros((200, 400, 3), np.uint8)
    a[:, :200] = (255, 0, 0)
    a[:, 200:] = (0, 0, 255)
    upright = Image.fromarray(a)
    stored = upright.transpose(Image.ROTATE_90)  # what the camera wrote: 200 wide, 400 high
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 270-degree rotation, i.e. undo ROTATE_90
    path = str(tmp_path / "rotated.jpg")
    stored.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    cfg = resolve({"preset": "raw-u8", "resize": 224, "crop": None}, None, "uint8")
    for decode in (Preprocessor(cfg).decode, Preprocessor(cfg).reference_decode):
        crop = decode(path).crop
        assert crop.shape == (224, 448, 3)  # landscape again
        assert crop[100, 20, 0] > 200 and crop[100, 20, 2] < 60  # left is red
        assert crop[100, 430, 2] > 200 and crop[100, 430, 0] < 60  # right is blue


def test_plan_geometry():
    cfg = resolve({"preset": "imagenet"}, None, "float32")
    assert preprocess.plan(cfg, 1024, 683) == ((384, 256), (80, 16, 304, 240))
    assert preprocess.plan(cfg, 683, 1024) == ((256, 384), (16, 80, 240, 304))
    cfg = resolve({"preset": "cifar"}, None, "float32")
    assert preprocess.plan(cfg, 1024, 683) == ((224, 224), (0, 0, 224, 224))


@pytest.mark.parametrize(
    "spec",
    [
        {"preset": "nope"},
        {"preset": "imagenet", "colour": "RGB"},
        {"preset": "imagenet", "color": "HSV"},
        {"preset": "imagenet", "std": [1, 0, 1]},
        {"preset": "imagenet", "mean": [1, 2]},
        {"preset": "imagenet", "scale": -1},
        {"preset": "imagenet", "crop": 300},
        {"preset": "imagenet", "layout": "CHWN"},
        {"preset": "imagenet", "dtype": "int64"},
    ],
)
def test_bad_preprocess_options_are_refused(spec):
    with pytest.raises(PreprocessError):
        resolve(spec, None, "float32")


def test_model_size_mismatch_with_explicit_crop_is_refused():
    with pytest.raises(PreprocessError, match="model wants"):
        resolve({"preset": "imagenet", "crop": 224}, (1, 3, 256, 256), "float32")
