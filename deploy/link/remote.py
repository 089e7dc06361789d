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
import shlex
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..board import protocol
from ..errors import RemoteError

REPLY_TIMEOUT = 120.0  # longest wait for one reply line (the board hashes nothing big before answering)
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


def helper_command(op: str, pythons: tuple[str, ...], app: str | None) -> str:
    """The shell line that runs board operation ``op`` (every word quoted).

    With several interpreter candidates, the board's shell takes the first that exists
    (``command -v``: a builtin, no process per candidate) after the app's env.sh is sourced,
    so an interpreter that env.sh puts on PATH counts; the boot code then checks its version.
    """
    digest, _ = code_archive()
    args = " ".join(shlex.quote(w) for w in ("-I", "-B", "-c", _boot_source(), digest, op))  # -B: boot.py
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

    Reads time out (``REPLY_TIMEOUT``): a board that goes silent, e.g. its cable pulled, turns
    into an error instead of a hang until TCP gives up (which takes many minutes).
    """

    def __init__(self, chan, board: str, op: str):
        self.chan = chan
        self.board = board
        self.op = op
        self.out = chan.makefile("rb", 1 << 16)
        chan.settimeout(REPLY_TIMEOUT)

    def send(self, message: protocol.Message) -> None:
        self.chan.sendall(_line(message))

    def readline(self, timeout: float | None = None) -> bytes:
        """One raw line (b"" at the end); raises RemoteError if nothing arrives within the timeout."""
        if timeout is not None:
            self.chan.settimeout(timeout)
        try:
            return self.out.readline()
        except TimeoutError:
            wait = timeout or REPLY_TIMEOUT
            raise RemoteError(f"{self.board}: no answer to {self.op} for {wait:.0f}s; is the board still reachable?") from None

    def read_obj(self) -> dict:
        """The next line as a JSON object; a board error or a dead channel becomes RemoteError."""
        line = self.readline()
        if not line:
            raise RemoteError(f"{self.board}: {self.op} failed: {self._stderr_tail()}")
        try:
            obj = json.loads(line)
        except ValueError:
            raise RemoteError(f"{self.board}: {self.op}: unexpected output: {line[:200]!r}") from None
        if not isinstance(obj, dict):
            raise RemoteError(f"{self.board}: {self.op}: unexpected output: {line[:200]!r}")
        if "error" in obj:
            raise RemoteError(f"{self.board}: {obj['error']}")
        return obj

    def read(self, cls: type[M]) -> M:
        """The next reply, as message class ``cls``."""
        obj = self.read_obj()
        try:
            return protocol.decode(cls, obj)
        except (TypeError, ValueError) as exc:
            raise RemoteError(f"{self.board}: {self.op}: malformed {cls.__name__}: {exc}") from None

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
        code = self.chan.recv_exit_status()
        err = self.chan.makefile_stderr("rb").read().decode("utf-8", "replace").strip().splitlines()
        if code == 127:
            return "the board's Python interpreter was not found (set python: for this board in the inventory)"
        return (err[-1] if err else f"exit status {code}")[:500]

    def writer(self, counter=None) -> ChannelWriter:
        return ChannelWriter(self.chan, counter)

    def close(self) -> int:
        """Half-close, wait for the board process, close; returns its exit status."""
        try:
            self.chan.shutdown_write()
            return self.chan.recv_exit_status()
        finally:
            close_quietly(self.chan)


def _line(message: protocol.Message) -> bytes:
    """A message as it travels: one JSON line."""
    return (json.dumps(message.to_json()) + "\n").encode()


def close_quietly(chan) -> None:
    """Close a channel whose link may already be gone (cleanup must not replace the real error)."""
    try:
        chan.close()
    except Exception:  # paramiko raises EOFError/SSHException on a dead transport
        pass


def _start(conn, op: str, request: protocol.Message, app: str | None, with_code: bool) -> Call | None:
    """Open the channel, send boot header + request; None when the board asks for the code archive."""
    chan = conn.channel(helper_command(op, conn.endpoint.pythons, app))
    call = Call(chan, conn.endpoint.name, op)
    try:
        if with_code:
            _, archive = code_archive()
            head = b"code %d\n" % len(archive) + archive
        else:
            head = b"cached\n"
        chan.sendall(head + _line(request))
        boot = call.read_obj()
    except BaseException:
        close_quietly(chan)
        raise
    if boot.get("boot") == "ok":
        return call
    close_quietly(chan)
    if boot.get("boot") == "need-code" and not with_code:
        return None
    raise RemoteError(f"{conn.endpoint.name}: {op}: unexpected boot reply {boot!r}")


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

        try:
            # packet-sized pieces: Channel.sendall re-slices the rest of its argument after every
            # 32 KiB packet (s = s[sent:]), which for one 1 MiB bytes object copies ~16 MiB
            with memoryview(self.buf) as view:
                for i in range(0, len(view), PIECE):
                    self.chan.sendall(view[i : i + PIECE].tobytes())
        except (EOFError, paramiko.SSHException) as exc:  # paramiko's ways of saying the link is gone
            raise ConnectionError(f"connection lost: {exc or type(exc).__name__}") from None
        self.sent += len(self.buf)
        if self.counter:
            self.counter(len(self.buf))
        self.buf.clear()

    def close(self) -> None:
        self.flush()
