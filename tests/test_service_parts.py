"""The service's parts without a board: the journal and the collect op on a temporary directory, the host's
resumable copy, the agent's service loop in-process (real onnx backend: disk budget, keep policy, recovery
after a crash between record and disposal), and the supervisor's crash loop."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import journal as journal_mod
from agent import runner
from agent.inbox import Inbox
from agent.runner import make_backend
from agent.service import Service, job_for
from deploy.board import main as board_main
from deploy.board import protocol
from deploy.board.wire import Wire
from deploy.models import DEMO_LABELS, DEMO_MODEL, DEMO_PREPROCESS
from deploy.ops import service as host
from deploy.testing import ESPRESSO, REPO, pid_alive
from deploy.testing import wait_for as _wait_for

wait_for = functools.partial(_wait_for, timeout=20.0)

# ---------------------------------------------------------------- journal and collect


def fill(svc: Path, n: int, rotate: int) -> journal_mod.Journal:
    j = journal_mod.Journal(str(svc), rotate).open()
    for i in range(n):
        j.append({"image": f"img-{i}.jpg", "claim": i + 1, "ok": True})
        if i % 10 == 9:
            j.rotate_if()  # between chunks of 10
    j.sync()
    return j


def collect_op(home: Path, after: int, ack: int | None = None) -> tuple[protocol.CollectHead, bytes, protocol.CollectDone]:
    """Drive the board's collect op as the host does: request, head, bytes, ack, done."""
    req = json.dumps(protocol.CollectRequest(app="app", after=after).to_json()).encode() + b"\n"
    out = io.BytesIO()
    head_len = {}

    class Stdin(io.BytesIO):  # the ack line is written once the head told how many bytes follow
        def readline(self, *a):
            line = super().readline(*a)
            if line or "ack" in head_len:
                return line
            head = json.loads(out.getvalue().split(b"\n", 1)[0])
            head_len["ack"] = True
            return json.dumps({"seq": head["last"] if ack is None else ack}).encode() + b"\n"

    assert board_main.run("collect", Wire(Stdin(req), out, str(home))) == 0
    raw = out.getvalue()
    first, rest = raw.split(b"\n", 1)
    head = protocol.decode(protocol.CollectHead, json.loads(first))
    data, done = rest[: head.bytes], rest[head.bytes:]
    return head, data, protocol.decode(protocol.CollectDone, json.loads(done))


def test_collect_sends_what_follows_the_hosts_seq_and_the_ack_removes_only_whole_old_segments(tmp_path):
    svc = tmp_path / "HIAI_PROJECTS" / "app" / "service"
    fill(svc, 35, rotate=200).close()  # ~100-byte records: a new segment every chunk of 10
    segs = journal_mod.segments(str(svc / "journal"))
    assert [s for s, _ in segs] == [1, 11, 21, 31]
    head, data, done = collect_op(tmp_path, after=14, ack=24)
    assert (head.first, head.last, head.oldest) == (15, 35, 1)
    assert [json.loads(x)["seq"] for x in data.splitlines()] == list(range(15, 36))
    assert done.acked == 24 and done.removed == ["000000000001.jsonl", "000000000011.jsonl"]  # 21..30 is not all acked
    head, data, done = collect_op(tmp_path, after=35)
    assert head.last == 35 and data == b"" and done.acked == 35
    assert done.removed == ["000000000021.jsonl"]  # never the open segment (31..)
    j = journal_mod.Journal(str(svc), 200).open()  # sequence numbers go on after a restart
    assert j.append({"image": "next.jpg", "claim": 99}) == 36 and j.max_claim == 99


def test_a_torn_journal_tail_is_cut_and_the_host_copy_resumes(tmp_path):
    svc = tmp_path / "svc"
    j = fill(svc, 3, rotate=1 << 20)
    j.close()
    path = journal_mod.segments(str(svc / "journal"))[-1][1]
    with open(path, "ab") as f:
        f.write(b'{"seq":4,"ima')  # killed mid-write
    assert journal_mod.Journal(str(svc)).open().append({"image": "x", "claim": 4}) == 4
    assert [json.loads(x)["seq"] for x in Path(path).read_text().splitlines()] == [1, 2, 3, 4]

    local = tmp_path / "journal.jsonl"
    local.write_bytes(b'{"seq":1}\n{"seq":2}\n{"seq":3')
    assert host.last_local_seq(local) == 2 and local.read_bytes() == b'{"seq":1}\n{"seq":2}\n'
    assert host.last_local_seq(tmp_path / "none.jsonl") == 0
    head = protocol.CollectHead(first=3, last=4, bytes=20)
    host._check_records("b", b'{"seq":3}\n{"seq":4}\n', head)
    with pytest.raises(host.ServiceError, match="records 3..5"):
        host._check_records("b", b'{"seq":3}\n{"seq":5}\n', head)
    with pytest.raises(host.ServiceError, match="whole records"):
        host._check_records("b", b'{"seq":3}\n{"seq":4}', head)


# ---------------------------------------------------------------- the agent's loop, in-process


@pytest.fixture(scope="module")
def stages(demo, tmp_path_factory):
    """A release directory whose app.json is the demo's, with the backend loaded once for the module."""
    rel = tmp_path_factory.mktemp("release")
    (rel / "app.json").write_text(json.dumps({
        "model": str(demo / DEMO_MODEL), "backend": "onnx", "preprocess": DEMO_PREPROCESS,
        "labels": str(demo / DEMO_LABELS), "topk": 3, "batch": 1}))
    job = job_for(str(rel), str(rel))
    backend = make_backend(job)
    backend.load(job.path(job.model))
    yield rel, backend, runner.stages(job, backend)
    backend.close()


class Running:
    """Service.run in a thread, stopped and joined on exit."""

    def __init__(self, stages, tmp: Path, **cfg):
        rel, self.backend, self.stages = stages
        self.dir = tmp / "svc"
        self.inbox = tmp / "inbox"
        config = {"service_dir": str(self.dir), "inbox": str(self.inbox), "policy": "move", "settle": 0.2,
                  "max_disk": 1 << 30, "rotate": 1 << 20, "log_max": 1 << 20, "chunk": 8}
        config.update(cfg)
        os.makedirs(self.dir, exist_ok=True)
        self.svc = Service(config, str(rel))
        self.code = None

    def __enter__(self):
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        wait_for(lambda: self.svc.state != "starting")  # the inbox is there
        return self

    def _run(self):
        self.code = self.svc.run(self.backend, self.stages, 1, 0)

    def __exit__(self, *exc):
        self.svc.stop.set()
        self.thread.join(30)

    def records(self):
        return [json.loads(x) for _, p in journal_mod.segments(str(self.dir / "journal"))
                for x in Path(p).read_text().splitlines()]


def test_at_the_disk_budget_nothing_new_is_taken_and_no_record_is_deleted(stages, tmp_path, demo):
    with Running(stages, tmp_path, max_disk=1 << 20) as r:
        wait_for(lambda: r.svc.state == "idle")
        (r.inbox / "big.bin").write_bytes(os.urandom(1 << 20))  # moved to done/: the budget is used up
        wait_for(lambda: len(r.records()) == 1)
        wait_for(lambda: r.svc.state == "disk-full")
        os.rename(_copy(demo / "images" / "coffee.jpg", tmp_path / "c.jpg"), r.inbox / "coffee.jpg")
        wait_for(lambda: r.svc.inbox.waiting == 1)  # seen, and left alone
        time.sleep(0.5)
        assert (r.inbox / "coffee.jpg").exists() and len(r.records()) == 1
        assert "max_disk" in r.svc.reason and r.svc.state == "disk-full"
        os.unlink(r.inbox / "done" / "big.bin")  # space freed (as a collect frees journal space)
        wait_for(lambda: len(r.records()) == 2)
        assert r.records()[1]["topk"][0][0] in ESPRESSO


def test_keep_leaves_images_in_place_and_never_takes_them_twice_even_after_a_restart(stages, tmp_path, demo):
    with Running(stages, tmp_path, policy="keep") as r:
        os.rename(_copy(demo / "images" / "coffee.jpg", tmp_path / "c.jpg"), r.inbox / "coffee.jpg")
        wait_for(lambda: len(r.records()) == 1)
        time.sleep(0.6)  # several scans
    assert (r.inbox / "coffee.jpg").exists() and len(r.records()) == 1
    with Running(stages, tmp_path, policy="keep") as r2:
        os.rename(_copy(demo / "images" / "rocket.jpg", tmp_path / "r.jpg"), r2.inbox / "rocket.jpg")
        wait_for(lambda: len(r2.records()) == 2)
        time.sleep(0.6)
    assert [x["image"] for x in r2.records()] == ["coffee.jpg", "rocket.jpg"]
    assert not [n for n in os.listdir(r2.inbox / ".work") if "~" in n]  # no claim left behind


def test_a_claim_recorded_before_a_crash_is_disposed_of_not_classified_again(stages, tmp_path, demo):
    inbox = Inbox(str(tmp_path / "inbox"), "delete", 0.2).open()
    os.rename(_copy(demo / "images" / "coffee.jpg", tmp_path / "c.jpg"), tmp_path / "inbox" / "a.jpg")
    os.rename(_copy(demo / "images" / "coffee.jpg", tmp_path / "d.jpg"), tmp_path / "inbox" / "b.jpg")
    a, b = inbox.claim("a.jpg"), inbox.claim("b.jpg")
    assert b.claim == a.claim + 1 and os.path.exists(b.path)
    inbox.close()
    j = journal_mod.Journal(str(tmp_path / "svc")).open()
    j.append({"image": "a.jpg", "claim": a.claim, "ok": True})  # a's record made it, then the crash
    j.close()
    with Running(stages, tmp_path, policy="delete") as r:
        wait_for(lambda: len(r.records()) == 2)
    assert [(x["seq"], x["image"]) for x in r.records()] == [(1, "a.jpg"), (2, "b.jpg")]
    assert not [n for n in os.listdir(tmp_path / "inbox" / ".work") if "~" in n]
    assert not (tmp_path / "inbox" / "a.jpg").exists()
    again = Inbox(str(tmp_path / "inbox"), "delete", 0.2).open()  # claim ids are never reused after a restart
    (tmp_path / "inbox" / "c.jpg").write_bytes(b"x")
    assert again.claim("c.jpg").claim > b.claim


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


# ---------------------------------------------------------------- the supervisor


def test_the_supervisor_backs_off_then_reports_a_crash_loop_and_stops_on_request(tmp_path):
    app = tmp_path / "app"
    rel = app / "releases" / "r1"
    rel.mkdir(parents=True)
    (rel / "agent").symlink_to(REPO / "agent")
    (rel / "app.json").write_text("{not json")  # every start fails at once
    (app / "current").symlink_to("releases/r1")
    svc = app / "service"
    svc.mkdir()
    (svc / "config.json").write_text(json.dumps({
        "inbox": str(tmp_path / "inbox"), "python": sys.executable, "backoff": [0.2], "loop_crashes": 3,
        "loop_window": 5, "loop_backoff": 0.5}))
    script = REPO / "deploy" / "board" / "supervisor.py"
    proc = subprocess.Popen([sys.executable, str(script), str(svc)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def state():
            try:
                return json.loads((svc / "supervisor.json").read_text())
            except (OSError, ValueError):
                return {}
        wait_for(lambda: state().get("state") == "crash-loop", timeout=30)
        s = state()
        assert s["crashes"] >= 3 and s["last_exit"] == 1 and s["restarts"] >= 3
        assert "cannot read" in (svc / "agent.log").read_text()
        second = subprocess.run([sys.executable, str(script), str(svc)], timeout=10)  # one supervisor per service
        assert second.returncode == 0 and pid_alive(proc.pid)
        (svc / "stop").write_text("stop")
        assert proc.wait(15) == 0 and state()["state"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_file_removed_between_listing_and_claiming_is_skipped(tmp_path):
    inbox = Inbox(str(tmp_path / "inbox"), "move", 0.0).open()
    for n in ("gone.jpg", "here.jpg"):
        (tmp_path / "inbox" / n).write_bytes(b"x")
    inbox.ready(10)  # first sight of in-place files
    names = inbox.ready(10)
    assert sorted(names) == ["gone.jpg", "here.jpg"]
    os.unlink(tmp_path / "inbox" / "gone.jpg")
    assert inbox.claim("gone.jpg") is None and inbox.claim("here.jpg").name == "here.jpg"


def test_a_journal_that_cannot_grow_is_a_clear_state_and_loses_nothing(stages, tmp_path, demo):
    """The journal's filesystem full (here: a file-size limit, EFBIG): the agent keeps running in state
    disk-full, the journal holds only whole records, and after a restart with room every image has one."""
    import resource
    import signal as sig

    rel = stages[0]
    svc, inbox = tmp_path / "svc", tmp_path / "inbox"
    svc.mkdir()
    (svc / "config.json").write_text(json.dumps({"inbox": str(inbox), "policy": "delete", "settle": 0.2}))
    inbox.mkdir()
    for i in range(12):
        _copy(demo / "images" / "coffee.jpg", inbox / f"img-{i:02d}.jpg")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "agent", "service", "--config", str(svc / "config.json"), "--release", str(rel)]

    def limited():
        sig.signal(sig.SIGXFSZ, sig.SIG_IGN)  # write(2) then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (1200, 1200))  # about 5 records

    proc = subprocess.Popen(argv, env=env, preexec_fn=limited, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def status():
            return json.loads((svc / "status.json").read_text()) if (svc / "status.json").exists() else {}

        wait_for(lambda: status().get("state") == "disk-full" and "journal" in status().get("reason", ""), timeout=60)
        time.sleep(1.5)
        assert proc.poll() is None  # still running
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    lines = [x for _, p in journal_mod.segments(str(svc / "journal")) for x in Path(p).read_bytes().splitlines(keepends=True)]
    assert lines and all(x.endswith(b"\n") for x in lines) and len(lines) < 12
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len([1 for _, p in journal_mod.segments(str(svc / "journal"))
                              for _ in Path(p).read_bytes().splitlines()]) >= 12, timeout=60)
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
    recs = [json.loads(x) for _, p in journal_mod.segments(str(svc / "journal")) for x in Path(p).read_text().splitlines()]
    assert sorted(r["image"] for r in recs) == [f"img-{i:02d}.jpg" for i in range(12)]
    assert [r["seq"] for r in recs] == list(range(1, 13)) and all(r["ok"] for r in recs)


def test_with_one_backend_stream_a_pass_ends_when_the_inbox_is_empty_and_nothing_waits(stages, tmp_path, demo):
    """The queue-mode pipeline (one stream, as the acl backend's): the feed does not block inside a pass, so an
    image arriving alone is classified without waiting for a next one."""
    rel = stages[0]
    job = job_for(str(rel), str(rel))
    one = make_backend(job, threads=2)  # one stream of 2 intra-op threads
    one.load(job.path(job.model))
    try:
        assert one.streams == 1
        r = Running((rel, one, runner.stages(job, one)), tmp_path)
        with r:
            for i in range(3):
                os.rename(_copy(demo / "images" / "rocket.jpg", tmp_path / "x.jpg"), r.inbox / f"r{i}.jpg")
                wait_for(lambda n=i: len(r.records()) == n + 1, timeout=10)  # each alone, none waits for the next
        assert [x["image"] for x in r.records()] == ["r0.jpg", "r1.jpg", "r2.jpg"]
    finally:
        one.close()


def test_app_service_in_the_inventory(tmp_path):
    from deploy.errors import InventoryError
    from deploy.inventory import Service as ServiceSettings
    from deploy.inventory import parse

    def inv(service: str):
        text = ("app:\n  name: classify\n  models: {onnx: m.onnx}\n" + service +
                "boards:\n  board1: {sandbox: true, target: x86_64-cpu}\n")
        return parse(text, tmp_path / "inventory.yaml")

    assert inv("").app.service == ServiceSettings()
    s = inv("  service: {inbox: ~/in, policy: keep, max_disk: 2GB, settle: 0.5, rotate: 1MiB, log_max: 64k}\n").app.service
    assert (s.inbox, s.policy, s.max_disk, s.settle, s.rotate, s.log_max) == ("~/in", "keep", 2 << 30, 0.5, 1 << 20, 64 << 10)
    with pytest.raises(InventoryError, match=r"inventory.yaml:5: app.service.policy: must be one of keep, move, delete"):
        inv("  service:\n    policy: archive\n")
    with pytest.raises(InventoryError, match=r"app.service.max_disk: must be a size of at least 1048576 bytes"):
        inv("  service: {max_disk: lots}\n")
    with pytest.raises(InventoryError, match=r"app.service.when: unknown field"):
        inv("  service: {when: always}\n")
