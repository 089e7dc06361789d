"""Issue 22: faults a board meets in the field, each tried on a real sandbox board (sshd on loopback).

The environment goes through the release (item 1), every run ends with a reason (item 4), interrupted
pulls leave no debris (item 6), no file given to a run is silently dropped (item 7), the service's figures
are live while it crash-loops (item 9), the app lock and what a user sees when it is held (item 10), and run
ids are checked before any board is contacted (item 11). The full-disk cases (items 2, 3, 4, 5) are in
``test_faults_disk.py``: they need root for a loop-mounted board home.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deploy.testing import TEST_ENV, Project, pid_alive, wait_for, wait_gone
from deploy.testing.relay import Relay


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, demo):
    """A project with board1 up and the demo pushed."""
    proj = Project(tmp_path_factory.mktemp("faults"), demo)
    proj.up()
    proj.deploy("push", "board1")
    yield proj
    assert proj.down()


def exec_out(proj: Project, script: str) -> str:
    return proj.deploy("exec", "board1", "--", "sh", "-c", script).stdout


# ---------------------------------------------------------------- 1: the environment is the release's


def test_an_env_that_breaks_python_is_reverted_with_the_release_and_checked_every_time(pushed):
    good = pushed.current_release()
    pushed.env = {**TEST_ENV, "PYTHONHOME": "/nonexistent"}
    pushed.app_extra = {"env_unsafe": True}  # PYTHONHOME changes how the board runs code: opted in
    pushed.configure()
    try:
        for _ in range(2):  # the same broken content pushed again is checked again, never "already at"
            r = pushed.deploy("push", "board1", check=False)
            assert r.returncode == 1 and "failed its health check" in r.stderr, r.stdout + r.stderr
            assert pushed.current_release() == good
            assert exec_out(pushed, 'echo "home=$PYTHONHOME"').strip() == "home="  # env.sh went back too
        run = pushed.deploy_json("run", "board1")["boards"][0]
        assert run["ok"] and run["images_ok"] == 3
    finally:
        pushed.env = dict(TEST_ENV)
        pushed.app_extra = {}
        pushed.configure()


def test_an_env_only_change_is_a_new_release_of_one_small_file_checked_and_rolled_back(pushed):
    before = pushed.current_release()
    pushed.env = {**TEST_ENV, "CLASSIFY_MODE": "prod"}
    pushed.configure()
    try:
        row = pushed.deploy_json("push", "board1")["boards"][0]
        assert row["switched"] and row["release"] != before and row["objects"] == 1 and row["env_changed"]
        assert row["wire_bytes"] <= 4096, row["wire_bytes"]  # same objects, a new env.sh
        assert row["health"]["status"] == "passed" and row["health"]["ran"]
        assert exec_out(pushed, 'echo "$CLASSIFY_MODE"').strip() == "prod"
        releases = pushed.deploy_json("releases", "board1")["boards"][0]["releases"]
        envs = {r["id"]: r["env"] for r in releases}
        assert envs[row["release"]] == {"API_TOKEN": "***", "CLASSIFY_MODE": "prod"}
        assert envs[before]["CLASSIFY_MODE"] == "test"
        shown = pushed.deploy("releases", "board1").stdout + pushed.deploy("status", "board1").stdout
        assert "CLASSIFY_MODE=prod" in shown and "API_TOKEN=***" in shown and TEST_ENV["API_TOKEN"] not in shown
        back = pushed.deploy_json("rollback", "board1")["boards"][0]
        assert back["current"] == before
        assert exec_out(pushed, 'echo "$CLASSIFY_MODE"').strip() == "test"  # rollback undid the env change
        env_sh = pushed.app_dir / "env.sh"
        assert env_sh.is_symlink() and oct(env_sh.stat().st_mode & 0o777) == "0o600"
    finally:
        pushed.env = dict(TEST_ENV)
        pushed.configure()
        pushed.deploy("push", "board1")


def test_a_plan_request_against_a_release_the_board_no_longer_has_is_made_again_whole(pushed):
    remembered = pushed.root / ".deploy" / "pushed" / "board1.json"
    doc = json.loads(remembered.read_text())
    assert doc["release"] == pushed.current_release()  # the next plan sends only the rows that differ from it
    remembered.write_text(json.dumps({**doc, "release": "0123456789ab"}))  # pruned, or another host's push
    row = pushed.deploy_json("push", "board1")["boards"][0]
    assert row["ok"] and row["release"] == doc["release"] and json.loads(remembered.read_text()) == doc


# ---------------------------------------------------------------- 11: run ids before any board


def test_a_malformed_run_id_is_refused_before_the_board_is_contacted(tmp_path, demo):
    proj = Project(tmp_path, demo)  # board1 is never started: contacting it would be exit 4
    r = proj.deploy("pull", "board1", "--run", "../../etc", check=False)
    assert r.returncode == 2, r.stderr
    assert "--run" in r.stderr and "invalid run id '../../etc'" in r.stderr


# ---------------------------------------------------------------- 4: every run ends with a reason


def wait_for_results(run_dir: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = run_dir / "results.jsonl"
        if results.exists() and results.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} results in {run_dir} within {timeout}s")


def run_row(pushed: Project, run_id: str) -> dict:
    rows = pushed.deploy_json("status", "board1")["boards"][0]["runs"]
    return next(r for r in rows if r["id"] == run_id)


def test_a_killed_agent_ends_its_run_with_the_signal_everywhere(pushed, many):
    run = pushed.start("run", "board1", "--images", str(many), "--run-id", "killed", "--quiet")
    run_dir = pushed.app_dir / "runs" / "killed"
    wait_for_results(run_dir, 20)
    agent = int((run_dir / "launcher.pid").read_text())
    os.kill(agent, signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1, (run.returncode, out, err)  # a documented code, not 247
    assert "killed by SIGKILL" in out + err and "--resume killed" in out + err
    row = run_row(pushed, "killed")
    assert row["status"] == "failed" and row["summary"]["reason"] == "killed by SIGKILL"
    assert 20 <= row["summary"]["ok"] < 600 and row["summary"]["total"] == 600
    assert "killed by SIGKILL" in pushed.deploy("status", "board1").stdout
    attach = pushed.deploy("run", "board1", "--attach", "killed", check=False)
    assert attach.returncode == 1 and "killed by SIGKILL" in attach.stdout + attach.stderr
    resumed = pushed.deploy_json("run", "board1", "--resume", "killed")["boards"][0]
    assert resumed["ok"] and resumed["summary"]["ok"] == 600


def test_a_run_whose_agent_and_watcher_are_gone_is_ended_by_the_next_command(pushed, many):
    run = pushed.start("run", "board1", "--images", str(many), "--run-id", "orphan", "--quiet")
    run_dir = pushed.app_dir / "runs" / "orphan"
    wait_for_results(run_dir, 20)
    watcher, agent = (int((run_dir / n).read_text()) for n in ("watcher.pid", "launcher.pid"))
    os.kill(watcher, signal.SIGKILL)  # as a reboot would: nobody left to see the agent end
    os.kill(agent, signal.SIGKILL)
    assert wait_gone([watcher, agent])
    run.communicate(timeout=120)
    assert run.returncode == 1
    row = run_row(pushed, "orphan")
    assert row["status"] == "failed" and "the agent is gone" in row["summary"]["reason"]
    assert not pid_alive(agent)


# ---------------------------------------------------------------- 5: uploads: no half state


def test_an_upload_cut_off_on_the_board_leaves_nothing_the_next_command_keeps(pushed, many):
    runs = pushed.app_dir / "runs"
    run = pushed.start("run", "board1", "--images", str(many), "--run-id", "cutoff", "--quiet")
    deadline = time.monotonic() + 60
    new = []
    while not new and time.monotonic() < deadline:
        new = [p for p in runs.glob(".new-cutoff-*")] if runs.is_dir() else []
        time.sleep(0.002)
    assert new, "the upload was over before it could be cut off"
    op = int(new[0].name.rpartition("-")[2])
    os.kill(op, signal.SIGKILL)  # the board's end of the upload, killed mid-stream
    run.communicate(timeout=60)
    assert run.returncode in (1, 4) and not (runs / "cutoff").exists()
    assert wait_gone([op])
    pushed.deploy("status", "board1")
    assert not list(runs.glob(".new-*"))  # removed by the next command


def test_an_upload_of_hard_linked_images_sends_each_as_itself(pushed, tmp_path, demo):
    folder = tmp_path / "linked"
    folder.mkdir()
    for i in range(4):
        os.link(demo / "images" / "coffee.jpg", folder / f"coffee-{i}.jpg")
    row = pushed.deploy_json("run", "board1", "--images", str(folder))["boards"][0]
    assert row["ok"] and row["images_ok"] == 4


# ---------------------------------------------------------------- 6: interrupted pulls leave no debris


@pytest.fixture(scope="module")
def slow(pushed, many):
    """board1 also as "slow", through a relay of 40 Mbit/s (a pull of the 600-image run takes ~10 s), with that
    run on the board."""
    if not (pushed.app_dir / "runs" / "big").is_dir():
        pushed.deploy("run", "board1", "--images", str(many), "--run-id", "big", "--quiet")
    with Relay(pushed.status()["port"], mbit=40) as relay:
        pushed.boards["slow"] = pushed.relay_board(relay.port)
        pushed.configure()
        try:
            yield "slow"
        finally:
            del pushed.boards["slow"]
            pushed.configure()


def partials(pushed: Project, board: str) -> list[Path]:
    return list((pushed.root / "outputs" / board).glob(".*.partial-*"))


def interrupted_pull(pushed: Project, board: str, sig: int) -> subprocess.Popen:
    pull = pushed.start("pull", board, "--run", "big", "--include-inputs")
    deadline = time.monotonic() + 60
    while not partials(pushed, board) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # some files extracted
    assert partials(pushed, board) and pull.poll() is None
    pull.send_signal(sig)
    pull.communicate(timeout=60)
    return pull


def test_an_interrupted_pull_leaves_no_partial_directory(pushed, slow):
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C: the worker thread stops too, nothing lands later
        pull = interrupted_pull(pushed, slow, sig)
        assert pull.returncode == 130 and not partials(pushed, slow)
        time.sleep(1.0)
        assert not (pushed.root / "outputs" / slow / "big").exists() and not partials(pushed, slow)
    pull = interrupted_pull(pushed, slow, signal.SIGKILL)
    left = partials(pushed, slow)
    assert pull.returncode == -signal.SIGKILL and len(left) == 1 and str(pull.pid) in left[0].name
    (pushed.root / "outputs" / slow / f".other.partial-{2**22 + 7}").mkdir()  # a gone process's, not ours
    pushed.deploy("pull", slow, "--run", "big")  # the next pull removes every leftover whose process is gone
    assert not partials(pushed, slow)


# ---------------------------------------------------------------- 7: nothing silently dropped


def test_every_file_given_to_a_run_is_classified_an_error_or_listed_with_its_reason(pushed, tmp_path, demo):
    folder = tmp_path / "mixed"
    folder.mkdir()
    coffee = (demo / "images" / "coffee.jpg").read_bytes()
    long_name = "x" * 251 + ".png"  # 255 bytes: classified, and its labelled copy (".jpg" added) must fit too
    for name, data in {"coffee.jpg": coffee, "photo-without-suffix": coffee, ".hidden.jpg": coffee,
                       "notes.txt": b"not an image\n", "broken.jpg": b"\xff\xd8 not a jpeg", long_name: coffee}.items():
        (folder / name).write_bytes(data)
    r = pushed.deploy("run", "board1", "--images", str(folder), "--json", check=False)
    row = json.loads(r.stdout)["boards"][0]
    assert r.returncode == 5 and row["images_ok"] == 2 and row["images_failed"] == 1  # broken.jpg: an error record
    assert row["files_not_taken"] == 3 and row["images_ok"] + row["images_failed"] + row["files_not_taken"] == 6
    reasons = {n["file"]: n["reason"] for n in row["summary"]["not_taken_files"]}
    assert reasons == {".hidden.jpg": "a dot-name (hidden, or a file still being written)",
                       "notes.txt": "not an image suffix (.txt)", "photo-without-suffix": "not an image suffix (none)"}
    text = pushed.deploy("run", "board1", "--images", str(folder), "--quiet", check=False).stdout
    assert "3 files not taken" in text and "photo-without-suffix (not an image suffix (none))" in text
    pulled = Path(pushed.deploy_json("pull", "board1", "--run", row["run_id"])["boards"][0]["path"])
    labelled = sorted(p.name for p in (pulled / "labelled").iterdir())
    assert len(labelled) == 2 and "coffee.jpg" in labelled and all(len(n.encode()) <= 255 for n in labelled)
    assert not [p for p in (pulled / "labelled").iterdir() if p.name.endswith(".part") or p.name.startswith(".")]


def test_an_empty_folder_says_there_are_no_images(pushed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = pushed.deploy("run", "board1", "--images", str(empty), check=False)
    assert r.returncode == 1 and "no images" in r.stdout + r.stderr, r.stdout + r.stderr


# ---------------------------------------------------------------- 9 and 10: the service


def service(pushed: Project) -> dict:
    return pushed.deploy_json("service", "status", "board1")["boards"][0]["service"]


def test_a_crash_looping_service_shows_what_is_waiting_and_no_uptime(pushed, demo):
    pushed.deploy("service", "start", "board1")
    inbox = pushed.app_dir / "inbox"
    model = next((pushed.app_dir / "current" / "models").glob("*.onnx"))
    away = model.with_name(".away")
    os.rename(model, away)  # every start of the agent now fails to load its model
    try:
        os.kill(service(pushed)["agent_pid"], signal.SIGKILL)
        for i in range(20):
            shutil.copyfile(demo / "images" / "coffee.jpg", inbox / f".w{i}.part")
            os.rename(inbox / f".w{i}.part", inbox / f"w{i}.jpg")
        info = wait_for(lambda: (s := service(pushed))["agent_pid"] is None and s["supervisor"] in ("backoff", "crash-loop")
                        and s["restarts"] >= 2 and s, what="a crashing agent")
        assert info["waiting"] == 20 and info["since"] is None and info["ips"] == 0.0, info
        text = pushed.deploy("service", "status", "board1").stdout
        assert "agent not running" in text and " up " not in text and "waiting 20" in text, text
    finally:
        os.rename(away, model)
        pushed.deploy("service", "stop", "board1")


def test_a_held_app_lock_is_one_line_naming_its_holder(pushed):
    from deploy.board.files import Lock

    with Lock(str(pushed.app_dir), "push"):
        for args in (("service", "start", "board1"), ("rollback", "board1")):
            r = pushed.deploy(*args, check=False)
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert re.search(rf"board1: a push \(pid {os.getpid()}\) since \d\d:\d\d:\d\d UTC, \d+s ago holds the lock "
                             "on this app; try again when it ends", r.stderr), r.stderr
    assert not service(pushed)["enabled"]  # the refused start changed nothing
