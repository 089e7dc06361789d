"""The board-side operations (deploy/board/) driven on a temporary home, no board and no SSH.

Each test feeds an operation the bytes the host would send (request lines, tar streams) and
reads the typed replies it writes, exactly as the bootstrap wires them on a board.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from deploy.board import main as board_main
from deploy.board import protocol
from deploy.board.wire import Wire
from deploy.link import remote

APP = "classify"


def op(home: Path, name: str, request: protocol.Message, *, then: list = (), stream: bytes = b"") -> list[dict]:
    """Run one operation; returns every JSON line it wrote (bulk bytes after them are not parsed)."""
    lines = [json.dumps(request.to_json()).encode() + b"\n"]
    lines += [json.dumps(m.to_json()).encode() + b"\n" for m in then]
    stdout = io.BytesIO()
    code = board_main.run(name, Wire(io.BytesIO(b"".join(lines) + stream), stdout, str(home)))
    replies = [json.loads(line) for line in stdout.getvalue().splitlines() if line.startswith(b"{")]
    replies.append({"exit": code})
    return replies


def objects_stream(blobs: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for sha, data in blobs.items():
            info = tarfile.TarInfo(sha)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def release(files: dict[str, bytes]) -> tuple[str, list[list], dict[str, bytes]]:
    rows = [[path, len(data), hashlib.sha256(data).hexdigest(), 0o600 if path == "env.sh" else 0o644]
            for path, data in sorted(files.items())]
    rid = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]
    return rid, rows, {hashlib.sha256(d).hexdigest(): d for d in files.values()}


def push(home: Path, files: dict[str, bytes], *, keep: int = 5, bashrc: str | None = None, corrupt: bool = False):
    files = {"env.sh": b"export A=1\n", **files}  # a release carries its environment
    rid, rows, blobs = release(files)
    req = protocol.PushRequest(app=APP, release=rid, manifest=rows, keep=keep)
    plan = op(home, "push", req, then=[protocol.PushCommit(action="abort")])[0]
    state = protocol.decode(protocol.PushState, plan)
    send = {sha: blobs[sha] for sha in state.missing}
    if corrupt:
        send = {sha: data[::-1] + b"!" for sha, data in send.items()}
    commit = protocol.PushCommit(action="commit", bashrc=bashrc)
    replies = op(home, "push", req, then=[commit], stream=objects_stream(send) if send else b"")
    return rid, state, replies


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".bashrc").write_text("# user line\ncase $- in *i*) ;; *) return;; esac\n")
    return tmp_path


def app_dir(home: Path) -> Path:
    return home / "HIAI_PROJECTS" / APP


def test_push_sends_only_what_is_missing_and_switches_current(home):
    rid1, state1, replies = push(home, {"a.txt": b"alpha", "sub/b.txt": b"beta"})
    done = protocol.decode(protocol.PushDone, replies[1])
    assert state1.current is None and len(state1.missing) == 3 and state1.facts.python
    assert done.switched and done.release == rid1 and done.received_objects == 3
    assert os.readlink(app_dir(home) / "current") == f"releases/{rid1}"
    assert (app_dir(home) / "current" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (app_dir(home) / "env.sh").stat().st_mode & 0o777 == 0o600

    rid2, state2, replies = push(home, {"a.txt": b"alpha", "sub/b.txt": b"beta", "c.txt": b"gamma"})
    done = protocol.decode(protocol.PushDone, replies[1])
    assert state2.current == rid1 and state2.missing == [hashlib.sha256(b"gamma").hexdigest()]
    assert done.linked == 3 and done.previous == rid1
    same = app_dir(home) / "releases"
    assert (same / rid1 / "a.txt").stat().st_ino == (same / rid2 / "a.txt").stat().st_ino  # hard-linked


def test_a_corrupted_object_is_refused_and_nothing_switches(home):
    rid1, _, _ = push(home, {"a.txt": b"alpha"})
    rid2, _, replies = push(home, {"a.txt": b"alpha", "big.bin": b"x" * 5000}, corrupt=True)
    assert "arrived corrupted" in replies[1]["error"] and replies[-1]["exit"] == 1
    assert os.readlink(app_dir(home) / "current") == f"releases/{rid1}"
    assert not [p.name for p in (app_dir(home) / "releases").iterdir() if p.name.startswith(".staging-")]
    _, state, replies = push(home, {"a.txt": b"alpha", "big.bin": b"x" * 5000})
    assert protocol.decode(protocol.PushDone, replies[1]).switched
    assert not [p for p in (app_dir(home) / "releases").iterdir() if p.name.startswith(".staging-")]


def test_bashrc_is_replaced_only_with_a_backup_and_a_managed_block(home):
    new = "# >>> block >>>\n. env.sh\n# <<< block <<<\n" + (home / ".bashrc").read_text()
    push(home, {"a.txt": b"alpha"}, bashrc=new)
    assert (home / ".bashrc").read_text() == new
    assert (home / ".bashrc.deploy-backup").read_text().startswith("# user line")


def test_rollback_prune_and_releases(home):
    made = [push(home, {"v.txt": str(i).encode()}, keep=2)[0] for i in range(3)]
    listing = protocol.decode(protocol.ReleasesReply, op(home, "releases", protocol.AppRequest(app=APP))[0])
    assert [r.id for r in listing.releases] == made[1:] and listing.current == made[2]
    back = protocol.decode(protocol.RollbackReply, op(home, "rollback", protocol.RollbackRequest(app=APP))[0])
    assert (back.previous, back.current) == (made[2], made[1])
    bad = op(home, "rollback", protocol.RollbackRequest(app=APP, to="zzz"))
    assert "no single release matches 'zzz'" in bad[0]["error"]
    check = protocol.decode(protocol.VerifyReply, op(home, "verify", protocol.VerifyRequest(app=APP))[0])
    assert check.release == made[1] and check.bad == [] and check.files == 2


def test_status_and_pull_of_a_run_never_follow_links(home):
    push(home, {"a.txt": b"alpha"})
    run = app_dir(home) / "runs" / "r1"
    (run / "inputs").mkdir(parents=True)
    (run / "inputs" / "x.jpg").write_bytes(b"jpeg")
    (run / "results.jsonl").write_text('{"ok": true}\n')
    (run / "summary.json").write_text('{"ok": 1, "ips": 2.5}')
    (run / "job.json").write_text("{}")  # a run that started
    (run / "status").write_text("ok\n")
    (run / "secret").symlink_to("/etc/passwd")
    status = protocol.decode(protocol.StatusReply, op(home, "status", protocol.StatusRequest(app=APP, marker_begin="#"))[0])
    assert status.runs[0].id == "r1" and status.runs[0].summary["ips"] == 2.5 and status.env_sh
    stdout = io.BytesIO()
    req = json.dumps(protocol.PullRequest(app=APP, exclude=["inputs"]).to_json()).encode() + b"\n"
    assert board_main.run("pull", Wire(io.BytesIO(req), stdout, str(home))) == 0
    head, tar = stdout.getvalue().split(b"\n", 1)
    assert protocol.decode(protocol.PullHead, json.loads(head)).files == 4
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert sorted(tf.getnames()) == ["job.json", "results.jsonl", "status", "summary.json"]


def test_bad_requests_get_one_error_line(home):
    assert op(home, "nope", protocol.AppRequest(app=APP))[0] == {"error": "unknown operation 'nope'"}
    assert "invalid app name" in op(home, "status", protocol.StatusRequest(app="../etc"))[0]["error"]
    stdout = io.BytesIO()
    assert board_main.run("status", Wire(io.BytesIO(b"[1, 2]\n"), stdout, str(home))) == 1
    assert b"malformed StatusRequest" in stdout.getvalue()
    assert "nothing deployed" in op(home, "run", protocol.RunRequest(app=APP, run_id="r9"))[0]["error"]


def test_messages_round_trip_and_tolerate_other_versions():
    reply = protocol.StatusReply(facts=protocol.Facts(arch="aarch64", python="3.7.5"),
                                 releases=[protocol.ReleaseInfo(id="abc", current=True)])
    wire = json.loads(json.dumps(reply.to_json()))
    wire["from_a_newer_board"] = 1
    back = protocol.decode(protocol.StatusReply, wire)
    assert back == reply and back.facts.python_mm == "3.7" and back.releases[0].current
    first, second = protocol.decode(protocol.PushDone, {}), protocol.PushDone()
    first.pruned.append("x")
    assert second.pruned == [] and protocol.PushDone.pruned == []  # list defaults are per message
    with pytest.raises(TypeError):
        protocol.Facts(nonsense=1)


def boot(home: Path, header: bytes, request: protocol.Message, op_name: str = "status"):
    digest, _ = remote.code_archive()
    src = (Path(remote.BOARD_DIR) / "boot.py").read_text()
    body = header + json.dumps(request.to_json()).encode() + b"\n"
    r = subprocess.run([sys.executable, "-I", "-B", "-c", src, digest, op_name], input=body, capture_output=True,
                       env={"HOME": str(home), "PATH": os.environ["PATH"]}, timeout=60)
    return r.returncode, [json.loads(line) for line in r.stdout.splitlines()]


def test_bootstrap_installs_the_code_archive_once_and_verifies_it(home):
    digest, archive = remote.code_archive()
    req = protocol.StatusRequest(app=APP)
    assert boot(home, b"cached\n", req) == (0, [{"boot": "need-code"}])
    code, lines = boot(home, b"code %d\n" % len(archive) + archive, req)
    assert code == 0 and lines[0] == {"boot": "ok"} and lines[1]["facts"]["home"] == str(home)
    assert (home / ".cache" / "atlas-deploy" / "board" / digest / "deploy_board" / "main.py").is_file()
    code, lines = boot(home, b"cached\n", req)
    assert code == 0 and lines[0] == {"boot": "ok"} and "current" in lines[1]
    bad = bytearray(archive)
    bad[100] ^= 0xFF
    fresh = home / "other"
    fresh.mkdir()
    assert boot(fresh, b"code %d\n" % len(bad) + bytes(bad), req) == (1, [{"error": "board code archive arrived corrupted"}])


def standby(home: Path) -> subprocess.Popen:
    """boot.py as a warm connection's standby (op "-", app APP): it loads the code, then waits for its op."""
    digest, _ = remote.code_archive()
    src = (Path(remote.BOARD_DIR) / "boot.py").read_text()
    return subprocess.Popen([sys.executable, "-I", "-B", "-c", src, digest, "-", APP], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={"HOME": str(home), "PATH": os.environ["PATH"]})


def test_a_standby_takes_its_op_from_stdin_and_refuses_once_env_sh_changed(home):
    digest, archive = remote.code_archive()
    req = json.dumps(protocol.StatusRequest(app=APP).to_json()).encode() + b"\n"
    assert boot(home, b"code %d\n" % len(archive) + archive, protocol.StatusRequest(app=APP))[0] == 0
    env = home / "HIAI_PROJECTS" / APP / "env.sh"
    env.parent.mkdir(parents=True)
    env.write_text("export A=1\n")
    proc = standby(home)
    out, _ = proc.communicate(b"op status\ncached\n" + req, timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0 and lines[0] == {"boot": "ok"} and lines[1]["facts"]["home"] == str(home)
    proc = standby(home)
    time.sleep(1.0)  # it has sourced (here: stat'ed) env.sh and waits
    env.write_text("export A=2\n")  # a push changed the app's environment meanwhile
    out, _ = proc.communicate(b"op status\ncached\n" + req, timeout=60)
    assert [json.loads(line) for line in out.splitlines()] == [{"boot": "stale"}]
    proc = standby(home)
    out, _ = proc.communicate(b"", timeout=60)  # the master closed it unused
    assert proc.returncode == 0 and out == b""


def test_the_board_codes_bytecode_is_written_at_install_and_a_damaged_cache_is_sent_again(home):
    digest, archive = remote.code_archive()
    req = protocol.StatusRequest(app=APP)
    assert boot(home, b"code %d\n" % len(archive) + archive, req)[0] == 0
    cache = home / ".cache" / "atlas-deploy" / "board" / digest / "deploy_board" / "__pycache__"
    pycs = sorted(cache.glob("*.pyc"))
    assert len(pycs) == len(list(cache.parent.glob("*.py")))  # every module, written whole by boot.py
    main = next(p for p in pycs if p.name.startswith("main."))
    main.write_bytes(main.read_bytes()[:40])  # as CPython's writer leaves it with 32 KiB free
    assert boot(home, b"cached\n", req) == (0, [{"boot": "need-code"}])  # removed: the host sends it again
    code, lines = boot(home, b"code %d\n" % len(archive) + archive, req)
    assert code == 0 and lines[0] == {"boot": "ok"} and "current" in lines[1]
    assert sorted(p.name for p in cache.glob("*")) == [p.name for p in pycs]  # the op (-B) wrote none


def test_the_board_code_is_python37_stdlib_and_never_imports_the_host():
    for path in Path(remote.BOARD_DIR).glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+deploy(\.|\s|$)", text, re.M), path
        assert "paramiko" not in text and "rich" not in text, path


def test_env_sh_switches_with_current_and_an_older_boards_file_is_kept_by_its_releases(home):
    base = app_dir(home)
    rid1, _, _ = push(home, {"a.txt": b"alpha"})
    (base / "env.sh").unlink()
    (base / "releases" / rid1 / "env.sh").unlink()  # as an older version left it: no env.sh in the release ...
    (base / "env.sh").write_text("export OLD=1\n")  # ... and a file beside releases/
    rid2, _, _ = push(home, {"a.txt": b"alpha", "env.sh": b"export NEW=1\n"})
    assert os.readlink(base / "env.sh") == "current/env.sh" and (base / "env.sh").read_text() == "export NEW=1\n"
    assert (base / "releases" / rid1 / "env.sh").read_text() == "export OLD=1\n"  # the environment it ran with
    op(home, "rollback", protocol.RollbackRequest(app=APP))
    assert (base / "env.sh").read_text() == "export OLD=1\n"


def test_a_held_lock_names_its_holder(home):
    from deploy.board.files import Lock

    with Lock(str(app_dir(home)), "push"):
        reply = op(home, "rollback", protocol.RollbackRequest(app=APP))
    assert re.match(r"a push \(pid \d+\) since \d\d:\d\d:\d\d UTC, \d+s ago holds the lock on this app", reply[0]["error"])


def test_a_releases_bytecode_is_written_at_push_and_shared_with_the_next_release(home):
    import importlib.util

    from deploy.board.bytecode import ours

    rid1, _, _ = push(home, {"agent/x.py": b"X = 1\n", "agent/bad.py": b"print 'py2'\n"})
    rid2, _, _ = push(home, {"agent/x.py": b"X = 1\n", "agent/y.py": b"Y = 2\n"})
    rel = app_dir(home) / "releases"
    pyc1, pyc2 = (Path(importlib.util.cache_from_source(str(rel / r / "agent" / "x.py"))) for r in (rid1, rid2))
    assert ours(pyc1) and pyc1.stat().st_ino == pyc2.stat().st_ino  # unchanged source: its bytecode linked
    assert ours(importlib.util.cache_from_source(str(rel / rid2 / "agent" / "y.py")))
    assert not Path(importlib.util.cache_from_source(str(rel / rid1 / "agent" / "bad.py"))).exists()
    out = subprocess.run([sys.executable, "-B", "-c", "import x; print(x.X)"], cwd=rel / rid2 / "agent",
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.stdout.strip() == "1"


def test_a_release_waiting_for_its_health_check_is_never_pinned_by_a_service_start(home):
    files = {"env.sh": b"export A=1\n", "a.txt": b"alpha"}
    rid, rows, blobs = release(files)
    req = protocol.PushRequest(app=APP, release=rid, manifest=rows, health=True)
    op(home, "push", req, then=[protocol.PushCommit(action="commit")], stream=objects_stream(blobs))
    start = op(home, "service", protocol.ServiceRequest(app=APP, action="start", wait=0))
    assert f"release {rid} became current at" in start[0]["error"] and "no health-check verdict yet" in start[0]["error"]
    assert not (app_dir(home) / "service" / "release").exists()
    verdict = op(home, "health", protocol.HealthRequest(app=APP, release=rid))[0]
    assert verdict["status"] == "skipped" and not (app_dir(home) / ".checking").exists()  # the verdict clears it


def test_a_plan_request_may_carry_only_the_rows_that_differ_from_a_release_the_board_has(home):
    rid1, _, _ = push(home, {"a.txt": b"alpha", "b.txt": b"beta"})
    files = {"env.sh": b"export A=2\n", "a.txt": b"alpha", "c.txt": b"gamma"}
    rid2, rows, blobs = release(files)
    delta = {"base": rid1, "changed": [r for r in rows if r[0] in ("env.sh", "c.txt")], "removed": ["b.txt"]}
    state = op(home, "push", protocol.PushRequest(app=APP, release=rid2, **delta), then=[protocol.PushCommit()])[0]
    assert not state["need_manifest"] and sorted(state["missing"]) == sorted(
        hashlib.sha256(files[p]).hexdigest() for p in ("env.sh", "c.txt"))
    for wrong in ({**delta, "base": "0123456789ab"}, {**delta, "removed": []}):  # base gone; rows not the release's
        state = op(home, "push", protocol.PushRequest(app=APP, release=rid2, **wrong), then=[protocol.PushCommit()])[0]
        assert state["need_manifest"] and not state["missing"]


# ---------------------------------------------------------------- a held commit (a later rollout stage)


def exact_stream(blobs: dict[str, bytes]) -> bytes:
    """The object stream as the host's objstream writes it: members, then exactly two zero blocks."""
    out = b""
    for sha, data in blobs.items():
        info = tarfile.TarInfo(sha)
        info.size = len(data)
        out += info.tobuf(tarfile.GNU_FORMAT) + data + tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE)
    return out + tarfile.NUL * (2 * tarfile.BLOCKSIZE)


def held_push(home: Path, files: dict[str, bytes], go: list) -> tuple[str, list[dict]]:
    """A push whose commit holds: the object stream, then ``go`` (the second PushCommit lines, if any)."""
    rid, rows, blobs = release({"env.sh": b"export A=1\n", **files})
    req = protocol.PushRequest(app=APP, release=rid, manifest=rows)
    state = protocol.decode(protocol.PushState, op(home, "push", req, then=[protocol.PushCommit()])[0])
    lines = [json.dumps(m.to_json()).encode() + b"\n" for m in [req, protocol.PushCommit(action="commit", hold=5.0)]]
    after = b"".join(json.dumps(m.to_json()).encode() + b"\n" for m in go)
    stdin = b"".join(lines) + exact_stream({sha: blobs[sha] for sha in state.missing}) + after
    stdout = io.BytesIO()
    code = board_main.run("push", Wire(io.BytesIO(stdin), stdout, str(home)))
    return rid, [json.loads(ln) for ln in stdout.getvalue().splitlines()] + [{"exit": code}]


def test_a_held_commit_stages_then_switches_on_the_go_or_removes_the_release(home):
    rid1, _ = held_push(home, {"a.txt": b"alpha"}, [protocol.PushCommit(action="switch")])
    rels = app_dir(home) / "releases"
    assert os.readlink(app_dir(home) / "current") == f"releases/{rid1}"
    # abort: the staged release never appears under its id, nothing switched
    rid2, replies = held_push(home, {"a.txt": b"alpha", "b.txt": b"beta"}, [protocol.PushCommit(action="abort")])
    staged = protocol.decode(protocol.PushStaged, replies[1])
    assert staged.staged and staged.release == rid2 and staged.received_objects == 1 and staged.linked == 2
    assert protocol.decode(protocol.PushDone, replies[2]).aborted and replies[-1]["exit"] == 0
    assert os.readlink(app_dir(home) / "current") == f"releases/{rid1}"
    assert sorted(p.name for p in rels.iterdir()) == [rid1]
    # the host went away (end of stream) before the go: refused, removed, nothing switched
    _, replies = held_push(home, {"a.txt": b"alpha", "c.txt": b"gamma"}, [])
    assert replies[1]["staged"] and "no request received" in replies[2]["error"] and replies[-1]["exit"] == 1
    assert sorted(p.name for p in rels.iterdir()) == [rid1]
    # the go comes: the release is renamed into place and made current
    rid4, replies = held_push(home, {"a.txt": b"alpha", "d.txt": b"delta"}, [protocol.PushCommit(action="switch")])
    done = protocol.decode(protocol.PushDone, replies[2])
    assert done.switched and done.previous == rid1 and os.readlink(app_dir(home) / "current") == f"releases/{rid4}"
