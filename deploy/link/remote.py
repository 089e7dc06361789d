"""The host end of the board protocol: ``call(conn, op, request) -> reply`` and multi-step sessions.

How the board code travels (Ansible's module transport, cached): the command line carries only
``boot.py`` (about 4 KB) plus the code archive's sha256 and the op; the archive itself (the
``deploy/board`` package, zipped, about 19 KB) goes on stdin only when the board does not have
that version yet, and is kept there in ``~/.cache/atlas-deploy/board/<sha256>/``. So a board op
is one round trip, and the code's size is not capped by the kernel's argv limit.

Every reply is typed (``deploy.board.protocol``); an ``{"error": ...}`` line from the board, a
dead channel or a silent board (``REPLY_TIMEOUT``) becomes a ``RemoteError``. Sessions close their
channel on every path.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import shlex
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..board import protocol
from ..errors import RemoteError

REPLY_TIMEOUT = 120.0  # longest wait for one whole reply line (the board hashes nothing big before answering)
MAX_LINE = 8 << 20  # longest reply line (a status of many runs is ~50 KiB, a push plan's ~30 KiB)
WINDOW = 1 << 20  # bulk bytes: each WINDOW (or the rest) within REPLY_TIMEOUT, a floor of ~8.7 KB/s
EXIT_WAIT = 5.0  # how long a failed operation's exit status is waited for before saying "unknown"
PIECE = 32 * 1024  # OpenSSH's maximum channel packet
BOARD_DIR = Path(__file__).parents[1] / "board"

M = TypeVar("M", bound=protocol.Message)


@functools.cache
def code_archive() -> tuple[str, bytes]:
    """(sha256, zip bytes) of the board package as ``deploy_board/``; deterministic for the same sources."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(BOARD_DIR.glob("*.py")):
            if path.name != "boot.py":
                info = zipfile.ZipInfo(f"deploy_board/{path.name}", date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


@functools.cache
def _boot_source() -> str:
    return (BOARD_DIR / "boot.py").read_text()


def env_prefix(app: str | None) -> str:
    """Shell words that put a command in the app's environment, whatever ~/.bashrc does."""
    if not app:
        return 'cd "$HOME" && '
    env = f'"$HOME"/HIAI_PROJECTS/{shlex.quote(app)}/env.sh'
    return f'cd "$HOME" && {{ if [ -r {env} ]; then . {env}; fi; }} && '


def user_command(app: str, argv: list[str], workdir: str | None = None) -> str:
    """``deploy exec``: run argv in the current release directory (an own app: its workdir in the release's
    tree) with env.sh sourced."""
    cur = f'"$HOME"/HIAI_PROJECTS/{shlex.quote(app)}/current'
    if workdir:
        cur += "/" + shlex.quote(workdir)
    words = " ".join(shlex.quote(a) for a in argv)
    return env_prefix(app) + f"{{ cd {cur} 2>/dev/null || true; }} && {words}"


def helper_command(op: str, pythons: tuple[str, ...], app: str | None) -> str:
    """The shell line that runs board operation ``op`` (every word quoted); op "-": a standby (boot.py), told
    its op on stdin.

    With several interpreter candidates, the board's shell takes the first that exists
    (``command -v``: a builtin, no process per candidate) after the app's env.sh is sourced,
    so an interpreter that env.sh puts on PATH counts; the boot code then checks its version.
    """
    digest, _ = code_archive()
    words = ("-I", "-B", "-c", _boot_source(), digest, op) + ((app or "",) if op == "-" else ())
    args = " ".join(shlex.quote(w) for w in words)  # -B: boot.py
    if len(pythons) == 1:
        return env_prefix(app) + f"{shlex.quote(pythons[0])} {args}"
    tried = ", ".join(pythons)
    missing = json.dumps({"error": f"no Python interpreter on the board (tried {tried}); set python: for this board"})
    loop = " ".join(shlex.quote(p) for p in pythons)
    return (
        env_prefix(app)
        + f'for p in {loop}; do if command -v "$p" >/dev/null 2>&1; then exec "$p" {args}; fi; done; '
        + f"echo {shlex.quote(missing)}; exit 127"
    )


class Call:
    """One running board operation: typed JSON lines both ways, then optional bulk bytes.

    Nothing a board sends is trusted to end: every reply line has a length cap (``MAX_LINE``) and a
    deadline for the whole line (``REPLY_TIMEOUT`` unless the caller gives another), not only for each
    read, so a board that goes silent, or sends one byte a minute, or a line that never ends, becomes a
    one-line RemoteError instead of a hang or a host out of memory. Bulk bytes (``bulk``) must keep
    coming at ``WINDOW`` bytes per ``REPLY_TIMEOUT`` at least, and never more than their announced size.
    """

    def __init__(self, chan, board: str, op: str):
        self.chan = chan
        self.board = board
        self.op = op
        self.buf = bytearray()  # received, not yet consumed
        self.waited = REPLY_TIMEOUT  # the deadline being waited for, for the error
        chan.settimeout(REPLY_TIMEOUT)

    def send(self, message: protocol.Message) -> None:
        self.chan.sendall(_line(message))

    def recv(self, deadline: float, n: int = 1 << 16) -> bool:
        """Append what the board sends next (up to ``n`` bytes) to ``buf``; False at the end of the stream.
        RemoteError when nothing arrives before ``deadline`` (``time.monotonic``; ``math.inf``: no deadline)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        self.chan.settimeout(None if left == math.inf else left)
        try:
            data = self.chan.recv(n)
        except TimeoutError:
            raise self.timed_out() from None
        self.buf += data
        return bool(data)

    def timed_out(self) -> RemoteError:
        return RemoteError(f"{self.board}: no answer to {self.op} for {self.waited:.0f}s (a whole reply); is the "
                           "board still reachable?")

    def readline(self, timeout: float | None = None, limit: int = MAX_LINE) -> bytes:
        """One raw line (b"" at the end, a partial line if the stream ends in one). RemoteError if it is not
        complete within ``timeout`` seconds (None: ``REPLY_TIMEOUT``; ``math.inf``: none) or longer than
        ``limit`` bytes."""
        self.waited = REPLY_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + self.waited
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > limit:
                raise RemoteError(f"{self.board}: {self.op}: the board sent a line longer than {limit >> 20} MiB; "
                                  "refusing the rest")
            start = len(self.buf)
            if not self.recv(deadline):
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_obj(self, timeout: float | None = None) -> dict:
        """The next line as a JSON object; a board error or a dead channel becomes RemoteError."""
        line = self.readline(timeout)
        if not line:
            raise RemoteError(f"{self.board}: {self.op} failed: {self._stderr_tail()}")
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            raise RemoteError(f"{self.board}: {self.op}: unexpected output: {line[:200]!r}") from None
        if not isinstance(obj, dict):
            raise RemoteError(f"{self.board}: {self.op}: unexpected output: {line[:200]!r}")
        if "error" in obj:
            raise RemoteError(f"{self.board}: {str(obj['error'])[:2000]}")
        return obj

    def read(self, cls: type[M], timeout: float | None = None) -> M:
        """The next reply, as message class ``cls`` (every field of the type its annotation says)."""
        obj = self.read_obj(timeout)
        try:
            return protocol.decode(cls, obj)
        except (TypeError, ValueError, RecursionError) as exc:
            raise RemoteError(f"{self.board}: {self.op}: malformed {cls.__name__}: {str(exc)[:300]}") from None

    def bulk(self, size: int, on_bytes=None) -> Bulk:
        """The bulk bytes that follow a reply, as a file to ``read``: at most ``size`` bytes, at a rate floor."""
        return Bulk(self, size, on_bytes)

    def error_after_stream(self, wait: float = 10.0) -> str | None:
        """The error line a board wrote before it stopped reading bytes we were sending it (its disk is full,
        an object arrived corrupted), as one line naming the board; None when it wrote none."""
        try:
            obj = json.loads(self.readline(wait) or b"null")
        except (RemoteError, ValueError):
            return None
        if isinstance(obj, dict) and "error" in obj:
            return f"{self.board}: {obj['error']}"
        return None

    def _stderr_tail(self) -> str:
        """Why the board's process ended: its exit status and last stderr line (bounded: waits at most
        ``EXIT_WAIT`` seconds, keeps the last 64 KiB)."""
        code = exit_status(self.chan, EXIT_WAIT)
        err = stderr_tail(self.chan).decode("utf-8", "replace").strip().splitlines()
        if code == 127:
            return "the board's Python interpreter was not found (set python: for this board in the inventory)"
        return (err[-1] if err else f"exit status {code if code is not None else 'unknown'}")[:500]

    def writer(self, counter=None) -> ChannelWriter:
        return ChannelWriter(self.chan, counter)

    def close(self) -> int | None:
        """Half-close, wait for the board process (``REPLY_TIMEOUT`` at most), close; its exit status or None."""
        try:
            self.chan.shutdown_write()
            return exit_status(self.chan, REPLY_TIMEOUT)
        finally:
            close_quietly(self.chan)


class Bulk:
    """Bytes that follow a reply (a tar stream, journal records), read as a file: ``read(n)`` gives at most
    ``n`` bytes, b"" at the end of the stream or once ``size`` bytes were read (``exhausted``: what follows is
    not read, so the operation's next reply stays in place). Every ``WINDOW`` bytes (or the rest) must arrive
    within ``REPLY_TIMEOUT``: a board that trickles is cut off with a RemoteError."""

    def __init__(self, call: Call, size: int, on_bytes=None):
        self.call = call
        self.left = size
        self.size = size
        self.on_bytes = on_bytes
        self.window = 0
        self.deadline = time.monotonic() + REPLY_TIMEOUT

    @property
    def exhausted(self) -> bool:
        return self.left == 0

    def read(self, n: int = -1) -> bytes:
        c = self.call
        n = self.left if n < 0 else min(n, self.left)
        if n <= 0:
            return b""
        if not c.buf:
            c.waited = REPLY_TIMEOUT
            if not c.recv(self.deadline, min(max(n, 1 << 16), 1 << 20)):
                return b""
        data = bytes(c.buf[:n])
        del c.buf[:n]
        self.left -= len(data)
        self.window += len(data)
        if self.window >= WINDOW:
            self.window = 0
            self.deadline = time.monotonic() + REPLY_TIMEOUT
        if self.on_bytes and data:
            self.on_bytes(len(data))
        return data


def link_lost(transport) -> bool:
    """Whether a send failed because the SSH connection itself is gone, not only this channel.

    paramiko closes the channels of a dead connection a moment before it marks the transport
    inactive, so give its reader thread up to a second to finish (only on this failure path).
    """
    if transport is None:
        return True
    transport.join(1.0)
    return not transport.is_active()


def exit_status(chan, wait: float) -> int | None:
    """The board process's exit status, waiting at most ``wait`` seconds (None: it did not exit by then)."""
    if not chan.status_event.wait(wait):
        return None
    return chan.recv_exit_status()


def stderr_tail(chan, limit: int = 1 << 16) -> bytes:
    """The last ``limit`` bytes of what the board wrote on stderr so far (never waits; reads 4x ``limit``
    at most, so a board flooding stderr cannot keep the host here)."""
    data = bytearray()
    for _ in range(4 * limit // (1 << 15)):
        if not chan.recv_stderr_ready():
            break
        data += chan.recv_stderr(1 << 15)
        del data[:-limit]
    return bytes(data)


def _line(message: protocol.Message) -> bytes:
    """A message as it travels: one JSON line."""
    return (json.dumps(message.to_json()) + "\n").encode()


def close_quietly(chan) -> None:
    """Close a channel whose link may already be gone (cleanup must not replace the real error)."""
    try:
        chan.close()
    except Exception:  # paramiko raises EOFError/SSHException on a dead transport
        pass


def _start(conn, op: str, request: protocol.Message, app: str | None, with_code: bool,
           standby: bool | None = None) -> Call | None:
    """Open the channel, send boot header + request; None when the board asks for the code archive.

    On a warm connection (``conn.standby``) the op travels on stdin (``op NAME``) to a board interpreter the
    master started beforehand with the same command line, already past its start-up and imports; a standby
    whose env.sh changed since says "stale", and the op starts afresh."""
    standby = getattr(conn, "standby", False) if standby is None else standby
    if standby:
        chan = conn.channel(helper_command("-", conn.endpoint.pythons, app), standby=True)
    else:
        chan = conn.channel(helper_command(op, conn.endpoint.pythons, app))
    call = Call(chan, conn.endpoint.name, op)
    try:
        if with_code:
            _, archive = code_archive()
            head = b"code %d\n" % len(archive) + archive
        else:
            head = b"cached\n"
        chan.sendall((b"op %s\n" % op.encode() if standby else b"") + head + _line(request))
        boot = call.read_obj()
    except BaseException:
        close_quietly(chan)
        raise
    if boot.get("boot") == "ok":
        return call
    close_quietly(chan)
    if boot.get("boot") == "stale" and standby:
        return _start(conn, op, request, app, with_code, standby=False)
    if boot.get("boot") == "need-code" and not with_code:
        return None
    raise RemoteError(f"{conn.endpoint.name}: {op}: unexpected boot reply {str(boot)[:200]}")


@contextmanager
def session(conn, op: str, request: protocol.Message, *, app: str | None = None) -> Iterator[Call]:
    """A board operation with more than one exchange (push, run, pull); the channel is always closed.

    ``app`` sources that app's env.sh first (the agent and ``import acl`` need it).
    """
    # optimistic: the board usually has this code version already; if not, one more round trip
    call = _start(conn, op, request, app, with_code=False) or _start(conn, op, request, app, with_code=True)
    try:
        yield call
    finally:
        close_quietly(call.chan)


def call(conn, op: str, request: protocol.Message, *, app: str | None = None):
    """One request, one typed reply (``protocol.OPERATIONS[op][1]``)."""
    with session(conn, op, request, app=app) as c:
        reply = c.read(protocol.OPERATIONS[op][1])
        c.close()
    return reply


class ChannelWriter:
    """A write-only file over a channel with a large buffer, so tar's small writes become big packets."""

    def __init__(self, chan, counter=None, bufsize: int = 1 << 20):
        self.chan = chan
        self.buf = bytearray()
        self.bufsize = bufsize
        self.counter = counter
        self.sent = 0

    def write(self, data) -> int:
        self.buf += data
        if len(self.buf) >= self.bufsize:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if not self.buf:
            return
        import paramiko

        deadline = time.monotonic() + REPLY_TIMEOUT  # the whole buffer (1 MiB), not each packet: a floor rate
        try:
            # packet-sized pieces: Channel.sendall re-slices the rest of its argument after every
            # 32 KiB packet (s = s[sent:]), which for one 1 MiB bytes object copies ~16 MiB
            with memoryview(self.buf) as view:
                for i in range(0, len(view), PIECE):
                    self.chan.settimeout(max(0.001, deadline - time.monotonic()))
                    self.chan.sendall(view[i : i + PIECE].tobytes())
        except TimeoutError:
            raise ConnectionError(f"the board took in less than {len(self.buf)} bytes in {REPLY_TIMEOUT:.0f}s") from None
        except (EOFError, paramiko.SSHException) as exc:  # paramiko's ways of saying the link is gone
            raise ConnectionError(f"connection lost: {exc or type(exc).__name__}") from None
        finally:
            self.chan.settimeout(REPLY_TIMEOUT)
        self.sent += len(self.buf)
        if self.counter:
            self.counter(len(self.buf))
        self.buf.clear()

    def close(self) -> None:
        self.flush()
