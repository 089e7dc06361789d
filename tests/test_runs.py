"""Runs outlive the SSH session that started them, and a killed run resumes without duplicates."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from deploy.testing import CAT, pid_alive, top1, wait_for

N = 240


@pytest.fixture(scope="module")
def many(project):
    """An app with N small photos (so a run lasts a few seconds), pushed once."""
    src = Image.open(project.demo / "images" / "chelsea.jpg").convert("RGB")
    src.thumbnail((320, 320))
    for i in range(N):
        src.rotate(i % 7).save(project.root / "images" / f"cat-{i:03d}.jpg", quality=85)
    project.deploy("push", "board1")
    return project


def results_in(run_dir: Path) -> list[dict]:
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def start_run(project, run_id):
    return project.start("run", "board1", "--run-id", run_id, "-q", "--json")


def test_run_survives_the_host_side_going_away_and_can_be_attached(many):
    run_id = "attach-test"
    proc = start_run(many, run_id)
    run_dir = many.app_dir / "runs" / run_id
    wait_for(lambda: len(results_in(run_dir)) >= 10)
    proc.send_signal(signal.SIGKILL)  # the host (and its SSH connection) is gone mid-run
    proc.wait()
    agent_pid = int((run_dir / "launcher.pid").read_text())
    assert len(results_in(run_dir)) < N + 3
    att = many.deploy_json("run", "board1", "--attach", run_id, "-q")["boards"][0]
    assert att["ended"] and att["summary"]["ok"] == N + 3, att  # the app's 3 photos + N cats
    wait_for(lambda: not pid_alive(agent_pid))  # the end event is written just before the agent exits
    recs = results_in(run_dir)
    assert len(recs) == N + 3 and all(r["ok"] for r in recs)


def test_killed_run_resumes_only_what_is_missing(many):
    run_id = "resume-test"
    proc = start_run(many, run_id)
    run_dir = many.app_dir / "runs" / run_id
    wait_for(lambda: len(results_in(run_dir)) >= 20)
    agent_pid = int((run_dir / "launcher.pid").read_text())
    os.kill(agent_pid, signal.SIGKILL)  # the agent dies mid-run (power cut, OOM, ...)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0  # the run did not finish: not a success
    done_before = len(results_in(run_dir))
    assert 20 <= done_before < N + 3

    resumed = many.deploy_json("run", "board1", "--resume", run_id, "-q")["boards"][0]
    assert resumed["ok"] and resumed["run_id"] == run_id
    recs = results_in(run_dir)
    counts = Counter(r["image"] for r in recs)
    assert len(counts) == N + 3 and max(counts.values()) == 1  # everything once, nothing twice
    assert resumed["images_ok"] == N + 3 - done_before  # only the missing ones were classified
    cats = [top1(r) in CAT for r in recs if r["image"].startswith("cat-")]
    assert sum(cats) >= 0.9 * N  # small, slightly rotated copies of the cat photo
    pulled = many.deploy_json("pull", "board1", "--run", run_id)["boards"][0]
    assert len((Path(pulled["path"]) / "results.jsonl").read_text().splitlines()) == N + 3


def test_stop_a_detached_run_then_resume_it(many):
    run_id = "stop-test"
    proc = start_run(many, run_id)
    run_dir = many.app_dir / "runs" / run_id
    wait_for(lambda: len(results_in(run_dir)) >= 10)
    agent_pid = int((run_dir / "launcher.pid").read_text())
    stopped = many.deploy_json("stop", "board1", "--run", run_id)["boards"][0]
    assert stopped["ok"] and stopped["stopped"] and stopped["pid"] == agent_pid
    proc.communicate(timeout=60)
    wait_for(lambda: not pid_alive(agent_pid))
    st = many.deploy_json("status", "board1")["boards"][0]
    run = next(r for r in st["runs"] if r["id"] == run_id)
    assert run["status"] in ("partial", "failed") and run["summary"]["ok"] < N + 3
    again = many.deploy_json("stop", "board1", "--run", run_id)["boards"][0]
    assert not again["stopped"]
    resumed = many.deploy_json("run", "board1", "--resume", run_id, "-q")["boards"][0]
    assert resumed["ok"]
    assert len({r["image"] for r in results_in(run_dir)}) == len(results_in(run_dir)) == N + 3


def test_prune_spares_a_release_a_live_run_uses(many):
    many.configure(keep=1)
    run_id = "prune-test"
    proc = start_run(many, run_id)
    run_dir = many.app_dir / "runs" / run_id
    wait_for(lambda: len(results_in(run_dir)) >= 5)
    used = json.loads((run_dir / "job.json").read_text())["release"].rsplit("/", 1)[-1]
    many.configure(topk=2, keep=1)  # a new release; keep 1 would prune the one the run is using
    pushed = many.deploy_json("push", "board1")["boards"][0]
    assert pushed["switched"] and used not in pushed["pruned"]
    assert (many.app_dir / "releases" / used).is_dir()
    out, _ = proc.communicate(timeout=120)
    assert json.loads(out)["boards"][0]["ok"]  # the run finished on its own release
    many.configure(keep=1)
    again = many.deploy_json("push", "board1")["boards"][0]  # no live run now: the old release goes
    assert not (many.app_dir / "releases" / used).exists() or used == again["release"]
    many.configure()
