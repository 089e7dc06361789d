"""Streams mode (one worker per ORT stream) vs the queue pipeline; ORT thread plan; previews."""

import json
import os

import conftest_agent as H
import pytest
from PIL import Image

from agent import job as jobmod
from agent import postprocess, preprocess
from agent.backends.onnx import OnnxBackend
from agent.runner import execute, make_backend


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return H.colour_model(tmp_path_factory.mktemp("m") / "colour.onnx")


def _images(d):
    expected = {}
    for i in range(13):
        colour = list(H.COLOURS)[i % 3]
        expected[f"{i:02d}.jpg"] = colour
        H.solid(d / f"{i:02d}.jpg", H.COLOURS[colour], size=(300 + 97 * i, 240 + 31 * i))
    (d / "bad.jpg").write_bytes(b"not a jpeg")
    (d / "empty.png").write_bytes(b"")
    return expected


def _run(tmp_path, model, out, backend, **extra):
    data = {
        "run_id": "s",
        "mode": "run",
        "release": str(tmp_path),
        "out_dir": str(tmp_path / out),
        "model": model,
        "labels": H.write_labels(tmp_path / "labels.txt"),
        "inputs": [str(tmp_path / "imgs")],
        "preprocess": {"preset": "imagenet"},
    }
    data.update(extra)
    rc = execute(jobmod.from_dict(data), echo=False, handle_signals=False, backend=backend)
    recs = {}
    for line in (tmp_path / out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        assert r["image"] not in recs  # one record per image
        recs[r["image"]] = r["topk"][0][1] if r["ok"] else r["kind"]
    return rc, recs, json.loads((tmp_path / out / "summary.json").read_text())


@pytest.mark.parametrize("batch", [1, 3])
def test_streams_mode_gives_the_same_records_as_one_stream(tmp_path, model, batch):
    expected = _images(tmp_path / "imgs")
    expected.update({"bad.jpg": "decode", "empty.png": "decode"})
    one = OnnxBackend(threads=2, streams=1)
    many = OnnxBackend(threads=1, streams=3)
    rc1, got1, s1 = _run(tmp_path, model, "one", one, batch=batch)
    rc3, got3, s3 = _run(tmp_path, model, "many", many, batch=batch)
    assert rc1 == rc3 == 2  # partial: two bad files
    assert got1 == got3 == expected
    assert (s3["ok"], s3["failed"]) == (13, 2)
    labelled = sorted(os.listdir(tmp_path / "many" / "labelled"))
    assert labelled == sorted(k for k in expected if k.endswith(".jpg") and k != "bad.jpg")


class _Broken(OnnxBackend):
    """A bug below the pipeline: submit raises instead of reporting through done()."""

    def __init__(self):
        OnnxBackend.__init__(self, threads=1, streams=2)
        self.calls = 0

    def submit(self, batch, tag, done):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("boom")
        return OnnxBackend.submit(self, batch, tag, done)


def test_a_worker_crash_ends_the_run_instead_of_hanging(tmp_path, model):
    _images(tmp_path / "imgs")
    rc, recs, summary = _run(tmp_path, model, "out", _Broken())
    assert rc == 1 and summary["status"] == "failed" and "boom" in summary["error"]


def test_onnx_thread_plan(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    auto = OnnxBackend()
    assert (auto.threads, auto.streams) == (1, 4)  # streams mode
    assert (OnnxBackend(threads=2).threads, OnnxBackend(threads=2).streams) == (2, 2)
    assert OnnxBackend(threads=4).streams == 1
    assert OnnxBackend(threads=1, streams=3).streams == 3
    bench = jobmod.from_dict({"run_id": "b", "mode": "bench", "release": "/", "out_dir": "/o", "model": "m"})
    b = make_backend(bench)
    assert (b.threads, b.streams, b.spinning) == (4, 1, True)  # pure inference: one stream, all cores


def test_preview_is_an_integer_reduction_to_at_most_512():
    small = Image.new("RGB", (512, 300))
    assert preprocess._preview(small) is small
    for size, want in (((513, 300), (257, 150)), ((1300, 700), (434, 234)), ((750, 500), (375, 250))):
        assert preprocess._preview(Image.new("RGB", size)).size == want


def test_label_is_drawn_in_place_from_cached_pieces():
    im = Image.new("RGB", (400, 300), (200, 200, 200))
    parts = postprocess.label_parts([[3, "espresso", 0.954]])
    assert "".join(parts) == postprocess.label_text([[3, "espresso", 0.954]]) == "espresso (95.4%)"
    copy = postprocess.draw_label(im, parts)
    assert copy is not im and im.getpixel((2, 2)) == (200, 200, 200)
    assert postprocess.draw_label(im, parts, inplace=True) is im
    assert im.getpixel((2, 2)) == (0, 0, 0)
    assert im.tobytes() == copy.tobytes()  # pieces == the same label drawn on a copy
    tiny = postprocess.draw_label(Image.new("RGB", (20, 10)), parts)  # the band is clipped
    assert tiny.size == (20, 10)
