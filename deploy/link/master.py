"""The master of a project's warm connections (``python -m deploy.link.master``; see ``warm.py``).

Started by a command as it exits, detached, with a JSON request on stdin: its socket, the project's state
folder and the boards to connect. One master per project (an ``flock`` on ``<socket>.lock``: a second one
started meanwhile exits at once). It opens each board's connection itself, with ``ssh.Connection`` and
``accept_new=False``: a host key it cannot verify is never accepted here, the command goes direct instead.

It serves each client connection on a thread of its own; an ``exec`` is three pumps (the client's frames
to the channel, the channel's stdout and stderr to the client), then the exit status. It closes a board's
connection ``persist`` seconds after its last channel ended, or when the connection dies, and exits with
its last one, when its socket is gone or replaced, when the project's folder is gone, or on ``close``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from .. import inventory as inventory_mod
from ..errors import DeployError
from . import remote, warm
from .ssh import Connection, endpoint_for

REAP_S = 1.0  # how often idle and dead connections are looked for
EMPTY_GRACE_S = 3.0
MAX_STANDBY = 4  # standby board interpreters per board (one per app and interpreter line in use)  # a master with no connection left waits this long for a new one before it exits


class Held:
    """One board's warm connection and its use."""

    def __init__(self, conn: Connection, board: str, persist: int):
        self.conn, self.board, self.persist = conn, board, persist
        self.standby: dict[str, object] = {}  # command line -> a channel already running it, waiting for its op
        self.active = 0
        self.used = time.monotonic()
        self.opened = time.time()

    def alive(self) -> bool:
        client = self.conn.client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()


class Master:
    def __init__(self, path: Path, state_dir: Path):
        self.path, self.state_dir = path, state_dir
        self.lock = threading.Lock()
        self.held: dict[str, Held] = {}
        self.opening: dict[str, threading.Lock] = {}
        self.closing = threading.Event()
        self.started = time.time()
        self.inode: int | None = None
        self.empty_since = time.monotonic()

    # ------------------------------------------------------------ connections

    def connection(self, key: str, inventory: str | None = None, board: str | None = None,
                   persist: int = warm.PERSIST_S) -> Held:
        """The live connection for ``key``, opened (once, whoever asks meanwhile waits) when the request
        names the board and its inventory; DeployError when it cannot be opened or verified."""
        with self.lock:
            gate = self.opening.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                held = self.held.get(key)
            if held is not None and held.alive():
                if persist:
                    held.persist = persist
                return held
            if held is not None:
                self._forget(key)
            if not inventory or not board:
                raise DeployError("no such warm connection")
            held = Held(self._open(key, Path(inventory), board), board, persist)
            with self.lock:
                self.held[key] = held
            return held

    def _open(self, key: str, inventory: Path, name: str) -> Connection:
        inv = inventory_mod.load(inventory)
        board = inv.boards.get(name)
        if board is None or warm.board_key(inv, board) != key:
            raise DeployError(f"{name}: the inventory changed; connect directly")
        conn = Connection(endpoint_for(inv, board), accept_new=False)
        conn.open()
        return conn

    def _forget(self, key: str) -> None:
        with self.lock:
            held = self.held.pop(key, None)
        if held is not None:
            held.conn.close()

    # ------------------------------------------------------------ serving

    def handle(self, sock: socket.socket) -> None:
        try:
            if warm.peer_uid(sock) != os.getuid():
                return
            sock.settimeout(10.0)
            req = warm.read_line(sock)
            if req is None:
                return
            op = req.get("op")
            if op == "exec":
                self._exec(sock, req)
            else:
                warm.send_line(sock, self._answer(op, req))
        except Exception:  # noqa: BLE001 - one client's trouble never ends the master
            pass
        finally:
            sock.close()

    def _answer(self, op: str, req: dict) -> dict:
        if op == "hello":
            try:
                held = self._requested(req)
            except (DeployError, KeyError, ValueError, TypeError) as exc:
                return {"ok": False, "error": str(exc)[:500]}
            ep = held.conn.endpoint
            return {"ok": True, "board": ep.name, "host_id": ep.host_id, "route": ep.route}
        if op == "warm":
            self.warm(req.get("boards") or [])
            return {"ok": True}
        if op == "info":
            return self.info()
        if op == "drop":
            names = set(req.get("boards") or [])
            with self.lock:
                keys = [k for k, h in self.held.items() if h.board in names]
            for k in keys:
                self._forget(k)
            return {"ok": True, "dropped": len(keys)}
        if op == "close":
            self.closing.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def warm(self, boards: list) -> None:
        """Connect these boards (each ``{key, inventory, board, persist}``), each on a thread of its own."""
        for b in boards:
            if isinstance(b, dict):
                threading.Thread(target=self._warm_one, args=(b,), daemon=True).start()

    def _requested(self, b: dict) -> Held:
        """The connection a ``hello`` or ``warm`` request names (``{key, inventory, board, persist}``)."""
        return self.connection(str(b["key"]), str(b["inventory"]), str(b["board"]), int(b["persist"]))

    def _warm_one(self, b: dict) -> None:
        try:
            self._requested(b)
        except Exception:  # noqa: BLE001 - a board that cannot be warmed stays cold: its next command goes direct
            pass

    def info(self) -> dict:
        now = time.monotonic()
        with self.lock:
            boards = [{"board": h.board, "host_id": h.conn.endpoint.host_id, "route": h.conn.endpoint.route,
                       "channels": h.active, "idle_s": round(now - h.used, 1) if not h.active else 0.0,
                       "persist_s": h.persist, "age_s": round(time.time() - h.opened, 1), "alive": h.alive()}
                      for h in self.held.values()]
        return {"ok": True, "pid": os.getpid(), "socket": str(self.path), "project": str(self.state_dir.parent),
                "age_s": round(time.time() - self.started, 1), "boards": sorted(boards, key=lambda b: b["board"])}

    def _exec(self, sock: socket.socket, req: dict) -> None:
        try:
            held = self.connection(str(req.get("key")))
            command = str(req["command"])
            chan = self._take_standby(held, command) if req.get("standby") else None
            if chan is None:
                chan = held.conn.channel(command)
            if req.get("standby"):
                threading.Thread(target=self._prepare_standby, args=(held, command), daemon=True).start()
        except Exception as exc:  # noqa: BLE001 - DeployError, paramiko's SSHException and kin: the client goes direct
            warm.send_line(sock, {"ok": False, "error": str(exc)[:500]})
            return
        with self.lock:
            held.active += 1
        try:
            warm.send_line(sock, {"ok": True})
            sock.settimeout(None)
            _pump(sock, chan)
        finally:
            with self.lock:
                held.active -= 1
                held.used = time.monotonic()

    def _take_standby(self, held: Held, command: str):
        """The standby channel running ``command``, if one is ready and still waiting (else None)."""
        with self.lock:
            chan = held.standby.pop(command, None)
        if chan is None or chan.closed or chan.exit_status_ready() or chan.recv_ready():
            if chan is not None:
                chan.close()
            return None
        return chan

    def _prepare_standby(self, held: Held, command: str) -> None:
        """Start the next standby for ``command`` (the board's interpreter starts and loads its code meanwhile);
        at most ``MAX_STANDBY`` command lines per board, the oldest closed first."""
        try:
            chan = held.conn.channel(command)
        except Exception:  # noqa: BLE001 - no standby: the next op starts its interpreter itself
            return
        with self.lock:
            old = [held.standby.pop(command, None)]
            held.standby[command] = chan
            while len(held.standby) > MAX_STANDBY:
                old.append(held.standby.pop(next(iter(held.standby))))
        for c in old:
            if c is not None:
                c.close()

    # ------------------------------------------------------------ life

    def reap(self) -> bool:
        """Close idle and dead connections; whether the master should go on."""
        now = time.monotonic()
        with self.lock:
            gone = [k for k, h in self.held.items()
                    if not h.active and (now - h.used > h.persist or not h.alive())]
        for k in gone:
            self._forget(k)
        with self.lock:
            if self.held:
                self.empty_since = now
            empty = not self.held and now - self.empty_since > EMPTY_GRACE_S
        return not (empty or self.closing.is_set() or not self._socket_is_mine() or not self.state_dir.is_dir())

    def _socket_is_mine(self) -> bool:
        try:
            return os.lstat(self.path).st_ino == self.inode
        except OSError:
            return False

    def serve(self, server: socket.socket) -> None:
        self.inode = os.lstat(self.path).st_ino
        server.settimeout(REAP_S)
        while self.reap():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self.handle, args=(client,), daemon=True).start()

    def shutdown(self) -> None:
        if self._socket_is_mine():
            try:
                self.path.unlink()
            except OSError:
                pass
        with self.lock:
            keys = list(self.held)
        for k in keys:
            self._forget(k)


def _pump(sock: socket.socket, chan) -> None:
    """Relay one exec: client frames to the channel, stdout and stderr back, then the exit status (none when
    the board's connection died: the client reads that as a lost link)."""

    def up():
        try:
            while (frame := warm.recv_frame(sock)) is not None:
                kind, data = frame
                if kind == b"D":
                    chan.sendall(data)
                elif kind == b"F":
                    chan.shutdown_write()
        except Exception:  # noqa: BLE001 - the channel or the client went away
            pass
        chan.close()  # the client hung up (or stopped writing for good and left)

    def down(kind: bytes, read) -> None:
        try:
            while data := read(warm.FRAME):
                with send:
                    warm.send_frame(sock, kind, data)
            with send:
                warm.send_frame(sock, kind)
        except (OSError, EOFError):
            chan.close()

    send = threading.Lock()
    threading.Thread(target=up, daemon=True).start()
    err = threading.Thread(target=down, args=(b"E", chan.recv_stderr), daemon=True)
    err.start()
    down(b"O", chan.recv)
    err.join()
    chan.status_event.wait()
    if chan.exit_status == -1 and remote.link_lost(chan.get_transport()):
        return  # the link died: no status, the client says the connection was lost
    try:
        with send:
            warm.send_frame(sock, b"X", struct.pack(">i", chan.recv_exit_status()))
    except OSError:
        pass


def main() -> int:
    req = json.loads(sys.stdin.read() or "{}")
    path, state_dir = Path(req["socket"]), Path(req["state_dir"])
    os.umask(0o077)
    try:
        warm.private_dir()
    except warm.Refused:
        return 1
    lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another master of this project is up (or starting)
    master = Master(path, state_dir)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(f".{os.getpid()}")  # shorter than the final name: fits sun_path too
    server.bind(str(tmp))  # 0600 from its first moment (umask), in a 0700 folder
    server.listen(64)
    os.replace(tmp, path)
    master.warm(req.get("boards") or [])
    try:
        master.serve(server)
    finally:
        server.close()
        master.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
