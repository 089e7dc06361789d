"""Top-k, softmax detection, labels, fonts; and the fast path's top-1 on the demo model's photos."""

import json

import conftest_agent as H
import numpy as np
import pytest
from PIL import Image

from agent import postprocess
from agent.backends import get_backend
from agent.postprocess import Labels, Postprocessor, probabilities, topk
from agent.preprocess import Preprocessor, resolve


def test_logits_get_a_softmax_and_probabilities_do_not():
    logits = np.array([[2.0, 1.0, 0.1], [-5.0, 10.0, 3.0]])
    p = probabilities(logits)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True))
    already = np.array([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]], np.float32)
    np.testing.assert_allclose(probabilities(already), already, atol=1e-7)
    # a row of logits that happens to lie in [0, 1] but does not sum to 1 is still softmaxed
    assert probabilities(np.array([[0.5, 0.5, 0.5]]))[0] == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError):
        probabilities(np.array([[np.nan, 1.0, 2.0]]))


def test_topk_is_ordered_and_handles_k_beyond_classes():
    p = np.array([[0.1, 0.5, 0.15, 0.25], [0.4, 0.3, 0.2, 0.1]])
    assert topk(p, 2).tolist() == [[1, 3], [0, 1]]
    assert topk(p, 10).tolist() == [[1, 3, 2, 0], [0, 1, 2, 3]]


def test_labels_with_background_offset_and_missing_names(tmp_path):
    path = H.write_labels(tmp_path / "l.txt", ["cat", "dog"])
    labels = Labels.load(path)
    assert labels.name(1, 2) == "dog"
    assert labels.name(0, 3) == "background" and labels.name(2, 3) == "dog"  # 1001-style model
    assert labels.name(7, 9) == "7"
    rows = Postprocessor(labels, 1)(np.array([[0.0, 3.0]]))
    assert rows[0][0][:2] == [1, "dog"] and 0.9 < rows[0][0][2] < 1.0


def test_labelled_copy_draws_text_with_a_font(tmp_path):
    im = Image.new("RGB", (300, 200), (200, 200, 200))
    out = tmp_path / "a" / "b.png"
    path = postprocess.labelled_path(str(tmp_path), "a/b.png")
    assert path.endswith("labelled/a/b.png.jpg")
    postprocess.save_labelled(im, "espresso (95.4%)", path)
    with Image.open(path) as got:
        assert got.format == "JPEG" and got.size == (300, 200)
        band = np.asarray(got)[:10, :40]
        assert band.mean() < 100  # the dark band behind the text
    assert not out.exists()
    assert postprocess.font(20) is postprocess.font(20)


DEMO_SKIP = pytest.mark.skipif(not H.DEMO_MODEL.is_file(), reason="demo model not built (deploy model demo)")


@DEMO_SKIP
def test_fast_path_top1_agrees_with_the_reference_on_the_demo_photos(tmp_path):
    stamp = H.DEMO / ".demo.json"
    spec = json.loads(stamp.read_text())["preprocess"] if stamp.is_file() else {"preset": "imagenet"}
    backend = get_backend("onnx", threads=2).load(str(H.DEMO_MODEL))
    cfg = resolve(spec, backend.inputs[0].shape, backend.inputs[0].dtype)
    pre = Preprocessor(cfg)
    labels = Labels.load(str(H.DEMO / "labels" / "imagenet_classes.txt"))
    post = Postprocessor(labels, 5)
    photos = sorted((H.DEMO / "images").glob("*.jpg"))
    assert photos
    agreed = 0
    try:
        for photo in photos:
            # the photo as shipped, and upscaled 3x (where the JPEG draft really scales the DCT)
            big = tmp_path / ("big-" + photo.name)
            with Image.open(photo) as im:
                im.resize((im.size[0] * 3, im.size[1] * 3), Image.BICUBIC).save(big, "JPEG", quality=90)
            for path in (photo, big):
                fast = pre.normalizer.batch_buffer(1)
                pre.normalizer.write(pre.decode(str(path)).crop, fast[0])
                ref = pre.reference(str(path))
                top_fast = post(backend.run(fast)[0])[0]
                top_ref = post(backend.run(ref)[0])[0]
                if top_ref[0][2] >= 0.3:
                    # a confident answer: the fast path must give the same top-1
                    assert top_fast[0][0] == top_ref[0][0], (path.name, top_fast[:2], top_ref[:2])
                    agreed += 1
                else:
                    # a low-confidence answer (the astronaut, no ImageNet class fits) may flip between
                    # near-tied classes; it must stay among the reference's top-5
                    assert top_fast[0][0] in [e[0] for e in top_ref], (path.name, top_fast[:2], top_ref)
                assert abs(top_fast[0][2] - top_ref[0][2]) < 0.15
    finally:
        backend.close()
    assert agreed >= len(photos)  # most photos (and their 3x versions) are confident answers
