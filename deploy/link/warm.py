"""Warm connections: a board's verified SSH connection kept open between commands (OpenSSH's
``ControlMaster``/``ControlPersist``), so the next command skips the handshake, sshd's session setup
and, on the host, importing paramiko at all.

One background process per project, the *master* (``deploy/link/master.py``), holds the connections
it opened and verified itself (host keys checked exactly as ``ssh.Connection`` does, unknown keys
never accepted there), and runs channels on them for the commands of this user:

* It listens on a Unix socket, mode 0600, in a directory of this user's only (``socket_dir``: mode
  0700, owned by the user, not a symlink: anything else is refused and the command connects directly,
  saying why); each connection to it is checked with ``SO_PEERCRED`` (same uid) as well.
* A command that finds no master connects directly as before and, as it exits, starts one
  (``python -m deploy.link.master``, its own session, no terminal, no inherited pipes) with the boards
  it used, which the master connects at once; a running master is only told about them.
* Each board's connection is named by a digest of everything that decides where and how it goes
  (``board_key``: the inventory's boards, ssh_config files, known_hosts files): change any of them (a
  new host key recorded, a port edited) and the old connection is no longer used.
* A board's connection closes after ``persist:`` seconds unused (inventory, default 60; 0 or
  ``--no-persist`` or ``ATLAS_DEPLOY_PERSIST=0``: no warm connection); the master exits with its last
  connection, when its socket is removed, or on ``deploy connections --close``.
* A dead master, a stale socket, a connection that died: cleaned and reconnected without a word; a
  master that cannot reach or verify a board sends the command back to a direct connection, which
  reports the refusal exactly as without warm connections (a changed host key still refuses).

On the socket a command asks one thing per connection, as a JSON line: ``exec`` (then frames both
ways, ``RelayChannel``), ``hello`` (is this board's connection up? opens it if not), ``info``,
``warm`` (connect these boards), ``drop`` (close these boards), ``close``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConnectError
from ..targets import pythons_for

PERSIST_S = 60
PROTOCOL = 1  # the socket's requests and frames; a master of another version has another socket
ENV = "ATLAS_DEPLOY_PERSIST"  # "0": no warm connections
FRAME = 256 << 10  # the largest frame on the socket
HIGH = 16 << 20  # bytes a relay channel buffers before it stops reading (the SSH window then holds the board)
SUN_PATH_MAX = 107  # Linux's sun_path: 108 bytes with its NUL
NAME_LEN = 29  # "<24 hex>.sock"
HELLO_TIMEOUT = 30.0  # a master opening a board's connection: the connect timeout and some


# ---------------------------------------------------------------- where, and who may


class Refused(ConnectError):
    """The socket directory or a socket is not this user's own: no warm connection."""


def socket_dir() -> Path:
    """Where the sockets live: ``$XDG_RUNTIME_DIR/atlas-deploy`` when there is one, else
    ``~/.cache/atlas-deploy/ssh``, else (when those are too deep for a socket's name) ``/tmp/atlas-deploy-UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    candidates = [Path(runtime) / "atlas-deploy"] if runtime and Path(runtime).is_dir() else []
    candidates += [Path.home() / ".cache" / "atlas-deploy" / "ssh", Path(tempfile.gettempdir()) / f"atlas-deploy-{os.getuid()}"]
    for d in candidates:
        if len(os.fsencode(d)) + 1 + NAME_LEN <= SUN_PATH_MAX:
            return d
    raise Refused(f"{candidates[0]}: too deep for a Unix socket's name; no warm connections (set XDG_RUNTIME_DIR "
                  "to a shorter folder)")


def private_dir(create: bool = True) -> Path:
    """The socket directory, made 0700 if missing; Refused unless it is a real directory of this user's that
    nobody else can enter."""
    path = socket_dir()
    if create and not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
        raise Refused(f"{path}: not a private directory of this user ({what}); refusing warm connections there "
                      f"(fix: chmod 700 {path}, or remove it)")
    return path


def socket_path(state_dir: Path) -> Path:
    """The project's master socket (a digest of its state folder: short enough for sun_path)."""
    digest = hashlib.sha256(f"{PROTOCOL}\0{Path(state_dir).resolve()}".encode()).hexdigest()[:24]
    return private_dir() / f"{digest}.sock"


def _checked_socket(path: Path) -> bool:
    """Whether ``path`` is a socket of this user's, mode 0600 at most (False when missing; Refused otherwise)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise Refused(f"{path}: not a private socket of this user's; refusing it")
    return True


def config_files(inv) -> list[Path]:
    """Every file whose content decides how a board of ``inv`` is reached and verified."""
    home = Path.home() / ".ssh"
    return [home / "config", Path("/etc/ssh/ssh_config"), home / "known_hosts",
            inv.state_dir / "sandbox" / "ssh_config", inv.state_dir / "known_hosts"]


def board_key(inv, board) -> str:
    """A digest of the board, every board of the inventory (jump hosts are boards) and ``config_files``."""
    h = hashlib.sha256(f"{inv.path.resolve()}\0{board.name}\0{sorted(inv.boards.items())!r}".encode())
    for path in config_files(inv):
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"\0-")
    return h.hexdigest()[:32]


def persist_for(board, no_persist: bool = False) -> int:
    """Seconds ``board``'s connection stays warm after a command (0: none)."""
    if no_persist or os.environ.get(ENV, "").strip() in ("0", "off", "no", "false"):
        return 0
    return board.persist if board.persist is not None else PERSIST_S


# ---------------------------------------------------------------- the socket's wire


def send_line(sock: socket.socket, obj: dict) -> None:
    sock.sendall((json.dumps(obj) + "\n").encode())


def read_line(sock: socket.socket, limit: int = 1 << 20) -> dict | None:
    """One JSON object line (byte by byte: frames may follow it), None at EOF."""
    data = bytearray()
    while not data.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            return None
        data += b
        if len(data) > limit:
            raise OSError("line too long")
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise OSError("not an object")
    return obj


def send_frame(sock: socket.socket, kind: bytes, data: bytes = b"") -> None:
    sock.sendall(kind + struct.pack(">I", len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, None when the stream ends first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    head = recv_exact(sock, 5)
    if head is None:
        return None
    n = struct.unpack(">I", head[1:])[0]
    if n > FRAME:
        raise OSError(f"frame of {n} bytes")
    data = recv_exact(sock, n) if n else b""
    return None if data is None else (head[:1], data)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def dial(path: Path, timeout: float = 2.0) -> socket.socket | None:
    """A connection to the master at ``path`` (None: no master there; a stale socket is removed)."""
    if not _checked_socket(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        try:
            path.unlink()  # its master is gone
        except OSError:
            pass
        return None
    except OSError:
        sock.close()
        return None
    if peer_uid(sock) != os.getuid():
        sock.close()
        raise Refused(f"{path}: answered by another user's process; refusing it")
    return sock


def ask(path: Path, request: dict, timeout: float = 5.0) -> dict | None:
    """One request, one reply (None: no master, or it did not answer)."""
    sock = dial(path)
    if sock is None:
        return None
    try:
        sock.settimeout(timeout)
        send_line(sock, request)
        return read_line(sock)
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


# ---------------------------------------------------------------- a channel over the master


class RelayChannel:
    """A board channel run by the master, with the part of paramiko's ``Channel`` the host code uses."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.cond = threading.Condition()
        self.bufs = {b"O": bytearray(), b"E": bytearray()}
        self.eof = {b"O": False, b"E": False}
        self.exit_status = -1
        self.status_event = threading.Event()
        self.lost = False  # the master's connection to the board ended without an exit status
        self.timeout: float | None = None
        self.send_lock = threading.Lock()
        sock.settimeout(None)
        threading.Thread(target=self._read, name="warm-relay", daemon=True).start()

    def _read(self) -> None:
        got_status = False
        try:
            while (frame := recv_frame(self.sock)) is not None:
                kind, data = frame
                if kind == b"X":
                    self.exit_status, got_status = struct.unpack(">i", data)[0], True
                    break
                with self.cond:
                    if data:
                        self.bufs[kind] += data
                    else:
                        self.eof[kind] = True
                    self.cond.notify_all()
                    while len(self.bufs[kind]) > HIGH and not self.eof[kind]:
                        self.cond.wait()  # the consumer is behind: the board waits on the SSH window
        except (OSError, KeyError, struct.error):
            pass
        with self.cond:
            self.eof = {b"O": True, b"E": True}
            self.lost = not got_status
            self.cond.notify_all()
        self.status_event.set()

    # reading
    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def _take(self, kind: bytes, n: int, line: bool = False) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self.cond:
            buf = self.bufs[kind]
            while not buf and not self.eof[kind]:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("timed out")
                self.cond.wait(left)
            end = n
            if line:
                nl = buf.find(b"\n", 0, n)
                end = nl + 1 if nl >= 0 else n
            data = bytes(buf[:end])
            del buf[:end]
            self.cond.notify_all()
            return data

    def recv(self, n: int) -> bytes:
        return self._take(b"O", n)

    def recv_stderr(self, n: int) -> bytes:
        return self._take(b"E", n)

    def recv_ready(self) -> bool:
        return bool(self.bufs[b"O"])

    def recv_stderr_ready(self) -> bool:
        return bool(self.bufs[b"E"])

    def exit_status_ready(self) -> bool:
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        self.status_event.wait()
        return self.exit_status

    def makefile(self, mode: str = "rb") -> RelayFile:
        return RelayFile(self, b"O")

    def makefile_stderr(self, mode: str = "rb") -> RelayFile:
        return RelayFile(self, b"E")

    # writing
    def sendall(self, data) -> None:
        view = memoryview(data)
        with self.send_lock:
            for i in range(0, len(view), FRAME):
                send_frame(self.sock, b"D", bytes(view[i:i + FRAME]))

    def shutdown_write(self) -> None:
        with self.send_lock:
            send_frame(self.sock, b"F")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.cond:
            self.eof = {b"O": True, b"E": True}
            self.cond.notify_all()

    # what code asks of the channel's transport: is the link still there?
    def get_transport(self) -> RelayChannel:
        return self

    def is_active(self) -> bool:
        return not self.lost

    def join(self, timeout: float | None = None) -> None:
        self.status_event.wait(timeout)


class RelayFile:
    """``makefile``: the channel's stdout or stderr as a binary file (``read``, ``readline``)."""

    def __init__(self, chan: RelayChannel, kind: bytes):
        self.chan, self.kind = chan, kind

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            data = self.chan._take(self.kind, (1 << 20) if n < 0 else n - len(out))
            if not data:
                break
            out += data
        return bytes(out)

    def readline(self, limit: int = -1) -> bytes:
        out = bytearray()
        while not out.endswith(b"\n") and (limit < 0 or len(out) < limit):
            data = self.chan._take(self.kind, (1 << 20) if limit < 0 else limit - len(out), line=True)
            if not data:
                break
            out += data
        return bytes(out)


# ---------------------------------------------------------------- a command's connection


@dataclass(frozen=True)
class WarmEndpoint:
    """What the host code asks of a connection's endpoint, as the master reports it."""

    name: str
    pythons: tuple[str, ...]
    host_id: str = ""
    route: str = ""


class WarmConnection:
    """``ssh.Connection``'s interface over the project's master; a direct connection when the master cannot
    serve this board (it is gone, or it could not reach or verify the board: the direct one then says why)."""

    def __init__(self, path: Path, inv, board, key: str, persist: int, accept_new: bool = False):
        self.path, self.inv, self.board, self.key, self.persist = path, inv, board, key, persist
        self.accept_new = accept_new
        self.endpoint = WarmEndpoint(board.name, pythons_for(board))
        self.accepted: list[tuple[str, str]] = []
        self.direct = None  # the ssh.Connection this fell back to
        self._hello: threading.Thread | None = None
        self._up = False

    def start(self) -> None:
        self._hello = threading.Thread(target=self._ask_up, name=f"warm-{self.board.name}", daemon=True)
        self._hello.start()

    def _ask_up(self) -> None:
        try:
            reply = ask(self.path, {"op": "hello", "key": self.key, "inventory": str(self.inv.path.resolve()),
                                    "board": self.board.name, "persist": self.persist}, HELLO_TIMEOUT)
        except Refused:
            reply = None
        self._up = bool(reply and reply.get("ok"))

    def _fall_back(self):
        if self.direct is None:
            from .ssh import Connection, endpoint_for  # paramiko: only now

            self.direct = Connection(endpoint_for(self.inv, self.board), accept_new=self.accept_new)
            self.direct.open()
            self.accepted = self.direct.accepted
            self.endpoint = self.direct.endpoint
            note_direct(self.inv, self.board, self.key, self.persist)
        return self.direct

    @property
    def standby(self) -> bool:
        """Whether board ops should ask for the master's standby interpreters (``remote._start``)."""
        self._wait_hello()
        return self._up and self.direct is None

    def _wait_hello(self) -> None:
        if self._hello is not None:
            self._hello.join()
            self._hello = None

    def channel(self, command: str, standby: bool = False):
        """A channel running ``command``; ``standby``: one the master started beforehand may serve (and it then
        starts the next one for the same line)."""
        self._wait_hello()
        if self._up and self.direct is None:
            chan = self._exec(command, standby)
            if chan is not None:
                return chan
            self._up = False
        return self._fall_back().channel(command)

    def _exec(self, command: str, standby: bool) -> RelayChannel | None:
        try:
            sock = dial(self.path, HELLO_TIMEOUT)
            if sock is None:
                return None
            send_line(sock, {"op": "exec", "key": self.key, "command": command, "standby": standby})
            reply = read_line(sock)
        except (OSError, ValueError):
            return None
        if not reply or not reply.get("ok"):
            sock.close()
            return None
        return RelayChannel(sock)

    def close(self) -> None:
        self._wait_hello()
        if self.direct is not None:
            self.direct.close()


def connect(inv, board, *, accept_new: bool = False, persist: int = 0):
    """The connection a command uses for ``board``: over the project's master when one is up (and the warm
    connection is wanted), else a direct ``ssh.Connection`` (which starts a master as the command exits)."""
    if persist > 0:
        try:
            path, key = socket_path(inv.state_dir), board_key(inv, board)
            if _checked_socket(path):
                return WarmConnection(path, inv, board, key, persist, accept_new)
        except Refused as exc:
            _warn_once(str(exc))
            persist = 0
    from .ssh import Connection, endpoint_for

    conn = Connection(endpoint_for(inv, board), accept_new=accept_new)
    if persist > 0:
        conn.on_open = lambda: note_direct(inv, board, key, persist)
    return conn


_WARNED: set[str] = set()


def _warn_once(text: str) -> None:
    if text not in _WARNED:
        _WARNED.add(text)
        print(f"warning: {text}", file=sys.stderr)


# ---------------------------------------------------------------- starting and asking the master

_PENDING: dict[str, dict] = {}  # key -> the board a direct connection of this command reached
_PENDING_LOCK = threading.Lock()


def note_direct(inv, board, key: str, persist: int) -> None:
    """A direct connection to ``board`` worked: as the command exits, the master is told to keep one warm."""
    with _PENDING_LOCK:
        if not _PENDING:
            atexit.register(hand_over)
        _PENDING[key] = {"key": key, "inventory": str(inv.path.resolve()), "board": board.name, "persist": persist,
                         "state_dir": str(inv.state_dir.resolve())}


def hand_over() -> None:
    """Tell each project's master about the boards this command reached directly; start it if it is not up."""
    with _PENDING_LOCK:
        boards = list(_PENDING.values())
        _PENDING.clear()
    by_project: dict[str, list[dict]] = {}
    for b in boards:
        by_project.setdefault(b["state_dir"], []).append(b)
    for state_dir, group in by_project.items():
        try:
            path = socket_path(Path(state_dir))
            if ask(path, {"op": "warm", "boards": group}) is None:
                spawn(path, state_dir, group)
        except (Refused, OSError):
            continue


def spawn(path: Path, state_dir: str, boards: list[dict]) -> None:
    """Start the project's master (its own session, no terminal, no inherited pipes: a command whose output is
    captured does not wait for it); it connects ``boards`` and exits by itself."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "deploy.link.master"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env=env,
                            start_new_session=True, close_fds=True)
    try:
        proc.stdin.write(json.dumps({"socket": str(path), "state_dir": state_dir, "boards": boards}).encode())
        proc.stdin.close()
    except OSError:
        pass


def info(state_dir: Path) -> dict | None:
    """The project's master: its pid and boards (None: none is up)."""
    return ask(socket_path(state_dir), {"op": "info"})


def drop(state_dir: Path, boards: list[str] | None = None) -> dict | None:
    """Close these boards' warm connections (None: all of them, and the master)."""
    request = {"op": "close"} if boards is None else {"op": "drop", "boards": boards}
    return ask(socket_path(state_dir), request, timeout=15.0)
