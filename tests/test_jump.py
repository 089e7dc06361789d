"""Boards behind a jump host (inventory ``jump:``), on real sshd: board2 is reached only through board1.

Both are sandbox boards on loopback, so board2's sshd could be reached directly; the tests prove the
hop is used from /proc (the TCP connection to board2's sshd belongs to a process under board1's sshd,
none to us) and by stopping board1 (board2, still up, becomes unreachable). Host keys are checked on
the hop as on the board: an unknown or changed jump-host key is refused in one line, before board2
is contacted at all.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import inventory
from deploy.errors import HostKeyError
from deploy.link import ssh
from deploy.testing import CAT, SANDBOX_BOARD, Project, top1, wait_gone


@pytest.fixture(scope="module")
def lab(tmp_path_factory, demo):
    """board1, board2 behind board1, board3 behind board2 (two hops)."""
    proj = Project(tmp_path_factory.mktemp("jump"), demo, boards={
        "board1": dict(SANDBOX_BOARD),
        "board2": {**SANDBOX_BOARD, "jump": "board1"},
        "board3": {**SANDBOX_BOARD, "jump": "board2"},
    })  # fmt: skip
    for name in ("board1", "board2", "board3"):
        proj.up(name)
    yield proj
    assert proj.down()


def _tcp_connections() -> dict[int, tuple[int, int]]:
    """inode -> (local port, remote port) of every established loopback TCP connection (IPv4)."""
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        local, remote, state, inode = f[1], f[2], f[3], int(f[9])
        if state == "01":  # ESTABLISHED
            out[inode] = (int(local.split(":")[1], 16), int(remote.split(":")[1], 16))
    return out


def _holders(remote_port: int) -> set[int]:
    """PIDs holding a TCP connection to 127.0.0.1:remote_port."""
    inodes = {i for i, (_, r) in _tcp_connections().items() if r == remote_port}
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fds = list((d / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:  # closed meanwhile (our own listing's fd, for one)
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                pids.add(int(d.name))
    return pids


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
        chain.append(pid)
    return chain


def test_the_connection_to_board2_goes_through_board1(lab):
    b1, b2 = lab.status("board1"), lab.status("board2")
    inv = inventory.load(lab.inventory)
    ep = ssh.endpoint_for(inv, inv.boards["board2"])
    assert ep.route == "board2 via board1" and ep.jump.port == b1["port"]
    with ssh.Connection(ep) as conn:
        chan = conn.channel("echo hello")
        assert chan.makefile("rb").read() == b"hello\n" and chan.recv_exit_status() == 0
        holders = _holders(b2["port"])
        assert os.getpid() not in holders  # we hold no TCP connection to board2's sshd ...
        assert os.getpid() in _holders(b1["port"])  # ... only one to board1's
        assert holders and all(b1["pid"] in _ancestors(pid) for pid in holders), holders  # board1's sshd forwards


def test_the_sandbox_ssh_command_of_a_board_behind_a_jump_goes_through_it(lab):
    cmd = lab.status("board2")["ssh_command"]
    assert cmd.startswith("ssh -F ") and cmd.endswith(" board2")
    words = shlex.split(cmd)
    r = subprocess.run([*words[:-1], "-v", "-o", "BatchMode=yes", words[-1], "echo $SSH_CONNECTION"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[3] == str(lab.status("board2")["port"])  # board2's sshd answered ...
    assert "ProxyJump" in r.stderr and " board1" in r.stderr  # ... reached through board1, as the tool does


def test_push_run_pull_through_the_jump_host(lab, tmp_path):
    pushed = lab.deploy_json("push", "board2")["boards"][0]
    assert pushed["ok"] and pushed["switched"]
    home2 = Path(lab.status("board2")["home"])
    assert (home2 / "HIAI_PROJECTS" / "classify" / "current").is_symlink()
    assert not (Path(lab.status("board1")["home"]) / "HIAI_PROJECTS").exists()  # the hop got nothing
    run = lab.deploy_json("run", "board2", "-q")["boards"][0]
    assert run["ok"] and run["images_ok"] == 3
    pulled = lab.deploy_json("pull", "board2", "--run", run["run_id"], "--dest", str(tmp_path))["boards"][0]
    results = [json.loads(line) for line in (Path(pulled["path"]) / "results.jsonl").read_text().splitlines() if line]
    by_image = {r["image"].split("/")[-1]: r for r in results}
    assert top1(by_image["chelsea.jpg"]) in CAT


def test_two_hops(lab):
    st = lab.deploy_json("status", "board3")["boards"][0]
    assert st["ok"] and st["facts"]["python"].startswith("3.")


def test_a_stopped_jump_host_makes_the_board_behind_it_unreachable(lab):
    lab.deploy("sandbox", "down", "board1")
    try:
        assert lab.status("board2")["running"]
        r = lab.deploy("status", "board2", check=False)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
        assert len(lines) == 1 and "board2: jump host board1: sandbox board board1 is not running" in r.stderr
    finally:
        lab.up("board1")
    lab.deploy("status", "board2")


def _sshd_log_size(lab, board: str) -> int:
    return (Path(lab.status(board)["dir"]) / "sshd.log").stat().st_size


def _settled_log_sizes(lab, boards: tuple[str, ...]) -> dict[str, int]:
    """The boards' sshd log sizes once they stop growing: sshd logs an earlier test's disconnect a moment after
    the client has gone (seen under load: 53 bytes late on board1)."""
    sizes = {b: _sshd_log_size(lab, b) for b in boards}
    for _ in range(20):
        time.sleep(0.25)
        now = {b: _sshd_log_size(lab, b) for b in boards}
        if now == sizes:
            return now
        sizes = now
    return sizes


def test_unknown_and_changed_jump_host_keys_are_refused(lab):
    kh = lab.root / ".deploy" / "known_hosts"
    good = kh.read_text()
    hop = f"[127.0.0.1]:{lab.status('board1')['port']}"
    b2_log = _sshd_log_size(lab, "board2")
    try:
        kh.write_text("".join(ln + "\n" for ln in good.splitlines() if not ln.startswith(hop + " ")))
        r = lab.deploy("status", "board2", check=False)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 3 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"board2: jump host board1 ({hop}): unknown host key ssh-ed25519 SHA256:" in r.stderr
        assert "--accept-new-host-key" in r.stderr
        assert _sshd_log_size(lab, "board2") == b2_log  # board2 was never contacted

        other = "AAAAC3NzaC1lZDI1NTE5AAAAIKo3Hr3ZsZkLX7m8h3N9bqkRxHc1XfZ3sF9lq8XvRc6m"
        kh.write_text(kh.read_text() + f"{hop} ssh-ed25519 {other}\n")
        r = lab.deploy("status", "board2", "--accept-new-host-key", check=False)
        assert r.returncode == 3 and f"board2: jump host board1 ({hop}): host key" in r.stderr
        assert "does NOT match" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert _sshd_log_size(lab, "board2") == b2_log

        kh.write_text("".join(ln + "\n" for ln in good.splitlines() if not ln.startswith(hop + " ")))
        lab.deploy("status", "board2", "--accept-new-host-key")  # the user said so: recorded, then used
        assert f"{hop} ssh-ed25519 " in kh.read_text()
        lab.deploy("status", "board2")
    finally:
        kh.write_text(good)


def test_the_api_refuses_an_unknown_jump_host_key_too(lab, tmp_path):
    """Not only the CLI: a Connection never opens a hop it cannot verify (Fabric's hops auto-add)."""
    inv = inventory.load(lab.inventory)
    ep = ssh.endpoint_for(inv, inv.boards["board2"])
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ep = replace(ep, jump=replace(ep.jump, known_hosts=empty))
    with pytest.raises(HostKeyError, match=r"board2: jump host board1 .*unknown host key"):
        ssh.Connection(ep).open()
    assert empty.read_text() == ""


def test_a_jump_loop_is_one_line_and_touches_no_board(lab, tmp_path):
    text = lab.inventory.read_text().replace("jump: board1", "jump: board3")  # board2 -> board3 -> board2
    loop = tmp_path / "inventory.yaml"
    loop.write_text(text)
    pid = lab.deploy_json("connections").get("pid")  # the warm connections earlier tests left: closed first
    lab.deploy("connections", "--close")
    assert pid is None or wait_gone([pid], 10)
    before = _settled_log_sizes(lab, ("board1", "board2", "board3"))
    for args in (["status", "board1"], ["push", "all"]):
        r = subprocess.run([*lab.argv(*args)[:3], "-i", str(loop), *args], capture_output=True, text=True,
                           cwd=lab.root, env=lab.environ, timeout=60)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "boards.board2.jump: jump hosts loop back to board2 (board2 -> board3 -> board2)" in r.stderr
    assert {b: _sshd_log_size(lab, b) for b in ("board1", "board2", "board3")} == before


# ---------------------------------------------------------------- the inventory's jump: (no boards needed)

APP = "app:\n  name: a\n  models: {onnx: m.onnx}\n"


@pytest.mark.parametrize("boards, error", [
    ("boards:\n  pc: {host: 10.0.0.1}\n  dk: {host: 192.168.1.2, jump: pc}\n", None),
    ("boards:\n  dk: {host: 192.168.1.2, jump: 'me@[fe80::1]:2222'}\n", None),
    ("defaults: {jump: pc}\nboards:\n  pc: {host: 10.0.0.1, jump: none}\n  dk: {host: 192.168.1.2}\n", None),
    ("boards:\n  dk: {host: 192.168.1.2, jump: dk}\n",
     "inv.yaml:5: boards.dk.jump: jump hosts loop back to dk (dk -> dk)"),
    ("boards:\n  pc: {host: 10.0.0.1}\n  dk: {host: 192.168.1.2}\ngroups:\n  lab: {boards: [dk, pc], jump: pc}\n",
     "inv.yaml:8: groups.lab.jump: jump hosts loop back to pc (pc -> pc); set jump: none on pc"),
    ("boards:\n  a: {host: h1, jump: 'me@h1'}\n", "boards.a.jump: jump hosts loop back to a (a -> me@h1)"),
    ("boards:\n  a: {host: h1, jump: b}\n  b: {host: h2, jump: 'h1:22'}\n",
     "boards.a.jump: jump hosts loop back to a (a -> b -> h1:22)"),
    ("boards:\n  dk: {host: 192.168.1.2, jump: 'a b'}\n",
     "boards.dk.jump: not a board of this inventory nor [user@]host[:port]: 'a b'"),
    ("boards:\n  dk: {host: 192.168.1.2, jump: 'pc:99999'}\n", "not a board of this inventory nor [user@]host[:port]"),
])  # fmt: skip
def test_jump_settings_are_checked_at_load(tmp_path, boards, error):
    if error is None:
        inv = inventory.parse(APP + boards, tmp_path / "inv.yaml")
        assert inv.boards["dk"].jump in ("pc", "me@[fe80::1]:2222")
        return
    with pytest.raises(inventory.InventoryError) as exc:
        inventory.parse(APP + boards, tmp_path / "inv.yaml")
    assert error in str(exc.value) and exc.value.exit_code == 2


def test_jump_specs_parse_like_openssh_hops():
    assert inventory.Jump.parse("me@pc.lab:2222") == inventory.Jump("pc.lab", "me", 2222)
    assert inventory.Jump.parse("[fe80::1]") == inventory.Jump("fe80::1")
    assert inventory.Jump.parse("pc") == inventory.Jump("pc")
    assert inventory.Jump.parse("me@") is None and inventory.Jump.parse("pc:0") is None
