"""A link-shaping TCP relay: loopback made to behave like a LAN or USB link to a real board.

Loopback has no latency and next to no bandwidth limit, so per-file round trips (scp's SFTP
open/write/close per file) cost nothing on a sandbox board and a benchmark there flatters chatty
tools. :class:`Relay` listens on 127.0.0.1 and forwards every connection to a target port, holding
each chunk for ``rtt_ms / 2`` in each direction.

With ``mbit`` (and ``mbit_down`` for the board-to-client direction, default the same), each
direction is one link of that many megabits per second **shared by every connection through the
relay**, as the one cable to a board is: two parallel transfers get half the rate each, not twice
the link. A chunk leaves once the link would have carried it (serialisation delay after the
propagation delay), and each connection buffers at most ``buffer_ms`` of link time in the relay
(default 50 ms, like a switch port); beyond that the relay stops reading, so the sender's TCP
window fills and its writes block as they would on the real link, instead of the whole transfer
vanishing into the relay's memory at loopback speed. Without a limit nothing changes: no pacing,
no bound (the SSH channel window bounds what is in flight).

In-process::

    with Relay(target_port=2222, rtt_ms=2, mbit=100) as relay:
        ssh -p {relay.port} ...
        relay.stats()  # {"up": bytes client->target, "down": target->client, "connections": n, "open": n}

As its own process, so its CPU shows in neither the caller's nor the board's figures
(:func:`spawn`, or ``python -m deploy.testing.relay TARGET_PORT --rtt-ms 2 [--mbit 100]
[--mbit-down 100] [--stats FILE]``, which prints the port it listens on as its first line of
stdout and relays until it is terminated). With ``--stats FILE`` the counters are written to FILE
as JSON whenever a connection opens or closes (:meth:`RelayProcess.stats` reads them).

With ``cut_after`` a connection is cut (a TCP reset both ways, as when a board loses power or its
cable) once more than that many bytes went from the client to the target on it: a board that
drops in the middle of a push, at a chosen point.

The same server answers on the relay's port, so an SSH client sees the same host key on a second
port: record it for that port too (:meth:`deploy.testing.Project.relay_board`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

_CHUNK = 1 << 20  # bytes read at once without a bandwidth limit
_PACED_CHUNK = 128 << 10  # with one: at most this, and about 10 ms of the link, so pacing stays smooth
_PACED_MIN = 4 << 10


class _Link:
    """One direction of the relay's link: a rate in bytes/s shared by every connection, and when it is next free."""

    def __init__(self, bytes_per_s: float | None):
        self.bytes_per_s = bytes_per_s
        self.free_at = 0.0  # monotonic time the link has finished carrying what was given to it
        self.lock = threading.Lock()
        self.bytes = 0  # relayed so far in this direction (all connections)

    def reserve(self, ready: float, size: int) -> float:
        """When ``size`` bytes that may leave at ``ready`` have been carried (accounted at once)."""
        with self.lock:
            self.bytes += size
            if not self.bytes_per_s:
                return ready
            self.free_at = max(ready, self.free_at) + size / self.bytes_per_s
            return self.free_at


class Relay:
    """Forward ``127.0.0.1:<port>`` to ``host:target_port`` with added latency and optional pacing.

    ``mbit`` paces the client-to-target direction and, unless ``mbit_down`` is given, the
    target-to-client one too; each direction is shared by all connections (one link).
    ``port`` is known once the relay is constructed (it binds an ephemeral port at once).
    :meth:`start` serves in a daemon thread; :meth:`serve_forever` in the calling thread.
    :meth:`close` stops accepting and cuts every relayed connection.
    """

    def __init__(self, target_port: int, rtt_ms: float = 0.0, mbit: float | None = None,
                 host: str = "127.0.0.1", *, mbit_down: float | None = None, buffer_ms: float = 50.0,
                 stats_file: str | Path | None = None, cut_after: int | None = None):
        if rtt_ms < 0 or any(m is not None and m <= 0 for m in (mbit, mbit_down)) or buffer_ms <= 0:
            raise ValueError("rtt_ms must be >= 0, mbit and mbit_down > 0, buffer_ms > 0")
        self.target = (host, target_port)
        self.delay = rtt_ms / 2000.0  # seconds, each way
        up = mbit * 1e6 / 8 if mbit else None
        down = mbit_down * 1e6 / 8 if mbit_down else up
        self.up, self.down = _Link(up), _Link(down)
        self.buffer_s = buffer_ms / 1000.0
        self.bytes_per_s = up  # kept for callers that read it: the client-to-target rate
        self.stats_file = Path(stats_file) if stats_file else None
        self.cut_after = cut_after
        self.cuts = 0  # connections cut so far
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._connections = 0
        self._open = 0

    def start(self) -> Relay:
        threading.Thread(target=self.serve_forever, name=f"relay:{self.port}", daemon=True).start()
        return self

    def _stats_ticker(self, every: float = 0.1) -> None:
        last = None
        while not self._closed:
            time.sleep(every)
            now = (self.up.bytes, self.down.bytes)
            if now != last:
                self._write_stats()
                last = now

    def serve_forever(self) -> None:
        self._write_stats()
        if self.stats_file is not None:  # connections may stay open (warm connections): the counters go out anyway
            threading.Thread(target=self._stats_ticker, name=f"relay-stats:{self.port}", daemon=True).start()
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self._connections += 1
                self._open += 1
            self._write_stats()
            pair = _Pair(self, client, upstream)
            _Direction(self, self.up, client, upstream, pair, cut_after=self.cut_after).start()
            _Direction(self, self.down, upstream, client, pair).start()

    def stats(self) -> dict:
        """Bytes relayed each way so far (all connections), connections accepted, those still open, those cut."""
        with self._lock:
            return {"up": self.up.bytes, "down": self.down.bytes, "connections": self._connections, "open": self._open,
                    "cuts": self.cuts}

    def _closed_pair(self, pair: _Pair) -> None:
        with self._lock:
            self._open -= 1
            for s in (pair.a, pair.b):
                if s in self._sockets:
                    self._sockets.remove(s)
        for s in (pair.a, pair.b):
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a reader still blocked in recv()
            except OSError:
                pass
            s.close()
        self._write_stats()

    def _write_stats(self) -> None:
        if self.stats_file is None:
            return
        with self._lock:  # one writer at a time: the rename is atomic, the temporary name is shared
            tmp = self.stats_file.with_name(self.stats_file.name + ".tmp")
            stats = {"up": self.up.bytes, "down": self.down.bytes, "connections": self._connections, "open": self._open}
            tmp.write_text(json.dumps(stats))
            os.replace(tmp, self.stats_file)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        except OSError:
            pass
        self._listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Pair:
    """The two sockets of one relayed connection; closed (and counted) once both directions have ended."""

    def __init__(self, relay: Relay, a: socket.socket, b: socket.socket):
        self.relay, self.a, self.b = relay, a, b
        self.left = 2
        self.lock = threading.Lock()

    def cut(self) -> None:
        """Reset both sockets (SO_LINGER 0): each end sees its connection drop, not an orderly close."""
        for s in (self.a, self.b):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.relay._lock:
            self.relay.cuts += 1

    def direction_done(self) -> None:
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self.relay._closed_pair(self)


class _Direction:
    """One direction of one connection: a reader stamps each chunk with when it may leave, a writer sends it then.

    On a paced link the reader stops reading while more than the relay's ``buffer_s`` of link time is
    queued, so the sender's TCP window fills and the sender feels the link.
    """

    def __init__(self, relay: Relay, link: _Link, src: socket.socket, dst: socket.socket, pair: _Pair,
                 cut_after: int | None = None):
        self.relay, self.link, self.src, self.dst, self.pair = relay, link, src, dst, pair
        self.cut_after = cut_after
        self.count = 0  # bytes read from src
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0  # bytes in the queue
        self.limit = max(2 * _PACED_CHUNK, int(link.bytes_per_s * relay.buffer_s)) if link.bytes_per_s else None
        self.ready = threading.Condition()
        self.done = False  # the writer has ended: nothing more will be sent

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        rate = self.link.bytes_per_s
        size = min(_PACED_CHUNK, max(_PACED_MIN, int(rate * 0.01))) if rate else _CHUNK
        while True:
            if self.limit is not None:
                with self.ready:
                    while self.queued > self.limit and not (self.done or self.relay._closed):
                        self.ready.wait(0.5)
            if self.done:
                return
            try:
                data = self.src.recv(size)
            except OSError:
                data = b""
            self.count += len(data)
            if self.cut_after is not None and self.count > self.cut_after:
                self.pair.cut()
                data = b""
            with self.ready:
                self.queue.append((time.monotonic() + self.relay.delay, data))
                self.queued += len(data)
                self.ready.notify_all()
            if not data:
                return

    def _write(self) -> None:
        try:
            while True:
                with self.ready:
                    while not self.queue:
                        self.ready.wait()
                    due, data = self.queue[0]
                if data:
                    due = self.link.reserve(due, len(data))
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        self.dst.shutdown(socket.SHUT_WR)
                        return
                    self.dst.sendall(data)
                except OSError:
                    return
                finally:
                    with self.ready:
                        self.queue.popleft()
                        self.queued -= len(data)
                        self.ready.notify_all()
        finally:
            with self.ready:
                self.done = True
                self.ready.notify_all()
            self.pair.direction_done()


class RelayProcess:
    """A relay running as a child process (see :func:`spawn`); :meth:`stop` ends exactly that process."""

    def __init__(self, proc: subprocess.Popen, port: int, stats_file: Path | None = None):
        self.proc = proc
        self.port = port
        self.stats_file = stats_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self, settle: float = 2.0, quiet: float = 0.3) -> dict:
        """The relay's counters (spawned with ``stats=``), once no connection is open or, with one left open (a
        warm connection), once they have not moved for ``quiet`` seconds (at most ``settle`` s)."""
        if self.stats_file is None:
            raise RuntimeError("relay spawned without stats")
        deadline = time.monotonic() + settle
        seen, since = None, time.monotonic()
        while True:
            try:
                s = json.loads(self.stats_file.read_text())
            except (OSError, ValueError):
                s = None
            now = time.monotonic()
            if s is not None and (s["up"], s["down"]) != seen:
                seen, since = (s["up"], s["down"]), now
            if s is not None and (s["open"] == 0 or now - since >= quiet or now > deadline):
                return s
            if now > deadline:
                raise RuntimeError(f"relay {self.port}: no stats in {self.stats_file}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(target_port: int, rtt_ms: float = 0.0, mbit: float | None = None, *, mbit_down: float | None = None,
          buffer_ms: float | None = None, stats: str | Path | None = None) -> RelayProcess:
    """Start ``python -m deploy.testing.relay`` and return once it listens (its port is known).

    ``stats``: a file (the caller's, e.g. in its temporary directory) for the byte counters, read back
    with :meth:`RelayProcess.stats`."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "deploy.testing.relay", str(target_port), "--rtt-ms", str(rtt_ms)]
    if mbit:
        argv += ["--mbit", str(mbit)]
    if mbit_down:
        argv += ["--mbit-down", str(mbit_down)]
    if buffer_ms:
        argv += ["--buffer-ms", str(buffer_ms)]
    stats_file = Path(stats) if stats else None
    if stats_file is not None:
        stats_file.unlink(missing_ok=True)
        argv += ["--stats", str(stats_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"relay did not start (exit {proc.returncode})")
    return RelayProcess(proc, int(line), stats_file)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.testing.relay", description=__doc__.split("\n")[0])
    ap.add_argument("target_port", type=int, help="port on 127.0.0.1 to relay to")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="added round-trip time (half each way)")
    ap.add_argument("--mbit", type=float, default=None,
                    help="bandwidth each way (client to target, and back unless --mbit-down), megabits per second, "
                         "shared by all connections")
    ap.add_argument("--mbit-down", type=float, default=None, help="bandwidth target to client, if not --mbit")
    ap.add_argument("--buffer-ms", type=float, default=50.0, help="link time buffered per connection and direction")
    ap.add_argument("--stats", default=None, help="write the byte counters to this file (JSON) as connections come and go")
    args = ap.parse_args(argv)
    relay = Relay(args.target_port, args.rtt_ms, args.mbit, mbit_down=args.mbit_down, buffer_ms=args.buffer_ms,
                  stats_file=args.stats)
    print(relay.port, flush=True)
    relay.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
