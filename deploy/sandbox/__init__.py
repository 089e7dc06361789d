"""Sandbox boards: real OpenSSH ``sshd`` processes on loopback that stand in for Atlas boards.

Like SQLite for a database app, a sandbox board is the embedded default: the README demo
and the tests run against it. Each board gets

* its own ``sshd`` (Debian's ``openssh-server``) on 127.0.0.1, started with ``-D`` so the
  PID we record is the listener itself, and stopped by exactly that PID;
* its own host key, recorded in the project's ``.deploy/known_hosts`` (so connections to it
  are verified like any other board's);
* its own home directory holding a stock Ubuntu ``~/.bashrc`` **with** the
  ``case $- in *i*) ;; *) return;; esac`` guard, so the non-interactive-ssh pitfall of real
  boards is reproduced, not hidden.

Run as root (CI, containers), each board is its own Unix user (``hiai-<project>-<board>``)
whose passwd home is the board's home: ``bash -c`` over ssh behaves exactly as on a board.
Run as an ordinary user, sshd can only log that user in, so the board's home is given with
``SetEnv HOME=`` (the shell's working directory is still the real home; our commands use
``$HOME`` and never rely on it). An ``arch: aarch64`` board runs its sshd and Python inside
a Debian arm64 rootfs through qemu-user (see ``emulation.py``; root only).

State lives in ``.deploy/sandbox/<board>/`` (config, host key, log, ``state.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SandboxError
from ..inventory import Board, Inventory

DATA = Path(__file__).parents[1] / "data"


@dataclass(frozen=True)
class Sandbox:
    name: str
    host: str
    port: int
    user: str
    home: str
    pid: int | None
    arch: str
    dir: str
    key: str
    known_hosts: str
    rootfs: str | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None and _is_our_sshd(self.pid, Path(self.dir) / "sshd_config")

    @property
    def ssh_command(self) -> str:
        return (
            f"ssh -i {self.key} -o IdentitiesOnly=yes -o UserKnownHostsFile={self.known_hosts} "
            f"-o StrictHostKeyChecking=yes -p {self.port} {self.user}@{self.host}"
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["running"] = self.running
        d["ssh_command"] = self.ssh_command
        return d


def sandbox_dir(inv: Inventory, name: str) -> Path:
    return inv.state_dir / "sandbox" / name


def client_key(inv: Inventory) -> Path:
    """The project's own client key for sandbox boards (ed25519, created once, never leaves the project)."""
    key = inv.state_dir / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "atlas-deploy sandbox client", "-f", str(key)])
    return key


def known_hosts(inv: Inventory) -> Path:
    return inv.state_dir / "known_hosts"


def load(inv: Inventory, name: str) -> Sandbox | None:
    try:
        data = json.loads((sandbox_dir(inv, name) / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return Sandbox(**data)


def boards(inv: Inventory, names: list[str] | None = None) -> list[Board]:
    sb = [b for b in inv.boards.values() if b.sandbox]
    if names:
        chosen = []
        for n in names:
            for b in inv.select(n):
                if not b.sandbox:
                    raise SandboxError(f"{b.name} is not a sandbox board (it has host: {b.host})")
                if b not in chosen:
                    chosen.append(b)
        return chosen
    if not sb:
        raise SandboxError(f"{inv.path}: no board has sandbox: true")
    return sb


def up(inv: Inventory, names: list[str] | None = None, log=None) -> list[Sandbox]:
    """Start the named sandbox boards (default: all); ``log(str)`` gets progress lines of slow steps."""
    out = []
    for board in boards(inv, names):
        existing = load(inv, board.name)
        if existing and existing.running:
            out.append(existing)
            continue
        out.append(_start(inv, board, existing, log))
    return out


def down(inv: Inventory, names: list[str] | None = None, purge: bool = False) -> list[Sandbox]:
    """Stop the sshd processes this project started (by recorded PID only); purge removes homes and users."""
    stopped = []
    for board in boards(inv, names):
        sb = load(inv, board.name)
        if sb is None:
            continue
        if sb.running:
            _terminate(sb.pid)
        if sb.arch == "aarch64" and sb.rootfs:
            from . import emulation

            emulation.stop_chroot(Path(sb.rootfs), sb.pid)  # unmounts /proc, /dev, ... once no board uses them
        new = Sandbox(**{**asdict(sb), "pid": None})
        _save(inv, new)
        if purge:
            _purge(inv, new)
        stopped.append(new)
    return stopped


def status(inv: Inventory) -> list[Sandbox]:
    return [sb for b in inv.boards.values() if b.sandbox and (sb := load(inv, b.name))]


# ---------------------------------------------------------------- internals


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise SandboxError(f"{argv[0]} is not installed (apt-get install openssh-server openssh-client)") from None
    if r.returncode != 0:
        raise SandboxError(f"{' '.join(argv[:3])} failed: {(r.stderr or r.stdout).strip()[:300]}")
    return r


def _sshd() -> str:
    for cand in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if cand and os.path.exists(cand):
            return os.path.abspath(cand)  # sshd re-executes itself and insists on an absolute path
    raise SandboxError("OpenSSH server (sshd) is not installed: apt-get install openssh-server")


def _user_name(inv: Inventory, board: str) -> str:
    tag = hashlib.sha256(str(inv.root.resolve()).encode()).hexdigest()[:6]
    clean = re.sub(r"[^a-z0-9_-]", "-", board.lower())
    return f"hiai-{tag}-{clean}"[:32]


def _world_traversable(path: Path) -> bool:
    for p in [path, *path.parents]:
        if p.exists() and not os.stat(p).st_mode & 0o001:
            return False
    return True


def _free_port(preferred: int | None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SandboxError("no free loopback port")


def _start(inv: Inventory, board: Board, previous: Sandbox | None, log=None) -> Sandbox:
    d = sandbox_dir(inv, board.name)
    d.mkdir(parents=True, exist_ok=True)
    key = client_key(inv)
    hostkey = d / "ssh_host_ed25519_key"
    if not hostkey.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"sandbox {board.name}", "-f", str(hostkey)])
    root = os.geteuid() == 0
    rootfs = None
    if board.arch == "aarch64":
        if not root:
            raise SandboxError(f"{board.name}: an emulated aarch64 board needs root (chroot + binfmt)")
        from . import emulation

        try:
            emulation.ensure_binfmt()
            # the first time on a machine: debootstrap under emulation, minutes; its lines feed `log`
            rootfs = emulation.ensure_rootfs(progress=(lambda line: log(f"{board.name}: {line}")) if log else None)
        except emulation.EmulationError as exc:
            raise SandboxError(f"{board.name}: {exc}") from None
    if root:
        user = _user_name(inv, board.name)
        if rootfs is not None:
            home_inside = f"/home/{user}"
            emulation.add_board_user(rootfs, user, home_inside)
            home = home_inside
            home_on_host = rootfs / home_inside.lstrip("/")
        else:
            home_on_host = d / "home" if _world_traversable(d) else Path("/var/lib/atlas-deploy") / user / "home"
            home = str(home_on_host)
            _ensure_user(user, home_on_host)
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
        home_on_host = d / "home"
        home = str(home_on_host)
        _seed_home(home_on_host, None)
    port = _free_port(previous.port if previous else None)
    # like a real board: the client key sits in the board user's ~/.ssh/authorized_keys
    # (sshd reads it with the user's privileges, so it must be inside what the user can reach)
    auth = home_on_host / ".ssh" / "authorized_keys"
    auth.parent.mkdir(mode=0o700, exist_ok=True)
    auth.write_text(Path(str(key) + ".pub").read_text())
    os.chmod(auth, 0o600)
    if rootfs is not None:  # uid/gid as the rootfs's own passwd has them
        emulation.chroot_run(rootfs, ["chown", "-R", f"{user}:{user}", f"{home}/.ssh"])
    elif root:
        _run(["chown", "-R", f"{user}:{user}", str(auth.parent)])
    cfg_lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {hostkey}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {auth if not root else '.ssh/authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        "UsePAM no",
        # the project dir may sit under a group-writable or sticky tmp dir; keys are ours anyway
        "StrictModes no",
        "PrintMotd no",
        "PrintLastLog no",
        "AcceptEnv LANG LC_*",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        "MaxStartups 50:30:100",
        "MaxSessions 50",
    ]
    if root:
        cfg_lines.append(f"AllowUsers {user}")
    else:
        cfg_lines.append(f"SetEnv HOME={home}")
    config = d / "sshd_config"
    log_path = d / "sshd.log"
    if rootfs is not None:
        # the emulated sshd reads everything from inside the rootfs
        from . import emulation

        inside = Path(rootfs) / "etc" / "atlas-deploy" / board.name
        inside.mkdir(parents=True, exist_ok=True)
        shutil.copy2(hostkey, inside / hostkey.name)
        os.chmod(inside / hostkey.name, 0o600)
        cfg_text = "\n".join(cfg_lines) + "\n"
        cfg_text = cfg_text.replace(str(hostkey), f"/etc/atlas-deploy/{board.name}/{hostkey.name}")
        cfg_text = cfg_text.replace(str(d / "sshd.pid"), f"/run/atlas-deploy-{board.name}.pid")
        (inside / "sshd_config").write_text(cfg_text)
        config.write_text(cfg_text)
        proc = emulation.start_chroot_sshd(rootfs, f"/etc/atlas-deploy/{board.name}/sshd_config", log_path)
    else:
        config.write_text("\n".join(cfg_lines) + "\n")
        if root:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [_sshd(), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives this command; `sandbox down` stops it by PID
            )
    _wait_ready(proc, port, log_path, board.name, timeout=60 if rootfs else 10)
    _record_host_key(known_hosts(inv), port, Path(str(hostkey) + ".pub"))
    sb = Sandbox(
        name=board.name,
        host="127.0.0.1",
        port=port,
        user=user,
        home=home if rootfs is None else str(home_on_host),
        pid=proc.pid,
        arch=board.arch,
        dir=str(d),
        key=str(key),
        known_hosts=str(known_hosts(inv)),
        rootfs=str(rootfs) if rootfs else None,
    )
    _save(inv, sb)
    return sb


def _save(inv: Inventory, sb: Sandbox) -> None:
    path = sandbox_dir(inv, sb.name) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(sb), indent=2))
    os.replace(tmp, path)
    _write_ssh_config(inv)


def ssh_config_path(inv: Inventory) -> Path:
    """The project's generated ssh_config: how the core (and a plain ``ssh -F``) reaches sandbox boards."""
    return inv.state_dir / "sandbox" / "ssh_config"


def _write_ssh_config(inv: Inventory) -> None:
    """One ``Host`` entry per running sandbox board; the core reads this file and never imports us."""
    lines = ["# written by `deploy sandbox up/down`; try: ssh -F .deploy/sandbox/ssh_config BOARD", ""]
    for sb in status(inv):
        if sb.pid is None:
            continue
        lines += [
            f"Host {sb.name}",
            f"  HostName {sb.host}",
            f"  Port {sb.port}",
            f"  User {sb.user}",
            f"  IdentityFile {sb.key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {sb.known_hosts}",
            "  StrictHostKeyChecking yes",
            "",
        ]
    path = ssh_config_path(inv)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def _seed_home(home: Path, owner: str | None) -> None:
    """A fresh board home: stock Ubuntu .bashrc (with its interactive guard) and .profile."""
    home.mkdir(parents=True, exist_ok=True)
    for name, src in ((".bashrc", "bashrc"), (".profile", "profile")):
        dst = home / name
        if not dst.exists():
            shutil.copyfile(DATA / src, dst)
    if owner:
        _run(["chown", "-R", f"{owner}:{owner}", str(home)])
    os.chmod(home, 0o755)


def _ensure_user(user: str, home: Path) -> None:
    try:
        entry = pwd.getpwnam(user)
        if entry.pw_dir != str(home):
            _run(["usermod", "-d", str(home), user])
    except KeyError:
        _run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group",
              "--comment", "atlas-deploy sandbox board", user])
    # '*' = no password but not locked: with UsePAM no, sshd refuses key logins to locked ('!') accounts
    _run(["usermod", "-p", "*", user])
    _seed_home(home, user)


def _wait_ready(proc: subprocess.Popen, port: int, log_path: Path, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
            raise SandboxError(f"{name}: sshd exited at start: {tail[0] if tail else proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(8).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    _terminate(proc.pid)
    raise SandboxError(f"{name}: sshd did not answer on 127.0.0.1:{port} within {timeout:.0f}s (see {log_path})")


def _record_host_key(path: Path, port: int, pub: Path) -> None:
    host_id = f"[127.0.0.1]:{port}"
    kind, b64 = pub.read_text().split()[:2]
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if ln.split(" ", 1)[0] != host_id]
    lines.append(f"{host_id} {kind} {b64}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent (or init) to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _is_our_sshd(pid: int, config: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not _running(pid):
        return False
    text = b" ".join(cmdline)
    return b"sshd" in text and (str(config).encode() in text or config.parent.name.encode() in text)


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap if it is our child (same process)
            if done:
                return
        except ChildProcessError:
            pass
        if not _running(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _purge(inv: Inventory, sb: Sandbox) -> None:
    if sb.rootfs:
        from . import emulation

        try:
            emulation.chroot_run(Path(sb.rootfs), ["/usr/sbin/userdel", "--remove", sb.user])
        except emulation.EmulationError:
            pass
        shutil.rmtree(Path(sb.rootfs) / "etc" / "atlas-deploy" / sb.name, ignore_errors=True)
    elif os.geteuid() == 0 and sb.user.startswith("hiai-"):
        try:
            pwd.getpwnam(sb.user)
            subprocess.run(["userdel", sb.user], capture_output=True)
        except KeyError:
            pass
    if sb.home and Path(sb.home).is_dir() and sb.rootfs is None:
        shutil.rmtree(sb.home, ignore_errors=True)
        parent = Path(sb.home).parent
        if parent.parent == Path("/var/lib/atlas-deploy"):
            shutil.rmtree(parent, ignore_errors=True)
    shutil.rmtree(sandbox_dir(inv, sb.name), ignore_errors=True)
