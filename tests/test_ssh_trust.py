"""``deploy trust BOARD`` against a real password-only sshd, as on a fresh Atlas 200 DK.

The board is an sshd of this test's own on loopback that takes passwords (``PasswordAuthentication
yes``, ``StrictModes yes`` so wrong modes would make the installed key useless) for a throwaway Unix
user with a random password. Both are removed afterwards, by the PID and the user name created here.
Root only (a user with a password); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import pty
import pwd
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import inventory
from deploy.errors import HostKeyError
from deploy.link import trust
from deploy.testing import Project

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd") or not os.path.exists("/usr/sbin/sshd"),
                                reason="needs root (a Unix user with a password) and OpenSSH's sshd")


def _keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_sshd(d: Path, user: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    hostkey = _keygen(d / "ssh_host_ed25519_key", "trust-test host")
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {hostkey}", f"PidFile {d / 'sshd.pid'}",
        "PasswordAuthentication yes", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "AuthorizedKeysFile .ssh/authorized_keys", "StrictModes yes", "UsePAM no", "PermitRootLogin no",
        f"AllowUsers {user}", "LogLevel VERBOSE", "",
    ]))  # fmt: skip
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    with open(d / "sshd.log", "ab") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(8).startswith(b"SSH-"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"test sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")


@pytest.fixture(scope="module")
def dk(tmp_path_factory, demo):
    """A password-only board: user dkt-XXXXXX with a random password, its own sshd; our HOME with a key."""
    root = tmp_path_factory.mktemp("trust")
    user, password = f"dkt-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--comment", "atlas-deploy trust test", user],
                   check=True, capture_output=True)
    proc = None
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, capture_output=True)
        sshd_dir = root / "sshd"
        sshd_dir.mkdir()
        proc, port = _start_sshd(sshd_dir, user)
        home = root / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        _keygen(home / ".ssh" / "id_ed25519", "me@workstation")
        proj = Project(root / "project", demo, boards={"dk": {"host": "127.0.0.1", "port": port, "user": user,
                                                              "target": "x86_64-cpu"}})
        proj.environ = {**proj.environ, "HOME": str(home)}
        proj.user, proj.password, proj.client_home, proj.sshd_dir = user, password, home, sshd_dir
        proj.board_home = Path(pwd.getpwnam(user).pw_dir)
        yield proj
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)  # the listener we started
            proc.wait(timeout=10)
        _end_processes_of(user)  # sessions still closing (the user is ours: so are they)
        subprocess.run(["userdel", "--remove", user], capture_output=True)
        assert subprocess.run(["id", user], capture_output=True).returncode != 0, f"{user} was not removed"


def _end_processes_of(user: str, timeout: float = 10) -> None:
    uid = pwd.getpwnam(user).pw_uid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _uid(d) == uid]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _uid(proc_dir: Path) -> int | None:
    try:
        return proc_dir.stat().st_uid
    except OSError:
        return None


def trust_cmd(dk, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """``deploy trust dk ARGS`` with no controlling terminal (as in CI): stdin is all it can read."""
    return subprocess.run(dk.argv("trust", "dk", *args), input=stdin, capture_output=True, text=True, cwd=dk.root,
                          env=dk.environ, timeout=60, start_new_session=True)


def one_error(r: subprocess.CompletedProcess, code: int) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    return lines[0]


def host_fingerprint(dk) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(dk.sshd_dir / "ssh_host_ed25519_key.pub")], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[1]


def test_trust_installs_the_key_once_with_the_right_modes(dk):
    auth = dk.board_home / ".ssh" / "authorized_keys"
    outputs = []
    r = dk.deploy("exec", "dk", "--accept-new-host-key", "--", "true", check=False)  # password-only: keys refused
    assert "refused your SSH keys/agent (install your key with: deploy trust dk)" in one_error(r, 4)
    (dk.root / ".deploy" / "known_hosts").write_text("")

    r = trust_cmd(dk, "--password-stdin", stdin=dk.password + "\n")  # no terminal to confirm the host key on
    line = one_error(r, 3)
    assert f"dk ([127.0.0.1]:{dk.boards['dk']['port']}): unknown host key ssh-ed25519 {host_fingerprint(dk)}" in line
    assert "--accept-new-host-key" in line and not auth.exists()

    r = trust_cmd(dk, "--password-stdin", "--yes", stdin="not-the-password\n")
    assert f"dk: {dk.user}@[127.0.0.1]:{dk.boards['dk']['port']} refused the password" in one_error(r, 4)
    assert not auth.exists()
    outputs.append(r.stdout + r.stderr)

    r = trust_cmd(dk, "--password-stdin", stdin=dk.password + "\n")  # the host key is known since --yes
    assert r.returncode == 0, r.stderr
    pub = (dk.client_home / ".ssh" / "id_ed25519.pub").read_text().split()
    assert f"dk: installed ssh-ed25519 {trust._read_public_key(dk.client_home / '.ssh/id_ed25519.pub').fingerprint}" in r.stdout
    assert "key login verified" in r.stdout
    assert [ln.split()[1] for ln in auth.read_text().splitlines()] == [pub[1]]
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600 and stat.S_IMODE(auth.parent.stat().st_mode) == 0o700
    assert auth.stat().st_uid == auth.parent.stat().st_uid == pwd.getpwnam(dk.user).pw_uid
    outputs.append(r.stdout + r.stderr)

    again = trust_cmd(dk, "--json")  # the key logs in now: no password asked, nothing added
    row = json.loads(again.stdout)
    assert again.returncode == 0 and row["ok"] and not row["added"] and not row["asked_password"] and row["verified"]
    assert len(auth.read_text().splitlines()) == 1

    r = dk.deploy("exec", "dk", "--", "id", "-un")
    assert r.stdout.strip() == dk.user
    outputs.append(r.stdout + r.stderr)
    assert not any(dk.password in text for text in outputs)
    for top in (dk.root, dk.client_home):  # nothing we wrote holds the password
        for path in top.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert dk.password.encode() not in path.read_bytes(), path


def test_an_existing_authorized_keys_keeps_its_keys_and_gets_fixed_modes(dk, tmp_path):
    ssh_dir = dk.board_home / ".ssh"
    other = _keygen(tmp_path / "other", "someone-else").with_suffix(".pub").read_text().strip()
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(other)  # no newline at the end
    ssh_dir.chmod(0o755)
    (ssh_dir / "authorized_keys").chmod(0o644)
    uid = pwd.getpwnam(dk.user).pw_uid
    os.chown(ssh_dir, uid, uid)
    os.chown(ssh_dir / "authorized_keys", uid, uid)
    second = _keygen(tmp_path / "second", "second@workstation")
    r = trust_cmd(dk, "--key", str(second), "--password-stdin", stdin=dk.password + "\n")
    assert r.returncode == 0 and "installed" in r.stdout, r.stderr
    lines = (ssh_dir / "authorized_keys").read_text().splitlines()
    assert lines[0] == other and lines[-1].split()[1] == second.with_suffix(".pub").read_text().split()[1]
    assert stat.S_IMODE(ssh_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ssh_dir / "authorized_keys").stat().st_mode) == 0o600


def test_the_host_key_is_confirmed_before_a_password_is_asked(dk, tmp_path):
    """In-process: confirm() sees the fingerprint first; a no sends nothing, a yes asks the password once."""
    kh = dk.root / ".deploy" / "known_hosts"
    saved = kh.read_text()
    kh.write_text("")
    inv = inventory.load(dk.inventory)
    key = _keygen(tmp_path / "third", "third@workstation")
    seen, asked = [], []

    def password(login):
        asked.append(login)
        return dk.password

    try:
        with pytest.raises(HostKeyError, match="unknown host key"):
            trust.trust(inv, inv.boards["dk"], password=password, key=str(key),
                        confirm=lambda *shown: seen.append(shown) or False)
        assert seen == [("dk", f"[127.0.0.1]:{dk.boards['dk']['port']}", "ssh-ed25519", host_fingerprint(dk))]
        assert asked == [] and kh.read_text() == ""
        res = trust.trust(inv, inv.boards["dk"], password=password, key=str(key), confirm=lambda *shown: True)
        assert res.added and res.asked_password and res.verified
        assert asked == [f"{dk.user}@[127.0.0.1]:{dk.boards['dk']['port']}"]  # once
        assert res.host_keys == (("dk", host_fingerprint(dk)),) and "ssh-ed25519" in kh.read_text()
    finally:
        kh.write_text(saved)


def _until(fd: int, marker: bytes | None, timeout: float = 30) -> bytes:
    """What the terminal shows until ``marker`` (None: until the program closes it)."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (marker is None or marker not in out):
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the program ended
            break
        if not chunk:
            break
        out += chunk
    return out


def test_on_a_terminal_it_asks_for_the_host_key_then_the_password(dk, tmp_path):
    """The interactive path, on a real pty: the fingerprint and [y/N] first, then one password prompt
    (not echoed), then the key is in."""
    kh = dk.root / ".deploy" / "known_hosts"
    saved = kh.read_text()
    kh.write_text("")
    key = _keygen(tmp_path / "fourth", "fourth@workstation")
    pid, fd = pty.fork()
    if pid == 0:  # the child: deploy on the pty as its controlling terminal
        os.chdir(dk.root)
        os.execve(sys.executable, dk.argv("trust", "dk", "--key", str(key)), dk.environ)
    try:
        shown = _until(fd, b"[y/N] ")
        assert f"has host key ssh-ed25519 {host_fingerprint(dk)}".encode() in shown, shown
        os.write(fd, b"y\n")
        shown = _until(fd, b"password: ")
        assert f"{dk.user}@[127.0.0.1]:{dk.boards['dk']['port']}'s password: ".encode() in shown, shown
        os.write(fd, dk.password.encode() + b"\n")
        rest = _until(fd, None)
        assert b"dk: installed ssh-ed25519" in rest and b"key login verified" in rest, rest
        assert dk.password.encode() not in shown + rest  # not echoed
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        kh.write_text(saved)
    assert os.waitstatus_to_exitcode(status) == 0
