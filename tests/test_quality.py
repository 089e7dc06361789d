"""deploy verify / bench / eval / report (issue 12), as a user types them, against real sandbox boards.

The agent parts (probability vectors, inline ground truth, a fixed-batch model's batch sizes) are tested on
tiny real ONNX models; the commands on one sandbox board (board1, onnx) pushed once for the module, and
verify's fp16/AIPP check on the simulated Atlas 200 DK. The report is loaded in a real headless Chromium.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import conftest_agent as H
import numpy as np
import pytest
from PIL import Image

from agent import job as jobmod
from agent.runner import execute
from deploy.analysis import labels, verify
from deploy.cli import parse_batches
from deploy.errors import UsageError
from deploy.testing import CAT, ESPRESSO, ROCKET, Project

# The demo photos' ImageNet classes as a val_label.txt would give them (each one of the demo recipe's classes).
TRUTH = {"chelsea.jpg": 285, "coffee.jpg": 967, "rocket.jpg": 657}
assert TRUTH["chelsea.jpg"] in CAT and TRUTH["coffee.jpg"] in ESPRESSO and TRUTH["rocket.jpg"] in ROCKET


def _job(tmp_path, model, inputs, mode="run", **extra):
    data = {"run_id": "t", "mode": mode, "release": str(tmp_path), "out_dir": str(tmp_path / "out"), "model": model,
            "labels": H.write_labels(tmp_path / "labels.txt"), "inputs": [str(p) for p in inputs],
            "preprocess": {"preset": "imagenet"}}
    data.update(extra)
    return jobmod.from_dict(data)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- the agent's part


def test_agent_writes_each_images_whole_probability_vector(tmp_path):
    model = H.colour_model(tmp_path / "m.onnx")
    imgs = [H.solid(tmp_path / "in" / f"{c}.png", H.COLOURS[c]) for c in ("red", "green", "blue")]
    assert execute(_job(tmp_path, model, [tmp_path / "in"], probs=True, batch=2), echo=False,
                   handle_signals=False) == 0
    probs = {r["image"]: r["probs"] for r in _jsonl(tmp_path / "out" / "probs.jsonl")}
    results = {r["image"]: r for r in _jsonl(tmp_path / "out" / "results.jsonl")}
    assert set(probs) == {Path(p).name for p in imgs} == set(results)
    for name, p in probs.items():
        assert len(p) == 3 and abs(sum(p) - 1.0) < 1e-5
        assert int(np.argmax(p)) == results[name]["topk"][0][0] == H.LABELS.index(name.split(".")[0])
        assert abs(max(p) - results[name]["topk"][0][2]) < 1e-6


def test_agent_eval_takes_the_hosts_ground_truth_inline(tmp_path):
    model = H.colour_model(tmp_path / "m.onnx")
    for c in ("red", "green", "blue"):
        H.solid(tmp_path / "in" / f"{c}.jpg", H.COLOURS[c])
    truth = {"red": 0, "green": 1, "blue": 0}  # blue mislabelled: top-1 2/3, found at rank 2 or 3
    job = _job(tmp_path, model, [tmp_path / "in"], mode="eval", eval={"truth": truth})
    execute(job, echo=False, handle_signals=False)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    values = {kv["key"]: kv["value"] for kv in result["value"]}
    assert result["title"] == "Overall statistical evaluation"
    assert values["Number of images"] == "3" and values["Top1 accuracy"] == "66.67%"
    assert values["Top3 accuracy"] == "100.00%"


def test_agent_bench_reports_batch_sizes_a_fixed_batch_model_cannot_take(tmp_path):
    model = H.colour_model(tmp_path / "m.onnx", batch=1)
    job = _job(tmp_path, model, [], mode="bench", bench={"batch_sizes": [1, 4], "loop": 3, "warmup": 1})
    assert execute(job, echo=False, handle_signals=False) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["batch"] for r in summary["bench"]] == [1]
    assert summary["unsupported"] == [{"batch": 4, "reason": "model has a fixed batch of 1"}]
    lat = summary["bench"][0]["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]


# ---------------------------------------------------------------- host side, no board


def test_batch_lists_refuse_zero_and_non_numbers():
    assert parse_batches("1,4, 8,16,4") == [1, 4, 8, 16]
    for bad in ("0", "1,x", "", "1,,2", "-1", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
            parse_batches(bad)


def test_label_files_are_checked_on_the_host(tmp_path):
    bad = tmp_path / "val_label.txt"
    bad.write_text("a.JPEG 1\nb.JPEG seven\n")
    with pytest.raises(UsageError, match=r"val_label.txt:2: label 'seven' is not an integer"):
        labels.read_labels(bad, ["a.JPEG"])
    good = tmp_path / "good.txt"
    good.write_text("a.JPEG 1\nb.JPEG 2\nc.JPEG 3\n")
    assert labels.read_labels(good, ["a.jpg", "sub/b.png", "z.jpg"]) == ({"a": 1, "b": 2}, 1)
    with pytest.raises(UsageError, match="none of its 3 labels names one of the 1 images"):
        labels.read_labels(good, ["other.jpg"])


def _probs(vectors, failed=None):
    return verify.Probs({k: np.asarray(v, dtype=np.float64) for k, v in vectors.items()}, failed or {})


def test_compare_measures_agreement_overlap_and_differences():
    host = _probs({"a": [0.7, 0.2, 0.1, 0, 0, 0], "b": [0.1, 0.6, 0.3, 0, 0, 0], "c": [0.5, 0.4, 0.1, 0, 0, 0]})
    board = _probs({"a": [0.69, 0.21, 0.1, 0, 0, 0], "b": [0.1, 0.3, 0.6, 0, 0, 0]}, {"c": "decode: broken"})
    v = verify.compare(host, board, 0.99)
    by = {c.image: c for c in v.images}
    assert by["a"].agree and by["a"].max_abs == pytest.approx(0.01) and by["a"].top5_overlap == 1.0
    assert not by["b"].agree and by["b"].max_abs == pytest.approx(0.3)
    assert not by["c"].agree and "decode: broken" in by["c"].error
    assert v.agreement == pytest.approx(1 / 3) and not v.passed and [c.image for c in v.disagreeing] == ["b", "c"]
    assert verify.compare(host, host, 0.99).to_json()["max_abs_diff"] == 0.0


def test_compare_drops_the_background_class_of_a_1001_class_model():
    host = _probs({"a": [0.7, 0.2, 0.1]})
    board = _probs({"a": [0.0, 0.7, 0.2, 0.1]})  # index 0: background
    v = verify.compare(host, board, 0.99)
    assert v.passed and v.images[0].max_abs == 0.0 and v.images[0].board[0] == 1 and v.images[0].host[0] == 0


# ---------------------------------------------------------------- the commands on a sandbox board


@pytest.fixture(scope="module")
def board(project):
    project.deploy("push", "board1", "--no-health-check")
    return project


def _rows(proj: Project, *args: str) -> list[dict]:
    """The per-board rows of ``deploy ARGS --json`` (a list, or ``{"boards": [...]}`` with the fleet recap)."""
    doc = proj.deploy_json(*args)
    return doc["boards"] if isinstance(doc, dict) else doc


def _outputs(proj: Project) -> list[str]:
    root = proj.root / "outputs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_report_on_a_board_with_no_run_yet_says_so(board):
    r = board.deploy("report", "board1", check=False)
    assert r.returncode == 1 and "no runs on the board yet" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _outputs(board) == []


def test_verify_onnx_board_agrees_with_the_host_and_overlaps_it(board):
    row = _rows(board, "verify", "board1")[0]
    assert row["ok"] and row["agreement"] == 1.0 and row["compared"] == 3 and row["disagreeing"] == []
    assert row["max_abs_diff"] == 0.0  # same ONNX Runtime, same fp32: the same numbers
    doc = json.loads((Path(row["path"]) / "verify.json").read_text())
    assert {i["image"] for i in doc["images"]} == set(TRUTH) and doc["passed"]
    assert row["seconds"] < row["board_seconds"] + row["host_seconds"]  # the two ran at the same time


def test_verify_bad_threshold_and_missing_images_touch_nothing(board):
    before = _outputs(board)
    r = board.deploy("verify", "board1", "--min-agreement", "1.5", check=False)
    assert r.returncode == 2 and "between 0 and 1" in r.stderr
    r = board.deploy("verify", "board1", "--images", str(board.root / "nowhere"), check=False)
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _outputs(board) == before


def test_bench_table_json_and_chart_per_batch_size(board):
    row = _rows(board, "bench", "board1", "--batch", "1,2", "--loop", "8", "--warmup", "2")[0]
    assert row["ok"] and [r["batch"] for r in row["rows"]] == [1, 2] and row["unsupported"] == []
    for r in row["rows"]:
        lat = r["latency_ms"]
        assert r["throughput"] > 0 and lat["count"] == 8 and lat["median"] <= lat["p90"] <= lat["p99"]
        assert r["throughput"] == pytest.approx(1000 * r["batch"] / lat["mean"], rel=1e-3)
    path = Path(row["path"])
    assert json.loads((path / "bench.json").read_text())["rows"] == row["rows"]
    with Image.open(path / "bench.png") as im:
        assert im.format == "PNG" and im.size[0] > 500
    r = board.deploy("bench", "board1", "--batch", "1,0", check=False)
    assert r.returncode == 2 and "whole number" in r.stderr


def test_eval_result_json_and_bad_label_files(board, tmp_path):
    labels = tmp_path / "val_label.txt"
    labels.write_text("".join(f"{n.split('.')[0]}.JPEG {c}\n" for n, c in TRUTH.items()) + "absent.JPEG 1\n")
    row = _rows(board, "eval", "board1", "--labels", str(labels))[0]
    values = {kv["key"]: kv["value"] for kv in row["result"]["value"]}
    assert values["Number of images"] == "3" and values["Number of classes"] == "1000"
    assert values["Top1 accuracy"] == "100.00%" and row["labels_absent"] == 1
    assert json.loads((Path(row["path"]) / "result.json").read_text()) == row["result"]
    before = _outputs(board)
    labels.write_text("chelsea.JPEG 281\ncoffee.JPEG\n")
    r = board.deploy("eval", "board1", "--labels", str(labels), check=False)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {labels}:2: expected 'NAME LABEL', got 'coffee.JPEG'"
    labels.write_text("other.JPEG 1\n")
    r = board.deploy("eval", "board1", "--labels", str(labels), check=False)
    assert r.returncode == 2 and "none of its 1 labels" in r.stderr
    assert _outputs(board) == before


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    return exe


def _load(exe: str, page: Path, shot: Path) -> list[str]:
    """Load ``page`` in headless Chromium; its console lines (and load failures), with a screenshot."""
    r = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                        "--window-size=1200,1600", "--enable-logging=stderr", "--v=0", page.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    return [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln or "Page load failed" in ln]


def test_report_html_loads_in_a_real_browser_without_console_errors(board, tmp_path):
    exe = _chromium()
    rows = _rows(board, "report", "board1")  # the latest run: the eval run above
    page = Path(rows[0]["report"])
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    assert "Top1 accuracy" in html and "Contact sheet" in html and "espresso" in html
    with Image.open(rows[0]["contact_sheet"]) as sheet:
        assert sheet.size[0] >= 3 * 160
    shot = tmp_path / "shot.png"
    assert _load(exe, page, shot) == []
    with Image.open(shot) as im:
        assert np.asarray(im.convert("L"), dtype=np.float64).std() > 10  # not a blank page
    # the check sees console errors when there are some
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom')</script></body></html>")
    assert any("boom" in ln for ln in _load(exe, bad, tmp_path / "bad.png"))


def test_report_of_a_run_gone_from_the_board(board):
    r = board.deploy("report", "board1", "--run", "20200101-000000-dead", check=False)
    assert r.returncode == 1 and "no run 20200101-000000-dead on the board" in r.stderr


# ---------------------------------------------------------------- the simulated Atlas 200 DK


@pytest.fixture(scope="module")
def dk(tmp_path_factory, demo):
    """A simulated DK given only the onnx: push builds the simulated .om with AIPP from app.preprocess.
    ImageNet's mean/std (not the demo's 127/128, which fp16 holds exactly) so fp16 rounding shows."""
    proj = Project(tmp_path_factory.mktemp("dkq"), demo, photos=("coffee.jpg", "rocket.jpg"),
                   boards={"dk1": {"sandbox": True, "target": "atlas200dk", "arch": "x86_64"}})
    proj.app_extra = {"preprocess": {"preset": "imagenet"}}
    proj.configure()
    proj.up("dk1")
    proj.deploy("push", "dk1", "--no-health-check")
    yield proj
    assert proj.down()


def test_verify_on_the_simulated_dk_shows_fp16_and_aipp_as_small_differences(dk):
    row = _rows(dk, "verify", "dk1")[0]
    assert row["ok"] and row["agreement"] == 1.0 and row["compared"] == 2
    assert 0 < row["max_abs_diff"] < 1e-3 and 0 < row["mean_abs_diff"]  # real, small, not zero
    doc = json.loads((Path(row["path"]) / "verify.json").read_text())
    assert doc["backend"] == "acl" and doc["model"].endswith(".om") and all(i["max_abs_diff"] > 0 for i in doc["images"])
