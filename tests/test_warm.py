"""Warm connections (``deploy/link/warm.py``, ``master.py``) on a real sandbox board: a command leaves the
board's verified connection with the project's master, the next command's channels run on it (one SSH login
for several commands, in the board's own sshd log), the results are the same, and nothing of it weakens a
guarantee: a private socket in a private folder (refused otherwise), a changed host key still refused, a dead
master or a stale socket replaced without a word, ``--no-persist``/``persist: 0`` leave nothing behind,
``deploy connections --close`` and ``sandbox down`` end it.

Every test gets its own socket folder (``XDG_RUNTIME_DIR``), so the masters it sees are its own; they end
by themselves (their board's connection closed) and are waited for by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from deploy.testing import Project, wait_for, wait_gone


@pytest.fixture
def proj(tmp_path, demo):
    p = Project(tmp_path / "proj", demo)
    run = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))  # short: a socket path has at most 108 bytes
    p.environ = {**p.environ, "XDG_RUNTIME_DIR": str(run)}
    p.environ.pop("ATLAS_DEPLOY_PERSIST", None)
    p.up()
    yield p
    pid = master_pid(p)
    assert p.down()
    if pid:
        assert wait_gone([pid], 15), "the master outlived its boards"
    shutil.rmtree(run)


def socket_dir(p: Project) -> Path:
    return Path(p.environ["XDG_RUNTIME_DIR"]) / "atlas-deploy"


def master_pid(p: Project) -> int | None:
    return p.deploy_json("connections").get("pid")


def wait_master(p: Project, boards: int = 1, timeout: float = 15.0) -> dict:
    """The master's info once it holds ``boards`` live connections (it starts as the first command exits)."""
    return wait_for(lambda: (lambda info: info if len([b for b in info.get("boards", []) if b["alive"]]) >= boards
                             else None)(p.deploy_json("connections")),
                    timeout, f"a master with {boards} board(s)", every=0.1)


def logins(p: Project, board: str = "board1") -> int:
    """Accepted logins in the board's sshd log."""
    return (Path(p.status(board)["dir"]) / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def test_the_next_command_runs_on_the_warm_connection(proj):
    cold = proj.deploy_json("status", "board1")
    info = wait_master(proj)
    assert info["boards"][0]["board"] == "board1" and info["boards"][0]["persist_s"] == 60
    before = logins(proj)
    rows = [proj.deploy_json("status", "board1") for _ in range(3)]
    proj.deploy("push", "board1", "--no-health-check")  # bulk bytes up through the master
    proj.deploy("run", "board1", "-q")
    out = proj.root / "outputs"
    proj.deploy("pull", "board1")  # bulk bytes down
    ex = json.loads(proj.deploy("exec", "board1", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                                check=False).stdout)
    assert logins(proj) == before, "a warm command logged in again"
    assert [r["boards"][0]["board"] for r in rows] == ["board1"] * 3
    same = lambda row: {k: v for k, v in row["boards"][0]["facts"].items() if k != "free_bytes"}  # noqa: E731
    assert same(rows[0]) == same(cold)
    assert any(out.glob("board1/*/results.jsonl"))
    assert ex["boards"][0]["exit_code"] == 3 and ex["boards"][0]["stdout"] == "out\n" and ex["boards"][0]["stderr"] == "err\n"
    # the socket: 0600, in a 0700 folder of this user's
    d = socket_dir(proj)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == os.getuid()
    socks = [p for p in d.iterdir() if p.name.endswith(".sock")]
    assert len(socks) == 1 and stat.S_IMODE(socks[0].lstat().st_mode) & 0o077 == 0


def test_no_persist_and_persist_zero_leave_nothing(proj):
    proj.deploy("status", "board1", "--no-persist")
    time.sleep(1.0)
    assert proj.deploy_json("connections") == {"pid": None, "boards": []}
    text = proj.inventory.read_text().replace("board1: {sandbox: true", "board1: {sandbox: true, persist: 0")
    assert "persist: 0" in text
    proj.inventory.write_text(text)
    proj.deploy("status", "board1")
    time.sleep(1.0)
    assert proj.deploy_json("connections") == {"pid": None, "boards": []}
    bad = text.replace("persist: 0", "persist: forever")
    proj.inventory.write_text(bad)
    r = proj.deploy("status", "board1", check=False)
    proj.inventory.write_text(text)
    assert r.returncode == 2 and "boards.board1.persist: must be an integer 0-86400" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_folder_others_can_enter_is_refused(proj):
    d = socket_dir(proj)
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    r = proj.deploy("status", "board1")  # the command itself works, directly
    assert "not a private directory" in r.stderr and "refusing warm connections" in r.stderr
    time.sleep(1.0)
    assert not list(d.iterdir())  # no socket was made there
    os.chmod(d, 0o700)
    proj.deploy("status", "board1")
    wait_master(proj)


def test_a_dead_master_or_a_stale_socket_is_replaced_silently(proj):
    proj.deploy("status", "board1")
    pid = wait_master(proj)["pid"]
    os.kill(pid, 9)  # the master this test's command started, by its PID
    assert wait_gone([pid], 10)
    sock = next(socket_dir(proj).glob("*.sock"))
    assert sock.exists()  # left behind by the killed master: stale
    r = proj.deploy("status", "board1")
    assert r.stderr.strip() == ""
    info = wait_master(proj)
    assert info["pid"] != pid


def test_a_changed_host_key_is_refused_even_with_a_warm_connection(proj):
    proj.deploy("status", "board1")
    wait_master(proj)
    kh = proj.root / ".deploy" / "known_hosts"
    good = kh.read_text()
    other = Path(proj.status()["dir"]).parent / "other_key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    forged = "\n".join(
        " ".join([ln.split()[0], *Path(f"{other}.pub").read_text().split()[:2]]) if ln.strip() else ln
        for ln in good.splitlines()) + "\n"
    try:
        kh.write_text(forged)
        r = proj.deploy("status", "board1", check=False)
        assert r.returncode == 3 and "does NOT match" in r.stderr, r.stderr
    finally:
        kh.write_text(good)
    proj.deploy("status", "board1")


def test_connections_close_ends_the_master(proj):
    proj.deploy("status", "board1")
    info = wait_master(proj)
    shown = proj.deploy("connections")
    assert "board1" in shown.stdout and str(info["pid"]) in shown.stdout
    assert proj.deploy_json("connections", "--close")["closed"]
    assert wait_gone([info["pid"]], 10)
    assert proj.deploy_json("connections") == {"pid": None, "boards": []}
    assert json.loads(proj.deploy("status", "board1", "--json").stdout)["boards"][0]["ok"]


def board_standbys(p: Project) -> list[int]:
    """PIDs of the board user's standby interpreters (boot.py's op "-")."""
    from deploy.link import remote

    digest, _ = remote.code_archive()
    user = p.status()["user"]
    found = []
    for d in Path("/proc").iterdir():
        try:
            words = (d / "cmdline").read_bytes().split(b"\0")
            if d.name.isdigit() and digest.encode() in words and b"-" in words and d.owner() == user:
                found.append(int(d.name))
        except (OSError, KeyError):
            continue
    return found


def test_board_ops_find_their_interpreter_already_started(proj):
    proj.deploy("status", "board1")
    wait_master(proj)
    proj.deploy("status", "board1")  # its op ran on a fresh interpreter and left the next one waiting
    deadline = time.monotonic() + 10
    while not board_standbys(proj) and time.monotonic() < deadline:
        time.sleep(0.1)
    waiting = board_standbys(proj)
    assert len(waiting) == 1
    row = proj.deploy_json("status", "board1")["boards"][0]  # served by that one
    assert row["ok"]
    assert wait_gone(waiting, 10)  # it ran the op and ended; a new one waits instead
    proj.deploy("push", "board1", "--no-health-check")  # env.sh changes: a standby started before is stale
    proj.deploy_json("status", "board1")
    assert proj.deploy_json("status", "board1")["boards"][0]["current"]
    pid = master_pid(proj)
    proj.deploy("connections", "--close")
    assert wait_gone([pid], 10)
    assert wait_gone(board_standbys(proj), 10)  # nothing of the master is left on the board
