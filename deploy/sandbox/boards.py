"""The sandbox boards' lifecycle: ``up`` (sshd, host key, home, login), ``down`` by PID, ``status``, and the
``ssh_config`` the core reaches them through. See the package docstring."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import SandboxError
from ..inventory import Board, Inventory
from ..targets import get as get_target
from . import atlas, cron, mlu
from .host import free_port, pid_running, run, terminate, world_traversable

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
    shape: tuple[str, ...] = ()  # an Atlas-shaped board: what stands in for what (see atlas.py)
    jump: str | None = None  # the inventory's jump: for this board (filled in by status(), not stored)

    @property
    def running(self) -> bool:
        return self.pid is not None and _is_our_sshd(self.pid, Path(self.dir) / "sshd_config")

    @property
    def ssh_command(self) -> str:
        """A plain OpenSSH command that reaches the board as the tool does; through the project's ssh_config
        (which has the ProxyJump) for a board behind ``jump:``, since a hop may be another board of the file."""
        if self.jump and self.jump != "none":
            return f"ssh -F {Path(self.dir).parent / 'ssh_config'} {self.name}"
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
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "atlas-deploy sandbox client", "-f", str(key)])
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
            terminate(sb.pid)
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
    return [replace(sb, jump=b.jump) for b in inv.boards.values() if b.sandbox and (sb := load(inv, b.name))]


# ---------------------------------------------------------------- internals


def _sshd() -> str:
    for cand in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if cand and os.path.exists(cand):
            return os.path.abspath(cand)  # sshd re-executes itself and insists on an absolute path
    raise SandboxError("OpenSSH server (sshd) is not installed: apt-get install openssh-server")


def _user_name(inv: Inventory, board: str) -> str:
    tag = hashlib.sha256(str(inv.root.resolve()).encode()).hexdigest()[:6]
    clean = re.sub(r"[^a-z0-9_-]", "-", board.lower())
    return f"hiai-{tag}-{clean}"[:32]


@dataclass(frozen=True)
class _Login:
    """Who sshd lets in on a sandbox board, and where that user's home is."""

    user: str
    home: str  # as the board sees it: inside the rootfs for an emulated board
    home_on_host: Path  # the same directory, seen from this host
    dedicated: bool  # run as root: a Unix user of its own (AllowUsers); else ours, with SetEnv HOME=
    shared: bool = False  # HwHiAiUser, shared by simulated Atlas boards: HOME by SetEnv, keys by absolute path
    env: tuple[tuple[str, str], ...] = ()  # more SetEnv (an Atlas board's PATH)


def _start(inv: Inventory, board: Board, previous: Sandbox | None, log=None) -> Sandbox:
    """Start one board's sshd (on its previous port if free), wait until it answers, record it."""
    d = sandbox_dir(inv, board.name)
    d.mkdir(parents=True, exist_ok=True)
    key = client_key(inv)
    hostkey = _host_key(d, board.name)
    rootfs = _emulated_rootfs(board, log) if board.arch == "aarch64" else None
    target = get_target(board.target)
    login = _prepare_login(inv, board.name, d, rootfs, atlas.is_atlas(target))
    shape: list[str] = []
    if atlas.is_atlas(target):
        login, shape = _shape_atlas(board, target, login, rootfs, log)
    elif mlu.is_mlu(target):  # an MLU370 host: Python 3.7, cnmon, NEUWARE_HOME (sandbox/mlu.py)
        login, shape = mlu.shape(board, target, login, rootfs, log)
    login = cron.install(login, login.user if login.dedicated else None)  # SIMULATED crontab (sandbox/cron.py)
    port = free_port(previous.port if previous else None)
    auth = _authorize(login, key, rootfs)
    log_path = d / "sshd.log"
    if rootfs is None:
        text = _sshd_config(port, str(hostkey), str(d / "sshd.pid"), auth, login)
        proc = _launch_native(d / "sshd_config", text, log_path, login.dedicated)
    else:  # the emulated sshd reads everything from inside the rootfs, which every project's boards share:
        unique = _user_name(inv, board.name)  # so its files are named for this project's board, not the name
        etc = f"/etc/atlas-deploy/{unique}"
        text = _sshd_config(port, f"{etc}/{hostkey.name}", f"/run/atlas-deploy-{unique}.pid", auth, login)
        proc = _launch_chrooted(rootfs, etc, hostkey, text, d / "sshd_config", log_path)
    _wait_ready(proc, port, log_path, board.name, timeout=60 if rootfs else 10)
    _record_host_key(known_hosts(inv), port, Path(str(hostkey) + ".pub"))
    sb = Sandbox(
        name=board.name,
        host="127.0.0.1",
        port=port,
        user=login.user,
        home=str(login.home_on_host),
        pid=proc.pid,
        arch=board.arch,
        dir=str(d),
        key=str(key),
        known_hosts=str(known_hosts(inv)),
        rootfs=str(rootfs) if rootfs else None,
        shape=tuple(shape),
    )
    _save(inv, sb)
    return sb


def _shape_atlas(board: Board, target, login: _Login, rootfs: Path | None, log) -> tuple[_Login, list[str]]:
    """Give the board an Atlas's Pythons, npu-smi and CANN (``atlas.py``); returns the login with its PATH."""
    sys_on_host = login.home_on_host.parent / "sys"
    sys_on_board = str(Path(login.home).parent / "sys")
    layout = atlas.build_overlay(sys_on_host, target, rootfs)
    cann_python = layout[-1][1]  # the interpreter at the CANN Python's place
    mm = atlas.interpreter_version(cann_python, rootfs)
    if log:
        log(f"{board.name}: simulated CANN for Python {mm} ({board.arch})")
    atlas.install_cann(login.home_on_host, target, mm, board.arch, cann_python, rootfs)
    env = (*login.env, ("PATH", atlas.board_path(sys_on_board)))
    return replace(login, env=env), [f"/{rel}: {what}" for rel, _, what in layout]



def _host_key(d: Path, name: str) -> Path:
    """The board's own ed25519 host key in its state dir, created once (so reconnecting never warns)."""
    hostkey = d / "ssh_host_ed25519_key"
    if not hostkey.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"sandbox {name}", "-f", str(hostkey)])
    return hostkey


def _emulated_rootfs(board: Board, log) -> Path:
    """The emulated board's rootfs, with binfmt registered; root only.

    The first time on a machine this builds the rootfs with debootstrap (minutes); its lines feed `log`.
    """
    if os.geteuid() != 0:
        raise SandboxError(f"{board.name}: an emulated aarch64 board needs root (chroot + binfmt)")
    from . import emulation

    try:
        emulation.ensure_binfmt()
        return emulation.ensure_rootfs(progress=(lambda line: log(f"{board.name}: {line}")) if log else None)
    except emulation.EmulationError as exc:
        raise SandboxError(f"{board.name}: {exc}") from None
    except OSError as exc:  # an unusable cache path (a file in the way, no permission, disk full)
        where = exc.filename or emulation.default_rootfs_path()
        raise SandboxError(f"{board.name}: cannot use the aarch64 rootfs cache at {where}: {exc.strerror or exc}") from None


def _prepare_login(inv: Inventory, name: str, d: Path, rootfs: Path | None, atlas_shaped: bool = False) -> _Login:
    """The board's login user and a seeded home: inside the rootfs, a host user of its own, or ours.

    An Atlas-shaped board run as root logs in as the shared ``HwHiAiUser`` (see atlas.py).
    """
    if os.geteuid() != 0:
        home_on_host = d / "home"
        _seed_home(home_on_host, None)
        return _Login(pwd.getpwuid(os.getuid()).pw_name, str(home_on_host), home_on_host, dedicated=False,
                      env=(("HOME", str(home_on_host)),))
    user = _user_name(inv, name)
    if atlas_shaped and atlas.dk_user():
        return _dk_login(user, d, rootfs)
    if rootfs is not None:
        from . import emulation

        home = f"/home/{user}"
        emulation.add_board_user(rootfs, user, home)
        return _Login(user, home, rootfs / home.lstrip("/"), dedicated=True)
    home_on_host = d / "home" if world_traversable(d) else Path("/var/lib/atlas-deploy") / user / "home"
    _ensure_user(user, home_on_host)
    return _Login(user, str(home_on_host), home_on_host, dedicated=True)


def _dk_login(unique: str, d: Path, rootfs: Path | None) -> _Login:
    """HwHiAiUser with this board's own home (a stock Ubuntu one), in the rootfs or on this machine."""
    user = atlas.DK_USER
    if rootfs is not None:
        from . import emulation

        emulation.add_board_user(rootfs, user, f"/home/{user}")
        home = f"/var/lib/atlas-deploy/{unique}/home"
        home_on_host = rootfs / home.lstrip("/")
        _seed_home(home_on_host, None)
        uid, gid = emulation.user_ids(rootfs, user)
        os.chown(home_on_host, uid, gid)
    else:
        atlas.ensure_dk_user()
        home_on_host = d / "home" if world_traversable(d) else Path("/var/lib/atlas-deploy") / unique / "home"
        _seed_home(home_on_host, user)
        home = str(home_on_host)
    return _Login(user, home, home_on_host, dedicated=True, shared=True, env=(("HOME", home),))


def _authorize(login: _Login, key: Path, rootfs: Path | None) -> Path:
    """Install the client key as the board user's ``~/.ssh/authorized_keys``, like on a real board.

    sshd reads it with the user's privileges, so it must be inside what the user can reach and
    owned by that user (as the rootfs's own passwd numbers them, for an emulated board).
    """
    auth = login.home_on_host / ".ssh" / "authorized_keys"
    auth.parent.mkdir(mode=0o700, exist_ok=True)
    auth.write_text(Path(str(key) + ".pub").read_text())
    os.chmod(auth, 0o600)
    if rootfs is not None:
        from . import emulation

        emulation.chroot_run(rootfs, ["chown", "-R", f"{login.user}:{login.user}", f"{login.home}/.ssh"])
    elif login.dedicated:
        run(["chown", "-R", f"{login.user}:{login.user}", str(auth.parent)])
    return auth


def _sshd_config(port: int, hostkey: str, pid_file: str, auth: Path, login: _Login) -> str:
    """The board's sshd_config: loopback only, key authentication only; paths as sshd will see them."""
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {hostkey}",
        f"PidFile {pid_file}",
        f"AuthorizedKeysFile {_keys_file(auth, login)}",
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
    if login.dedicated:
        lines.append(f"AllowUsers {login.user}")
    if login.env:  # one line: sshd takes the first of repeated keywords
        lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in login.env))
    return "\n".join(lines) + "\n"


def _keys_file(auth: Path, login: _Login) -> str:
    """Where sshd finds the board's authorized_keys: in the passwd home, or by this board's own home."""
    if not login.dedicated:
        return str(auth)
    return f"{login.home}/.ssh/authorized_keys" if login.shared else ".ssh/authorized_keys"


def _launch_native(config: Path, text: str, log_path: Path, as_root: bool) -> subprocess.Popen:
    """The host's sshd in the foreground (-D) of a new session: the PID we get is the listener itself."""
    config.write_text(text)
    if as_root:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [_sshd(), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives this command; `sandbox down` stops it by PID
        )


def _launch_chrooted(rootfs: Path, etc: str, hostkey: Path, text: str, config: Path, log_path: Path):
    """The rootfs's own aarch64 sshd; it reads its config and host key from ``etc`` inside the rootfs.

    ``config`` (the copy in the board's state dir) is what ``Sandbox.running`` recognises sshd by.
    """
    from . import emulation

    inside = Path(rootfs) / etc.lstrip("/")
    inside.mkdir(parents=True, exist_ok=True)
    shutil.copy2(hostkey, inside / hostkey.name)
    os.chmod(inside / hostkey.name, 0o600)
    (inside / "sshd_config").write_text(text)
    config.write_text(text)
    return emulation.start_chroot_sshd(rootfs, f"{etc}/sshd_config", log_path)


def _save(inv: Inventory, sb: Sandbox) -> None:
    path = sandbox_dir(inv, sb.name) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v for k, v in asdict(sb).items() if k != "jump"}, indent=2))
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
            *_proxy_jump(inv, sb.name),
            "",
        ]
    path = ssh_config_path(inv)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def _proxy_jump(inv: Inventory, name: str) -> list[str]:
    """A board behind ``jump:`` (another board of this file, or ``[user@]host[:port]``) is reached the same way
    by ``ssh -F``: OpenSSH resolves a hop named after another ``Host`` entry of the file from the file."""
    board = inv.boards.get(name)
    jump = board.jump if board else None
    return [f"  ProxyJump {jump}"] if jump and jump != "none" else []


def _seed_home(home: Path, owner: str | None) -> None:
    """A fresh board home: stock Ubuntu .bashrc (with its interactive guard) and .profile."""
    home.mkdir(parents=True, exist_ok=True)
    for name, src in ((".bashrc", "bashrc"), (".profile", "profile")):
        dst = home / name
        if not dst.exists():
            shutil.copyfile(DATA / src, dst)
    if owner:
        run(["chown", "-R", f"{owner}:{owner}", str(home)])
    os.chmod(home, 0o755)


def _ensure_user(user: str, home: Path) -> None:
    try:
        entry = pwd.getpwnam(user)
        if entry.pw_dir != str(home):
            run(["usermod", "-d", str(home), user])
    except KeyError:
        run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group",
              "--comment", "atlas-deploy sandbox board", user])
    # '*' = no password but not locked: with UsePAM no, sshd refuses key logins to locked ('!') accounts
    run(["usermod", "-p", "*", user])
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
    terminate(proc.pid)
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


def _is_our_sshd(pid: int, config: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not pid_running(pid):
        return False
    text = b" ".join(cmdline)
    return b"sshd" in text and (str(config).encode() in text or config.parent.name.encode() in text)


def _purge(inv: Inventory, sb: Sandbox) -> None:
    if sb.rootfs:
        from . import emulation

        if sb.user.startswith("hiai-"):
            try:
                emulation.chroot_run(Path(sb.rootfs), ["/usr/sbin/userdel", "--remove", sb.user])
            except emulation.EmulationError:
                pass
        elif Path(sb.home).parent.parent.name == "atlas-deploy":  # HwHiAiUser's home for this board, and its /usr
            shutil.rmtree(Path(sb.home).parent, ignore_errors=True)
        shutil.rmtree(Path(sb.rootfs) / "etc" / "atlas-deploy" / _user_name(inv, sb.name), ignore_errors=True)
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
