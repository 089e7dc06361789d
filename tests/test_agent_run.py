"""The agent end to end on tiny real ONNX models: run, bad inputs, resume, eval, bench, info."""

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import conftest_agent as H
import numpy as np
import pytest
from PIL import Image

from agent import job as jobmod
from agent import protocol
from agent.__main__ import main
from agent.runner import execute

PYTHON = sys.executable


def make_job(tmp_path, model, inputs, mode="run", out="out", **extra):
    data = {
        "run_id": "t-" + mode,
        "mode": mode,
        "release": str(tmp_path),
        "out_dir": str(tmp_path / out),
        "model": model,
        "labels": H.write_labels(tmp_path / "labels.txt"),
        "inputs": [str(p) for p in inputs],
        "preprocess": {"preset": "imagenet"},
    }
    data.update(extra)
    return jobmod.from_dict(data)


def read_jsonl(path):
    with open(path, "rb") as f:
        return [json.loads(line) for line in f.read().splitlines()]


def events(out_dir):
    with open(os.path.join(out_dir, "events.jsonl"), "rb") as f:
        return [protocol.decode(line) for line in f.read().splitlines()]


def run_quiet(job, **kw):
    return execute(job, echo=False, handle_signals=False, **kw)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return H.colour_model(tmp_path_factory.mktemp("m") / "colour.onnx")


def _png_bomb(path, w=30000, h=30000):
    """A valid PNG header claiming w x h pixels (900 MP), with almost no data."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture()
def zoo(tmp_path):
    """Good images of every awkward kind (expected class) and bad files (expected error kind)."""
    d = tmp_path / "images"
    d.mkdir()
    good = {}
    H.solid(d / "red.jpg", H.COLOURS["red"])
    good["red.jpg"] = "red"
    H.solid(d / "green file.png", H.COLOURS["green"])
    good["green file.png"] = "green"
    H.solid(d / "sub" / "café ☕.jpg", H.COLOURS["blue"])
    good[os.path.join("sub", "café ☕.jpg")] = "blue"
    H.solid(d / "new\nline.jpg", H.COLOURS["red"])
    good["new\nline.jpg"] = "red"
    H.solid(d / "rgba.png", H.COLOURS["green"], mode="RGBA")
    good["rgba.png"] = "green"
    H.solid(d / "cmyk.jpg", H.COLOURS["blue"], mode="CMYK")
    good["cmyk.jpg"] = "blue"
    H.solid(d / "palette.png", H.COLOURS["red"], mode="P")
    good["palette.png"] = "red"
    H.solid(d / "gray.jpg", (90, 90, 90), mode="L")
    good["gray.jpg"] = None  # any class: it only has to be classified
    Image.fromarray(np.arange(240 * 320, dtype=np.uint16).reshape(240, 320) * 3).save(d / "gray16.png")
    good["gray16.png"] = None
    rotated = Image.new("RGB", (200, 400), H.COLOURS["blue"])
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(d / "exif.jpg", "JPEG", exif=exif.tobytes())
    good["exif.jpg"] = "blue"
    raw = os.fsencode(str(d)) + b"/latin1-\xe9.jpg"  # not UTF-8
    H.solid(os.fsdecode(raw), H.COLOURS["green"])
    good["latin1-\\xe9.jpg"] = "green"

    bad = {}
    (d / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "decode"
    full = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (300, 400, 3)).astype(np.uint8)).save(
        full, "JPEG"
    )
    (d / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    bad["truncated.jpg"] = "decode"
    (d / "notes.jpg").write_text("this is not a picture\n")
    bad["notes.jpg"] = "decode"
    _png_bomb(d / "bomb.png")
    bad["bomb.png"] = "too_large"
    os.symlink(str(d / "gone.jpg"), str(d / "dangling.jpg"))
    bad["dangling.jpg"] = "unreadable"
    if os.geteuid() != 0:  # root reads anything, so only a normal user can test permissions
        H.solid(d / "secret.jpg", H.COLOURS["red"])
        os.chmod(str(d / "secret.jpg"), 0)
        bad["secret.jpg"] = "unreadable"
    (d / "README").write_text("not picked: directory walks take image extensions only\n")
    return d, good, bad


def test_bad_inputs_never_stop_the_run(tmp_path, model, zoo):
    d, good, bad = zoo
    job = make_job(tmp_path, model, [d], batch=3)
    assert run_quiet(job) == 2  # partial

    results = {r["image"]: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert len(results) == len(good) + len(bad)
    for name, colour in good.items():
        rec = results[name]
        assert rec["ok"], rec
        assert [len(e) for e in rec["topk"]] == [3, 3, 3]
        if colour:
            assert rec["topk"][0][1] == colour, (name, rec)
    for name, kind in bad.items():
        rec = results[name]
        assert not rec["ok"] and rec["kind"] == kind, (name, rec)
        assert kind in protocol.ERROR_KINDS and rec["message"]

    evs = events(tmp_path / "out")
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert evs[0]["total"] == len(results) and evs[0]["skipped"] == 0
    assert sorted(e["image"] for e in evs if e["event"] == "result") == sorted(good)
    assert sorted(e["image"] for e in evs if e["event"] == "error") == sorted(bad)
    summary = evs[-1]["summary"]
    assert (summary["ok"], summary["failed"], summary["status"]) == (len(good), len(bad), "partial")
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert (tmp_path / "out" / "status").read_text().strip() == "partial"
    assert not (tmp_path / "out" / "pid").exists()

    # labelled copies mirror the relative paths; non-JPEG names get .jpg appended
    labelled = tmp_path / "out" / "labelled"
    assert (labelled / "red.jpg").is_file()
    assert (labelled / "sub" / "café ☕.jpg").is_file()
    assert (labelled / "green file.png.jpg").is_file()
    with Image.open(labelled / "red.jpg") as im:
        assert im.format == "JPEG"
        assert max(im.size) <= 512


def test_all_ok_exit_0_and_stdout_events_over_the_cli(tmp_path, model):
    d = tmp_path / "imgs"
    for name, colour in H.COLOURS.items():
        H.solid(d / (name + ".jpg"), colour)
    job = make_job(tmp_path, model, ["imgs"], topk=2)
    (tmp_path / "job.json").write_text(job.to_json())
    env = dict(os.environ, PYTHONPATH=str(H.ROOT), LANG="C", LC_ALL="C", PYTHONIOENCODING="ascii")
    proc = subprocess.run(
        [PYTHON, "-m", "agent", "run", "--job", str(tmp_path / "job.json")],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    evs = [protocol.decode(line) for line in proc.stdout.splitlines()]
    assert evs == events(tmp_path / "out")
    got = {e["image"]: e["topk"] for e in evs if e["event"] == "result"}
    assert {k: v[0][1] for k, v in got.items()} == {n + ".jpg": n for n in H.COLOURS}
    assert all(len(v) == 2 for v in got.values())
    for v in got.values():
        assert v[0][2] > v[1][2] and 0 <= v[1][2] <= v[0][2] <= 1
    assert evs[-1]["summary"]["status"] == "ok"


def test_total_failure_exits_1(tmp_path, model):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"")
    assert run_quiet(make_job(tmp_path, model, [d])) == 1
    assert (tmp_path / "out" / "status").read_text().strip() == "failed"
    # a model that cannot be loaded: also a clean "failed", with an end event
    job = make_job(tmp_path, str(tmp_path / "missing.onnx"), [d], out="out2")
    assert run_quiet(job) == 1
    evs = events(tmp_path / "out2")
    assert evs[-1]["event"] == "end" and evs[-1]["summary"]["status"] == "failed"
    assert "missing.onnx" in evs[-1]["summary"]["error"]


def test_bad_job_exits_1(tmp_path, capsys):
    (tmp_path / "job.json").write_text(json.dumps({"run_id": "x", "mode": "fly"}))
    assert main(["run", "--job", str(tmp_path / "job.json")]) == 1
    assert "job" in capsys.readouterr().err


def test_resume_skips_done_images_and_tolerates_a_torn_line(tmp_path, model):
    d = tmp_path / "imgs"
    names = []
    for i in range(9):
        colour = list(H.COLOURS)[i % 3]
        names.append(f"{i}-{colour}.jpg")
        H.solid(d / names[-1], H.COLOURS[colour])
    job = make_job(tmp_path, model, [d], batch=2, labelled=False)
    assert run_quiet(job) == 0
    results = tmp_path / "out" / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    assert len(lines) == 9
    # as if killed while writing the 5th record
    results.write_bytes(b"".join(lines[:4]) + lines[4][:17])
    assert run_quiet(job) == 0
    recs = read_jsonl(results)
    assert sorted(r["image"] for r in recs) == sorted(names)  # each once, none torn
    start = [e for e in events(tmp_path / "out") if e["event"] == "start"][-1]
    assert (start["total"], start["skipped"]) == (5, 4)
    end = [e for e in events(tmp_path / "out") if e["event"] == "end"][-1]["summary"]
    assert (end["ok"], end["total"], end["skipped"], end["this_run"]["ok"]) == (9, 9, 4, 5)
    # a third run has nothing left to do
    assert run_quiet(job) == 0
    assert len(read_jsonl(results)) == 9


def _slow_run(tmp_path, model, n=60):
    d = tmp_path / "imgs"
    d.mkdir()
    originals = [H.photo_like(tmp_path / f"orig{i}.jpg", size=(1200, 900), seed=i) for i in range(3)]
    for i in range(n):
        shutil.copyfile(originals[i % 3], str(d / f"p{i:03d}.jpg"))
    # the reference path (full decode) at batch 1 keeps the run slow enough to interrupt
    job = make_job(tmp_path, model, [d], preprocess={"preset": "imagenet", "fast": False}, labelled=False)
    (tmp_path / "job.json").write_text(job.to_json())
    env = dict(os.environ, PYTHONPATH=str(H.ROOT))
    return job, subprocess.Popen(
        [PYTHON, "-m", "agent", "run", "--job", str(tmp_path / "job.json"), "--threads", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_resumes_without_duplicates(tmp_path, model, sig):
    job, proc = _slow_run(tmp_path, model)
    seen = 0
    for line in proc.stdout:
        if protocol.decode(line)["event"] == "result":
            seen += 1
            if seen == 5:
                proc.send_signal(sig)
                break
    proc.stdout.read()
    rc = proc.wait(timeout=60)
    results = tmp_path / "out" / "results.jsonl"
    done_before = len(results.read_bytes().splitlines())
    assert 5 <= done_before < 60
    if sig == signal.SIGTERM:
        assert rc == 2
        end = events(tmp_path / "out")[-1]
        assert end["event"] == "end" and end["summary"]["interrupted"] is True
        assert end["summary"]["this_run"]["remaining"] == 60 - done_before
        assert (tmp_path / "out" / "status").read_text().strip() == "partial"
    else:
        assert rc == -signal.SIGKILL
        assert (tmp_path / "out" / "status").read_text().strip() == "running"
    assert run_quiet(job) == 0
    recs = read_jsonl(results)
    assert len(recs) == 60 and len({r["image"] for r in recs}) == 60
    start = [e for e in events(tmp_path / "out") if e["event"] == "start"][-1]
    assert start["skipped"] == len({r["image"] for r in recs[:done_before]})


def test_fixed_batch_model_pads_the_last_batch(tmp_path):
    model = H.colour_model(tmp_path / "fixed4.onnx", batch=4)
    d = tmp_path / "imgs"
    expected = {}
    for i in range(6):
        colour = list(H.COLOURS)[i % 3]
        expected[f"{i}.png"] = colour
        H.solid(d / f"{i}.png", H.COLOURS[colour])
    job = make_job(tmp_path, model, [d], batch=1, labelled=False)
    assert run_quiet(job) == 0
    got = {r["image"]: r["topk"][0][1] for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert got == expected
    evs = events(tmp_path / "out")
    assert evs[0]["batch"] == 4 and evs[0]["fixed_batch"] is True
    assert any(e["event"] == "log" and "fixed batch of 4" in e["message"] for e in evs)


def test_nhwc_uint8_model_with_raw_u8_preset(tmp_path):
    model = H.colour_model(tmp_path / "u8.onnx", layout="NHWC", dtype="uint8")
    d = tmp_path / "imgs"
    for name, colour in H.COLOURS.items():
        H.solid(d / (name + ".jpg"), colour)
    job = make_job(tmp_path, model, [d], batch=2, preprocess={"preset": "raw-u8"}, labelled=False)
    assert run_quiet(job) == 0
    start = events(tmp_path / "out")[0]
    assert start["preprocess"]["layout"] == "NHWC" and start["preprocess"]["dtype"] == "uint8"
    got = {r["image"]: r["topk"][0][1] for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert got == {n + ".jpg": n for n in H.COLOURS}


def test_softmax_output_is_not_softmaxed_twice(tmp_path):
    logits_model = H.colour_model(tmp_path / "logits.onnx")
    probs_model = H.colour_model(tmp_path / "probs.onnx", softmax=True)
    d = tmp_path / "imgs"
    H.solid(d / "red.jpg", (150, 90, 80))
    scores = []
    for i, m in enumerate((logits_model, probs_model)):
        job = make_job(tmp_path, m, [d], out=f"o{i}", labelled=False)
        assert run_quiet(job) == 0
        scores.append([e[2] for e in read_jsonl(tmp_path / f"o{i}" / "results.jsonl")[0]["topk"]])
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)
    assert abs(sum(scores[0]) - 1) < 1e-4 and scores[0][0] < 0.99  # a real distribution, not one-hot


def test_eval_writes_ais_bench_result_json(tmp_path, model):
    d = tmp_path / "val"
    truth = []
    for i in range(6):
        colour = list(H.COLOURS)[i % 3]
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        H.solid(d / name, H.COLOURS[colour], fmt="JPEG")
        # the last (blue) image is labelled "red" on purpose: a top-1 miss, but within the top 3
        label = LABEL_OF[colour] if i < 5 else LABEL_OF["red"]
        truth.append(f"{name} {label}")
    (d / "broken.JPEG").write_bytes(b"")
    truth.append("broken.JPEG 0")
    (tmp_path / "val_label.txt").write_text("\n".join(truth) + "\n")
    job = make_job(
        tmp_path, model, [d], mode="eval", eval={"label_file": "val_label.txt"}, topk=1, labelled=False
    )
    assert run_quiet(job) == 2  # the broken image makes it partial
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["title"] == "Overall statistical evaluation"
    values = {v["key"]: v["value"] for v in result["value"]}
    assert values["Number of images"] == "7"
    assert values["Number of classes"] == "3"
    assert values["Top1 accuracy"] == f"{100 * 5 / 7:.2f}%"
    assert values["Top3 accuracy"] == f"{100 * 6 / 7:.2f}%"  # eval keeps 5 candidates whatever topk says
    assert values["Failed images"] == "1"
    assert [v["key"] for v in result["value"][:3]] == [
        "Number of images",
        "Number of classes",
        "Top1 accuracy",
    ]


LABEL_OF = {"red": 0, "green": 1, "blue": 2}


def test_bench_writes_an_ais_bench_style_summary(tmp_path, model):
    rc = main(
        [
            "bench",
            "--model",
            model,
            "--out",
            str(tmp_path / "b"),
            "--loop",
            "8",
            "--warmup",
            "2",
            "--batch-sizes",
            "1,2",
        ]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [r["batch"] for r in summary["bench"]] == [1, 2]
    for r in summary["bench"]:
        lat = r["latency_ms"]
        assert lat["count"] == 8
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["throughput"] == pytest.approx(1000 * r["batch"] / lat["mean"], rel=1e-3)
    assert summary["status"] == "ok" and summary["ips"] == max(r["throughput"] for r in summary["bench"])
    logs = [e["message"] for e in events(tmp_path / "b") if e["event"] == "log"]
    assert any("Performance Summary" in m for m in logs)


def test_direct_flags_build_a_job(tmp_path, model, capsys):
    d = tmp_path / "imgs"
    H.solid(d / "x.jpg", H.COLOURS["green"])
    labels = H.write_labels(tmp_path / "l.txt")
    rc = main(
        [
            "run",
            "--model",
            model,
            "--labels",
            labels,
            "--images",
            str(d),
            "--out",
            str(tmp_path / "o"),
            "--batch",
            "2",
            "--topk",
            "1",
            "--preset",
            "imagenet",
            "--preprocess",
            '{"mean": 127, "std": 128, "scale": 1}',
        ]
    )
    assert rc == 0
    start = events(tmp_path / "o")[0]
    assert start["preprocess"]["mean"] == [127.0, 127.0, 127.0] and start["batch"] == 2
    assert read_jsonl(tmp_path / "o" / "results.jsonl")[0]["topk"][0][1] == "green"
    capsys.readouterr()
    assert main(["info", "--model", model]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["inputs"][0]["shape"] == [None, 3, 224, 224]
    assert info["model"]["inputs"][0]["layout"] == "NCHW"
