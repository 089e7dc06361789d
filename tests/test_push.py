"""The push engine on a real sandbox board: interruptions, verification, rollback, keep-N, deltas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import CAT, top1
from PIL import Image

from deploy import inventory
from deploy.errors import DeployError
from deploy.link import remote, ssh
from deploy.ops import push, releases


def staging_debris(project) -> list[str]:
    return [n for n in os.listdir(project.app_dir / "releases") if n.startswith(".staging-")]


def add_big_photo(project, name="big.jpg", seed=0) -> int:
    """A large real JPEG (noise, ~20 MB) so that a push has a long stream to interrupt."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(project.root / "images" / name, quality=95)
    return (project.root / "images" / name).stat().st_size


def remove_big_photos(project):
    for p in (project.root / "images").glob("big*.jpg"):
        p.unlink()


def assert_previous_release_runs(project, release):
    assert project.current_release() == release
    run = project.deploy_json("run", "board1", "-q", "--images", str(project.demo / "images" / "chelsea.jpg"))["boards"][0]
    assert run["ok"] and run["release"] == release and run["images_ok"] == 1


def verify_all(project):
    inv = inventory.load(project.inventory)
    with ssh.Connection(ssh.endpoint_for(inv, inv.boards["board1"])) as conn:
        return releases.verify(inv, conn)


def sshd_sessions(project) -> list[int]:
    """PIDs under the sshd listener we started: the per-connection sshd processes and what they run."""
    listener = project.sandbox["pid"]
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue

    def under(pid):
        seen = set()
        while pid in parent and pid not in seen:
            seen.add(pid)
            pid = parent[pid]
            if pid == listener:
                return True
        return False

    return [pid for pid in parent if under(pid)]


def test_connection_cut_by_the_board_mid_stream_leaves_previous_release(project):
    remove_big_photos(project)
    project.configure()
    base = project.deploy_json("push", "board1")["boards"][0]["release"]
    add_big_photo(project)
    inv = inventory.load(project.inventory)
    board = inv.boards["board1"]
    sent = [0]

    def cut(n):
        sent[0] += n
        if sent[0] > 4_000_000 and sent[0] - n <= 4_000_000:
            for pid in sshd_sessions(project):  # the board side drops the connection
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(DeployError), ssh.Connection(ssh.endpoint_for(inv, board)) as conn:
        push.push(inv, board, conn, on_bytes=cut)
    assert 4_000_000 < sent[0] < 19_000_000  # really mid-stream
    assert_previous_release_runs(project, base)

    again = project.deploy_json("push", "board1")["boards"][0]
    assert again["switched"] and again["release"] != base and project.current_release() == again["release"]
    assert staging_debris(project) == []  # the re-push cleaned up
    check = verify_all(project)
    assert check.bad == [] and check.files > 300  # the slim release: ~360 files
    remove_big_photos(project)


KILL_HOST = textwrap.dedent(
    """
    import os, signal, sys
    from deploy import inventory
    from deploy.link import ssh
    from deploy.ops import push
    inv = inventory.load(sys.argv[1])
    board = inv.boards["board1"]
    point = sys.argv[2]
    sent = [0]
    def on_bytes(n):
        sent[0] += n
        if point == "stream" and sent[0] > 4_000_000:
            os.kill(os.getpid(), signal.SIGKILL)
    def on_plan(plan):
        if point == "plan":
            os.kill(os.getpid(), signal.SIGKILL)
    with ssh.Connection(ssh.endpoint_for(inv, board)) as conn:
        push.push(inv, board, conn, on_bytes=on_bytes, on_plan=on_plan)
    """
)


@pytest.mark.parametrize("point", ["plan", "stream"])
def test_host_process_killed_leaves_previous_release(project, point):
    remove_big_photos(project)
    project.configure()
    base = project.deploy_json("push", "board1")["boards"][0]["release"]
    add_big_photo(project, seed=1 if point == "plan" else 2)
    r = subprocess.run([sys.executable, "-c", KILL_HOST, str(project.inventory), point], capture_output=True, text=True,
                       cwd=project.root)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert_previous_release_runs(project, base)
    again = project.deploy_json("push", "board1")["boards"][0]
    assert again["switched"] and project.current_release() == again["release"]
    assert staging_debris(project) == []
    assert verify_all(project).bad == []
    remove_big_photos(project)


def test_unchanged_push_sends_nothing_and_one_change_sends_one_file(project):
    remove_big_photos(project)
    project.configure()
    project.deploy("push", "board1")
    again = project.deploy_json("push", "board1")["boards"][0]
    assert again["payload_bytes"] == 0 and not again["switched"] and again["objects"] == 0
    size = add_big_photo(project, seed=3)
    one = project.deploy_json("push", "board1")["boards"][0]
    assert one["objects"] == 1 and size <= one["payload_bytes"] <= size  # content bytes only
    assert one["linked"] > 300  # everything else hard-linked from the previous release
    rel = project.app_dir / "current"
    old = project.app_dir / "releases" / one["previous"]
    assert (rel / "site" / "numpy" / "__init__.py").stat().st_ino == (old / "site" / "numpy" / "__init__.py").stat().st_ino
    remove_big_photos(project)


def test_rollback_and_releases(project):
    remove_big_photos(project)
    project.configure(topk=5)
    a = project.deploy_json("push", "board1")["boards"][0]["release"]
    project.configure(topk=3)
    b = project.deploy_json("push", "board1")["boards"][0]["release"]
    assert a != b and project.current_release() == b
    rb = project.deploy_json("rollback", "board1")["boards"][0]
    log = (project.app_dir / "releases.log").read_text()
    assert rb["previous"] == b and rb["current"] == a and project.current_release() == a, log
    run = project.deploy_json("run", "board1", "-q")["boards"][0]
    pulled = project.deploy_json("pull", "board1", "--run", run["run_id"])["boards"][0]
    recs = [json.loads(x) for x in (Path(pulled["path"]) / "results.jsonl").read_text().splitlines()]
    assert all(len(r["topk"]) == 5 for r in recs)  # release a's app config is what runs
    assert top1(next(r for r in recs if r["image"] == "chelsea.jpg")) in CAT
    rels = project.deploy_json("releases", "board1")["boards"][0]
    ids = [r["id"] for r in rels["releases"]]
    assert a in ids and b in ids and rels["current"] == a
    project.deploy_json("rollback", "board1", "--to", b[:6])
    assert project.current_release() == b
    r = project.deploy("rollback", "board1", "--to", "nonexistent", check=False)
    assert r.returncode == 1 and "no single release matches" in r.stderr and project.current_release() == b
    project.configure()


def test_keep_n_prunes_but_never_current(project):
    remove_big_photos(project)
    made = []
    for topk in (1, 2, 3, 4):
        project.configure(topk=topk, keep=2)
        made.append(project.deploy_json("push", "board1")["boards"][0]["release"])
    kept = sorted(n for n in os.listdir(project.app_dir / "releases") if not n.startswith("."))
    assert kept == sorted(made[-2:])
    # roll back to the older kept release; a push that prunes to 1 keeps current, not the newest
    project.deploy("rollback", "board1", "--to", made[2])
    project.configure(topk=3, keep=1)  # the same content as made[2]: nothing to send, no switch
    res = project.deploy_json("push", "board1")["boards"][0]
    assert res["release"] == made[2] and not res["switched"] and res["pruned"] == [made[3]]
    kept = [n for n in os.listdir(project.app_dir / "releases") if not n.startswith(".")]
    assert kept == [made[2]] and project.current_release() == made[2]
    project.configure()


def test_a_silent_board_times_out_instead_of_hanging(project, monkeypatch):
    import time

    remove_big_photos(project)
    project.configure()
    base = project.deploy_json("push", "board1")["boards"][0]["release"]
    project.configure(topk=7)
    monkeypatch.setattr(remote, "REPLY_TIMEOUT", 2.0)
    inv = inventory.load(project.inventory)
    board = inv.boards["board1"]
    frozen = []

    def freeze(plan):  # the board stops answering right after the plan (as if its cable were pulled)
        for pid in sshd_sessions(project):
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)

    t0 = time.monotonic()
    try:
        with pytest.raises(DeployError, match="no answer"), ssh.Connection(ssh.endpoint_for(inv, board)) as conn:
            push.push(inv, board, conn, on_plan=freeze)
        assert time.monotonic() - t0 < 30
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
    assert frozen and project.current_release() == base
    project.configure()
