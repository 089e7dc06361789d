"""The simulated MLU370 host (seed 003): a sandbox board shaped like Cambricon's magicmind 1.7 container
(Python 3.7, cnmon, NEUWARE_HOME with the simulated MagicMind runtime) running the agent's magicmind
backend, end to end through the CLI: model convert --simulate, sandbox up, check, push, run, pull, bench
at batches 1,4,8, eval with seed 003's result files; the CE3226 edge profile refused in one line; bad
models and a failing enqueue as one clear line each, finished images kept. One module-scoped board."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import vendor

from deploy.sandbox import atlas
from deploy.testing import CAT, ESPRESSO, ROCKET, Project, ssh_argv, top1

HAVE_37 = atlas.find_cpython("3.7") is not None
SIMMM = Path(__file__).resolve().parents[1] / "deploy/sandbox/cambricon/runtime/magicmind/python/runtime/simmm.py"


def row(project: Project, *args: str) -> dict:
    """The one board's row of ``deploy ARGS --json`` (a list of rows, or {"boards": rows, ...})."""
    out = project.deploy_json(*args)
    return (out["boards"] if isinstance(out, dict) else out)[0]


def results(project: Project, board: str, run_id: str) -> tuple[Path, dict[str, dict]]:
    pulled = row(project, "pull", board, "--run", run_id)
    path = Path(pulled["path"])
    lines = (path / "results.jsonl").read_text().splitlines()
    return path, {r["image"]: r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def mlu(tmp_path_factory, demo):
    proj = Project(tmp_path_factory.mktemp("mlu"), demo, boards={"mlu-sim": {"sandbox": True, "target": "mlu370"}})
    model = proj.root / "models" / "efficientnet_lite0.mm"
    proj.deploy("model", "convert", str(demo / "models" / "efficientnet_lite0.onnx"), "--target", "mlu370",
                "--simulate", "--aipp", "app", "-o", str(model))  # fmt: skip
    proj.app_extra = {"models": {"onnx": str(demo / "models" / "efficientnet_lite0.onnx"), "magicmind": str(model)}}
    proj.configure()
    proj.up("mlu-sim")
    yield proj
    assert proj.down()


def test_the_board_is_shaped_like_an_mlu370_host(mlu):
    r = subprocess.run([*ssh_argv(mlu.status("mlu-sim")), "python3.7 --version; cnmon | grep -c MLU370-X4; "
                        "echo $NEUWARE_HOME; python3.7 -c 'import magicmind' 2>&1 | tail -1"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Python 3.7." if HAVE_37 else "Python 3.")
    assert lines[1] == "1" and lines[2].endswith("/neuware")
    assert "No module named 'magicmind'" in lines[3]  # only once the Neuware env script is sourced


def test_check_reports_cnmon_and_import_magicmind(mlu):
    checked = row(mlu, "check", "mlu-sim")
    assert checked["ok"], checked
    found = {f["check"]: f for f in checked["findings"]}
    assert found["import magicmind"]["ok"] and "env.sh sourced" in found["import magicmind"]["detail"]
    assert found["cnmon"]["ok"] and "0: MLU370-X4" in found["cnmon"]["detail"]


def test_push_run_pull_classifies_with_magicmind(mlu):
    pushed = row(mlu, "push", "mlu-sim")
    assert pushed["ok"] and pushed["target"] == "mlu370"
    if HAVE_37:
        assert pushed["python"] == "3.7"
    run = row(mlu, "run", "mlu-sim", "-q", "--batch", "2")
    assert run["ok"] and run["images_ok"] == 3, run
    path, recs = results(mlu, "mlu-sim", run["run_id"])
    assert top1(recs["chelsea.jpg"]) in CAT and top1(recs["coffee.jpg"]) in ESPRESSO
    assert top1(recs["rocket.jpg"]) in ROCKET
    job = json.loads((path / "job.json").read_text())
    assert job["backend"] == "magicmind"
    start = json.loads((path / "events.jsonl").read_text().splitlines()[0])
    assert start["preprocess"]["dtype"] == "uint8" and start["preprocess"]["layout"] == "NHWC"


def test_bench_at_batches_1_4_8_reports_mm_run_figures(mlu):
    run = row(mlu, "run", "mlu-sim", "--mode", "bench", "--batch", "1,4,8", "-q")
    assert run["ok"], run
    rows = run["summary"]["bench"]
    assert [r["batch"] for r in rows] == [1, 4, 8]
    for r in rows:
        lat = r["latency_ms"]
        assert r["throughput"] > 0 and lat["count"] == r["loop"]
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    path = mlu.root / "outputs" / "mlu-sim" / run["run_id"]
    mlu.deploy_json("pull", "mlu-sim", "--run", run["run_id"])
    assert "Throughput (qps):" in (path / "events.jsonl").read_text()


def test_a_failing_enqueue_is_one_line_and_the_other_images_are_kept(mlu):
    mlu.env = {**mlu.env, "MM_SIM_FAIL": "enqueue:2"}
    mlu.configure()
    try:
        assert row(mlu, "push", "mlu-sim")["ok"]
        r = mlu.deploy("run", "mlu-sim", "-q", "--json", check=False)
    finally:
        mlu.env = {k: v for k, v in mlu.env.items() if k != "MM_SIM_FAIL"}
        mlu.configure()
    out = json.loads(r.stdout)
    got = (out["boards"] if isinstance(out, dict) else out)[0]
    assert r.returncode != 0 and got["images_ok"] == 2, got
    path, recs = results(mlu, "mlu-sim", got["run_id"])
    failed = [json.loads(x) for x in (path / "results.jsonl").read_text().splitlines() if not json.loads(x)["ok"]]
    assert len(failed) == 1 and "enqueue failed: INTERNAL: injected fault" in json.dumps(failed[0])


def test_bad_models_are_refused_in_one_line(mlu, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("simmm", SIMMM)
    simmm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(simmm)
    good = Path(mlu.app_extra["models"]["magicmind"])
    header, graph = simmm.loads(good.read_bytes())
    q16 = tmp_path / "q16.mm"
    q16.write_bytes(simmm.dumps({**header, "precision": "qint16_mixed_float32"}, graph))
    edge = tmp_path / "edge.mm"
    edge.write_bytes(simmm.dumps({**header, "archs": ["mtp_322"]}, graph))
    junk = tmp_path / "junk.mm"
    junk.write_bytes(b"not a model at all")
    saved = dict(mlu.app_extra["models"])
    try:
        # a sandbox board given a non-simulated model and an onnx gets the onnx's simulated build (as the
        # Atlas path does), so the junk file goes alone
        for models, words in (({**saved, "magicmind": str(q16)}, "precision qint16_mixed_float32"),
                              ({**saved, "magicmind": str(edge)}, "built for mtp_322"),
                              ({"magicmind": str(junk)}, "is not one")):  # fmt: skip
            mlu.app_extra["models"] = models
            mlu.configure()
            r = mlu.deploy("push", "mlu-sim", check=False)
            assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        mlu.app_extra["models"] = saved
        mlu.configure()


def test_ce3226_refuses_the_magicmind_backend_in_one_line(mlu):
    mlu.boards["edge1"] = {"host": "192.0.2.7", "target": "ce3226"}
    mlu.configure()
    try:
        r = mlu.deploy("push", "edge1", check=False)
    finally:
        del mlu.boards["edge1"]
        mlu.configure()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "CE3226 edge board has no MagicMind Python runtime" in r.stderr


def test_eval_writes_seed_003s_result_files_for_its_scorer(mlu, tmp_path):
    scorer = vendor.magicmind_cloud() / "buildin" / "cv" / "utils"
    assert row(mlu, "push", "mlu-sim")["ok"]
    labels = tmp_path / "val_label.txt"
    labels.write_text("chelsea.JPEG 285\ncoffee.JPEG 967\nrocket.JPEG 657\n")
    got = row(mlu, "eval", "mlu-sim", "--labels", str(labels))
    out = Path(got["path"])
    assert (out / "result.json").is_file()
    assert (out / "eval_labels.txt").read_text().splitlines() == ["[0]: 285", "[1]: 967", "[2]: 657"]
    assert len((out / "eval_result_5.txt").read_text().splitlines()) == 15
    r = subprocess.run([sys.executable, str(scorer / "compute_top1_and_top5.py"), "--result_label_file",
                        str(out / "eval_labels.txt"), "--result_1_file", str(out / "eval_result_1.txt"),
                        "--result_5_file", str(out / "eval_result_5.txt"), "--top1andtop5_file",
                        str(tmp_path / "eval_result.txt")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "top1:  1.0" in r.stdout and "top5:  1.0" in r.stdout
