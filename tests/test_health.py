"""The health check after a push: the board's agent classifies the release's probe, its top-1 must be the
host's, and a board that fails switches back by itself.

On real sandbox boards through the CLI (an onnx board and the simulated Atlas 200 DK), the board op on a
temporary home with a stand-in agent (mismatch, timeout, crash, a first push), and the host's choice of
probe with its cached reference.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import textwrap
from pathlib import Path

import pytest

from deploy.board import main as board_main
from deploy.board import protocol
from deploy.board.wire import Wire
from deploy.errors import InventoryError
from deploy.inventory import parse
from deploy.release import probe as probe_mod
from deploy.release.hashcache import HashCache
from deploy.testing import ESPRESSO, Project

APP = "classify"


def releases_on_board(project: Project) -> list[str]:
    return sorted(n for n in os.listdir(project.app_dir / "releases") if not n.startswith("."))


def corrupt_model(project: Project) -> Path:
    """An .onnx that no runtime loads (so the host has no reference either: the board's check decides)."""
    bad = project.root / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf" * 64)
    return bad


def use_model(project: Project, model: Path | None, **configure) -> None:
    project.app_extra = {"models": {"onnx": str(model)}} if model is not None else {}
    project.configure(**configure)


def one_error_line(r) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# ---------------------------------------------------------------- on a sandbox board


def test_a_good_push_passes_and_an_unchanged_one_is_not_checked_again(project):
    use_model(project, None, topk=4)
    row = project.deploy_json("push", "board1")["boards"][0]
    h = row["health"]
    assert row["ok"] and row["switched"] and h["status"] == "passed" and h["ran"], row
    assert h["probe"] == "images/coffee.jpg"  # chelsea.jpg comes first but its top-1 is a near tie
    assert h["expected"][0] in ESPRESSO and h["got"][0] == h["expected"][0]
    assert 0 < h["agent_seconds"] <= h["seconds"] < row["seconds"]
    shipped = project.app_dir / "current" / "health"
    assert json.loads((shipped / "health.json").read_text())["expected"] == h["expected"]
    assert (shipped / "probe.jpg").read_bytes() == (project.images / "coffee.jpg").read_bytes()
    assert (project.app_dir / "health.log").read_text().split()[1:] == [row["release"], "pass"]
    assert not [n for n in os.listdir(project.app_dir) if n.startswith(".health-")]  # scratch removed

    again = project.deploy_json("push", "board1")["boards"][0]
    assert not again["switched"] and again["health"]["status"] == "passed" and not again["health"]["ran"]


def test_a_model_that_cannot_load_fails_the_check_and_the_board_is_back(project):
    use_model(project, None, keep=1)  # keep 1: the previous release must survive until the check passed
    good = project.deploy_json("push", "board1")["boards"][0]["release"]
    use_model(project, corrupt_model(project), keep=1)
    r = project.deploy("push", "board1", check=False)
    line = one_error_line(r)
    assert r.returncode == 1
    assert "failed its health check: probe images/chelsea.jpg: " in line and "cannot load models/broken.onnx" in line
    assert line.endswith(f"; rolled back to {good}"), line
    assert project.current_release() == good and releases_on_board(project) == [good]  # the failed release is gone
    run = project.deploy_json("run", "board1", "-q")["boards"][0]
    assert run["ok"] and run["release"] == good

    use_model(project, None, keep=1)
    row = project.deploy_json("push", "board1")["boards"][0]
    assert row["release"] == good and row["health"]["status"] == "passed"  # still current: nothing switched
    project.configure()


def test_no_health_check_skips_it_and_the_next_push_checks_what_is_current(project):
    use_model(project, None)
    good = project.deploy_json("push", "board1")["boards"][0]["release"]
    use_model(project, corrupt_model(project))
    row = project.deploy_json("push", "board1", "--no-health-check")["boards"][0]
    assert row["ok"] and row["switched"] and row["health"]["status"] == "skipped"
    assert row["health"]["reason"] == "--no-health-check" and project.current_release() == row["release"]
    # the same content again, now checked: it never passed here, so it is checked and fails
    r = project.deploy("push", "board1", check=False)
    assert one_error_line(r).endswith(f"rolled back to {good}") and project.current_release() == good
    use_model(project, None)


def test_a_failed_first_push_leaves_nothing_deployed(project):
    use_model(project, corrupt_model(project), app="fresh")
    try:
        r = project.deploy("push", "board1", check=False)
        assert one_error_line(r).endswith("no earlier release to roll back to: current removed")
        assert project.current_release(app="fresh") is None
        assert not [n for n in os.listdir(project.home / "HIAI_PROJECTS" / "fresh" / "releases")
                    if not n.startswith(".")]
        run = project.deploy("run", "board1", "-q", check=False)
        assert run.returncode != 0 and "nothing deployed for this app yet" in run.stderr
    finally:
        use_model(project, None)


def test_dry_run_is_not_checked(project):
    use_model(project, None, topk=2)
    row = project.deploy_json("push", "board1", "--dry-run")["boards"][0]
    assert (row["health"]["status"], row["health"]["reason"]) == ("skipped", "dry run")
    project.configure()


@pytest.fixture(scope="module")
def dk(tmp_path_factory, demo):
    """A simulated Atlas 200 DK given only the onnx: push builds the simulated .om (AIPP, fp16) from it."""
    proj = Project(tmp_path_factory.mktemp("dk"), demo,
                   boards={"dk1": {"sandbox": True, "target": "atlas200dk", "arch": "x86_64"}})
    proj.up("dk1")
    yield proj
    assert proj.down()


def test_the_simulated_dk_passes_against_the_hosts_fp32_answer(dk):
    row = dk.deploy_json("push", "dk1")["boards"][0]
    h = row["health"]
    assert row["ok"] and row["target"] == "atlas200dk" and h["status"] == "passed" and h["ran"], row
    assert h["got"][0] == h["expected"][0] and h["expected"][0] in ESPRESSO
    assert abs(h["got"][2] - 0.95) < 0.05  # fp16 and AIPP move the score a little, not the class


# ---------------------------------------------------------------- the board op, no SSH

FAKE_AGENT = textwrap.dedent(
    """
    import json, os, sys, time
    job = json.load(open(sys.argv[sys.argv.index("--job") + 1]))
    what = open(os.path.join(job["release"], "behaviour")).read().split()
    if what[0] == "hang":
        time.sleep(60)
    if what[0] == "crash":
        sys.exit("ImportError: numpy is missing")
    with open(os.path.join(job["out_dir"], "results.jsonl"), "w") as f:
        f.write(json.dumps({"image": "probe.jpg", "ok": True, "topk": [[int(what[1]), "class", 0.9]]}) + "\\n")
    """
)


def board_op(home: Path, name: str, request: protocol.Message, then: list = ()) -> list[dict]:
    lines = b"".join(json.dumps(m.to_json()).encode() + b"\n" for m in [request, *then])
    out = io.BytesIO()
    board_main.run(name, Wire(io.BytesIO(lines), out, str(home)))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def board_push(home: Path, behaviour: str, *, keep: int = 5, probe: bool = True) -> str:
    """A release whose stand-in agent answers as ``behaviour`` says ("class N", "hang", "crash"), pushed
    with a check to follow; returns its id."""
    files = {"agent/__init__.py": b"", "agent/__main__.py": FAKE_AGENT.encode(), "behaviour": behaviour.encode(),
             "app.json": json.dumps({"model": "m.onnx", "backend": "onnx", "images": None}).encode()}
    if probe:
        files["health/probe.jpg"] = b"jpeg"
        files["health/health.json"] = json.dumps({"probe": "health/probe.jpg", "expected": [7, "seven"]}).encode()
    rows = [[p, len(d), hashlib.sha256(d).hexdigest(), 0o644] for p, d in sorted(files.items())]
    rid = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]
    req = protocol.PushRequest(app=APP, release=rid, manifest=rows, keep=keep, health=True)
    state = protocol.decode(protocol.PushState, board_op(home, "push", req, [protocol.PushCommit(action="abort")])[0])
    blobs = {hashlib.sha256(d).hexdigest(): d for d in files.values()}
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for sha in state.missing:
            info = tarfile.TarInfo(sha)
            info.size = len(blobs[sha])
            tf.addfile(info, io.BytesIO(blobs[sha]))
    lines = b"".join(json.dumps(m.to_json()).encode() + b"\n" for m in [req, protocol.PushCommit(action="commit")])
    out = io.BytesIO()
    assert board_main.run("push", Wire(io.BytesIO(lines + stream.getvalue()), out, str(home))) == 0, out.getvalue()
    done = protocol.decode(protocol.PushDone, json.loads(out.getvalue().splitlines()[-1]))
    assert done.release == rid and done.pruned == []  # pruning waits for the check
    return rid


def board_check(home: Path, rid: str, timeout: float = 20.0, keep: int = 5) -> protocol.HealthReply:
    reply = board_op(home, "health", protocol.HealthRequest(app=APP, release=rid, timeout=timeout, keep=keep))[0]
    assert "error" not in reply, reply
    return protocol.decode(protocol.HealthReply, reply)


def board_current(home: Path) -> str | None:
    try:
        return os.readlink(home / "HIAI_PROJECTS" / APP / "current").split("/")[-1]
    except FileNotFoundError:
        return None


def test_board_op_passes_a_match_then_rolls_back_a_mismatch_and_prunes_only_after_a_pass(tmp_path):
    a = board_push(tmp_path, "class 7", keep=1)
    ok = board_check(tmp_path, a, keep=1)
    assert (ok.status, ok.got[0], ok.expected, ok.current) == ("passed", 7, [7, "seven"], a)
    b = board_push(tmp_path, "class 8", keep=1)
    bad = board_check(tmp_path, b, keep=1)
    assert (bad.status, bad.got[0], bad.current) == ("failed", 8, a) and board_current(tmp_path) == a
    rels = tmp_path / "HIAI_PROJECTS" / APP / "releases"
    assert sorted(os.listdir(rels)) == [a]  # b removed; a kept although keep is 1
    c = board_push(tmp_path, "class 7 again", keep=1)
    assert board_check(tmp_path, c, keep=1).pruned == [a] and sorted(os.listdir(rels)) == [c]
    log = (tmp_path / "HIAI_PROJECTS" / APP / "health.log").read_text().split()
    assert log[1::3] == [a, b, c] and log[2::3] == ["pass", "fail", "pass"]


def test_board_op_kills_a_hanging_agent_and_reports_a_crash(tmp_path):
    a = board_push(tmp_path, "class 7")
    board_check(tmp_path, a)
    hang = board_push(tmp_path, "hang")
    r = board_check(tmp_path, hang, timeout=1.0)
    assert r.status == "failed" and r.agent_error == "the agent did not finish within 1s" and r.current == a
    assert r.seconds < 10
    crash = board_push(tmp_path, "crash")
    r = board_check(tmp_path, crash)
    assert r.status == "failed" and r.agent_error == "the agent exited with status 1: ImportError: numpy is missing"
    assert board_current(tmp_path) == a
    assert not [n for n in os.listdir(tmp_path / "HIAI_PROJECTS" / APP) if n.startswith(".health-")]


def test_board_op_refuses_a_release_that_is_not_current_and_skips_one_without_a_probe(tmp_path):
    a = board_push(tmp_path, "class 7")
    b = board_push(tmp_path, "class 7", probe=False)
    reply = board_op(tmp_path, "health", protocol.HealthRequest(app=APP, release=a))[0]
    assert "another push or rollback came between" in reply["error"] and board_current(tmp_path) == b
    skipped = board_check(tmp_path, b)
    assert skipped.status == "skipped" and skipped.current == b


def test_a_first_release_that_fails_leaves_nothing_current(tmp_path):
    a = board_push(tmp_path, "class 3")
    r = board_check(tmp_path, a)
    assert r.status == "failed" and r.current is None and board_current(tmp_path) is None
    assert not os.listdir(tmp_path / "HIAI_PROJECTS" / APP / "releases")


# ---------------------------------------------------------------- the host's probe and reference


def app_with(demo: Path, images: Path, extra: str = "") -> object:
    text = textwrap.dedent(f"""\
        app:
          name: classify
          models: {{onnx: {demo / "models" / "efficientnet_lite0.onnx"}}}
          labels: {demo / "labels" / "imagenet_classes.txt"}
          images: {images}
          preprocess: {{preset: imagenet, scale: 1.0, mean: [127, 127, 127], std: [128, 128, 128]}}
        {textwrap.indent(extra, "  ")}
        boards:
          b: {{sandbox: true}}
        """)
    return parse(text, images.parent / "inventory.yaml").app


def test_the_probe_is_the_first_confident_image_and_its_reference_is_cached(tmp_path, demo, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        (images / name).write_bytes((demo / "images" / name).read_bytes())
    app = app_with(demo, images)
    cache = HashCache(tmp_path / "hashcache.json")
    probe = probe_mod.probe_for(app, cache, tmp_path / "state")
    assert probe.source == "images/coffee.jpg" and probe.expected[0] in ESPRESSO and probe.score > 0.9
    assert probe.path == "health/probe.jpg" and json.loads(probe.spec())["expected"] == list(probe.expected)

    def no_runs(*a, **k):
        raise AssertionError("the reference should come from the cache")

    monkeypatch.setattr(probe_mod, "classify", no_runs)
    assert probe_mod.probe_for(app, cache, tmp_path / "state") == probe

    explicit = app_with(demo, images, f"health: {{probe: {images / 'rocket.jpg'}, timeout: 5}}")
    monkeypatch.undo()
    chosen = probe_mod.probe_for(explicit, cache, tmp_path / "state")
    assert chosen.source == "rocket.jpg" and explicit.health_timeout == 5


def test_no_images_means_no_probe_and_bad_health_settings_name_their_line(tmp_path, demo):
    empty = tmp_path / "none"
    empty.mkdir()
    assert probe_mod.probe_for(app_with(demo, empty), HashCache(tmp_path / "h.json"), None) is None
    with pytest.raises(InventoryError, match=r"inventory.yaml:\d+: app.health.timeout: must be an integer 1-3600"):
        app_with(demo, empty, "health: {timeout: 0}")
    with pytest.raises(InventoryError, match=r"inventory.yaml:\d+: app.health.probes: unknown field"):
        app_with(demo, empty, "health: {probes: x.jpg}")
