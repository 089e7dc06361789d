"""The agent as a supervised service on a sandbox board, through the commands a user types.

One sandbox board for the module (conftest's ``project``): the service classifies what arrives
(renamed in, written in place, bad files), ``collect`` appends each record once and resumes after
a cut, a killed agent and a simulated reboot (sandbox crontab stand-in) bring it back, ``push``
moves it to the new release, ``stop`` ends it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from deploy.testing import ESPRESSO, pid_alive
from deploy.testing import wait_for as _wait_for

SETTLE = 0.5
wait_for = functools.partial(_wait_for, timeout=30.0, every=0.1)


def status(project) -> dict:
    return project.deploy_json("service", "status", "board1")["boards"][0]["service"]


def drop(inbox: Path, src: Path, name: str) -> None:
    """Arrive by rename, as a sync job or camera writer that writes a dot-file first does."""
    tmp = inbox / f".{name}.part"
    shutil.copyfile(src, tmp)
    os.rename(tmp, inbox / name)


def collected(project) -> list[dict]:
    path = project.root / "outputs" / "board1" / "service" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def up(info: dict) -> bool:
    return bool(info["agent_pid"]) and info["state"] in ("running", "idle")


@pytest.fixture(scope="module")
def svc(project):
    """The demo app pushed with a service section and the service started on board1."""
    project.app_extra = {"service": {"policy": "move", "settle": SETTLE, "max_disk": "64MB"}}
    project.configure()
    project.deploy("push", "board1")
    row = project.deploy_json("service", "start", "board1")["boards"][0]
    assert row["ok"], row
    project.inbox = project.app_dir / "inbox"
    yield project
    project.deploy("service", "stop", "board1", check=False)


def test_the_service_classifies_what_arrives_once_and_collect_appends_it_once(svc):
    photo = svc.images / "coffee.jpg"
    names = ["a.jpg", "b.jpg", "$(touch pwned); `id` 'q'.jpg"]
    for n in names:
        drop(svc.inbox, photo, n)
    (svc.inbox / "corrupt.jpg").write_bytes(photo.read_bytes()[:2000])  # truncated JPEG
    (svc.inbox / "empty.png").write_bytes(b"")
    (svc.inbox / "notes.txt").write_text("not an image")
    (svc.inbox / ".still-writing.jpg").write_bytes(photo.read_bytes()[:100])  # a dot-name is never taken
    with open(svc.inbox / "slow.jpg", "wb") as f:  # written in place, in pieces: read only once complete
        data = photo.read_bytes()
        for i in range(0, len(data), len(data) // 4 + 1):
            f.write(data[i:i + len(data) // 4 + 1])
            f.flush()
            time.sleep(SETTLE / 3)
    expect = len(names) + 4
    wait_for(lambda: status(svc)["seq"] >= expect, what="every file recorded")

    first = svc.deploy_json("collect", "board1")["boards"][0]
    assert first["ok"] and first["records"] == expect and first["first"] == 1, first
    records = collected(svc)
    assert [r["seq"] for r in records] == list(range(1, expect + 1))
    by_name = {r["image"]: r for r in records}
    assert sorted(by_name) == sorted([*names, "corrupt.jpg", "empty.png", "notes.txt", "slow.jpg"])
    for n in [*names, "slow.jpg"]:  # the slow file was read whole: the espresso like the others
        assert by_name[n]["ok"] and by_name[n]["topk"][0][0] in ESPRESSO, by_name[n]
    for n in ("corrupt.jpg", "empty.png", "notes.txt"):
        assert not by_name[n]["ok"] and by_name[n]["kind"] == "decode", by_name[n]
    assert not (svc.root / "pwned").exists() and not (svc.home / "pwned").exists()
    assert sorted(os.listdir(svc.inbox / "done")) == sorted(by_name)  # policy move
    assert (svc.inbox / ".still-writing.jpg").exists()

    again = svc.deploy_json("collect", "board1")["boards"][0]
    assert again["records"] == 0 and again["last"] == expect
    info = status(svc)
    assert info["acked"] == expect and info["failed"] >= 3 and info["ok"] >= 4 and info["waiting"] == 0
    assert info["method"] == "cron" and info["watch"] == "inotify" and info["policy"] == "move"
    assert 0 < info["disk_used"] < info["max_disk"] == 64 << 20
    assert "service: idle (cron)" in svc.deploy("status", "board1").stdout


def test_an_interrupted_collect_resumes_without_duplicates(svc):
    photo = svc.images / "chelsea.jpg"
    for i in range(5):
        drop(svc.inbox, photo, f"cat-{i}.jpg")
    wait_for(lambda: status(svc)["seq"] >= collected(svc)[-1]["seq"] + 5, what="5 more records")
    svc.deploy("collect", "board1")
    local = svc.root / "outputs" / "board1" / "service" / "journal.jsonl"
    whole = local.read_bytes()
    lines = whole.splitlines(keepends=True)
    local.write_bytes(b"".join(lines[:-3]) + lines[-3][:17])  # as if the host died mid-append
    row = svc.deploy_json("collect", "board1")["boards"][0]
    assert row["records"] == 3, row
    assert local.read_bytes() == whole


def test_a_killed_agent_is_back_within_seconds_and_nothing_is_lost_or_doubled(svc):
    before = status(svc)
    photo = svc.images / "rocket.jpg"
    for i in range(20):
        drop(svc.inbox, photo, f"rocket-{i:02d}.jpg")
    wait_for(lambda: status(svc)["seq"] > before["seq"], what="the first of the batch")
    os.kill(before["agent_pid"], signal.SIGKILL)  # mid-chunk: some claimed images have no record yet
    t0 = time.monotonic()
    after = wait_for(lambda: (lambda s: up(s) and s["agent_pid"] != before["agent_pid"] and s)(status(svc)),
                     what="a new agent")
    assert time.monotonic() - t0 < 10, "the supervisor took too long"
    assert after["restarts"] > before["restarts"] and after["supervisor_pid"] == before["supervisor_pid"]
    wait_for(lambda: status(svc)["seq"] >= before["seq"] + 20, what="every rocket recorded")
    svc.deploy("collect", "board1")
    counts = Counter(r["image"] for r in collected(svc))
    assert all(counts[f"rocket-{i:02d}.jpg"] == 1 for i in range(20)), counts
    assert [r["seq"] for r in collected(svc)] == list(range(1, len(collected(svc)) + 1))


def test_after_a_simulated_reboot_the_crontab_entry_brings_the_service_back(svc):
    before = status(svc)
    crontab = (svc.home / ".sandbox" / "crontab").read_text()
    assert "@reboot" in crontab and "supervisor.py" in crontab and "# atlas-deploy service classify" in crontab
    reboot = svc.deploy_json("sandbox", "reboot", "board1")[0]
    assert {before["agent_pid"], before["supervisor_pid"]} <= set(reboot["killed"])
    assert not pid_alive(before["agent_pid"]) and not pid_alive(before["supervisor_pid"])
    assert len(reboot["started"]) == 1
    after = wait_for(lambda: (lambda s: up(s) and s)(status(svc)), what="the service after the reboot")
    assert after["supervisor_pid"] not in (None, before["supervisor_pid"])
    drop(svc.inbox, svc.images / "coffee.jpg", "after-reboot.jpg")
    wait_for(lambda: status(svc)["seq"] == before["seq"] + 1, what="the image after the reboot")


def test_push_moves_the_running_service_to_the_new_release(svc):
    old = status(svc)["release"]
    svc.configure(topk=3)  # a new app.json: a new release
    row = svc.deploy_json("push", "board1")["boards"][0]
    assert row["switched"] and row["health"]["status"] == "passed"
    assert row["service"] == {"moved": True, "release": row["release"], "state": row["service"]["state"],
                              "supervisor": "running"}, row["service"]
    assert row["release"] != old
    seq = status(svc)["seq"]
    drop(svc.inbox, svc.images / "coffee.jpg", "new-release.jpg")
    wait_for(lambda: status(svc)["seq"] > seq, what="a record in the new release")
    svc.deploy("collect", "board1")
    last = collected(svc)[-1]
    assert last["image"] == "new-release.jpg" and last["release"] == row["release"] and len(last["topk"]) == 3


def test_logs_follow_and_stop(svc):
    logs = svc.deploy("service", "logs", "board1", "-n", "5").stdout
    assert 0 < len(logs.splitlines()) <= 5 and "agent" in logs
    follow = svc.start("service", "logs", "board1", "-n", "0", "-f")
    try:
        time.sleep(2.0)  # the follow is set up; then the stop below writes to the log
        info = status(svc)
        row = svc.deploy_json("service", "stop", "board1")["boards"][0]
        time.sleep(1.0)
    finally:
        follow.terminate()
    followed = follow.communicate(timeout=10)[0]
    assert "agent service ended (stopped)" in followed, followed
    assert row["ok"] and not row["service"]["enabled"] and row["service"]["agent_pid"] is None
    assert not pid_alive(info["agent_pid"]) and not pid_alive(info["supervisor_pid"])
    assert "@reboot" not in (svc.home / ".sandbox" / "crontab").read_text()
    assert "service: stopped" in svc.deploy("service", "status", "board1").stdout
    drop(svc.inbox, svc.images / "coffee.jpg", "while-stopped.jpg")
    time.sleep(1.0)
    assert (svc.inbox / "while-stopped.jpg").exists()  # nothing takes it
    assert svc.deploy_json("service", "start", "board1")["boards"][0]["ok"]  # and it goes on from there
    wait_for(lambda: not (svc.inbox / "while-stopped.jpg").exists(), what="the image taken after the restart")


def test_mistakes_are_one_line(svc):
    svc.configure(app="other-app")  # nothing deployed under this name
    try:
        r = svc.deploy("service", "start", "board1", check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "nothing deployed for this app yet: run `deploy push` first" in lines[0], lines
        r = svc.deploy("service", "stop", "board1", check=False)
        assert r.returncode == 1 and "no service of other-app on this board" in r.stderr and "Traceback" not in r.stderr
        assert "service: none" in svc.deploy("service", "status", "board1").stdout
    finally:
        svc.configure()
