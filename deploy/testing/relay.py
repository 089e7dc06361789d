"""A link-shaping TCP relay: loopback made to behave like a LAN or USB link to a real board.

Loopback has no latency and next to no bandwidth limit, so per-file round trips (scp's SFTP
open/write/close per file) cost nothing on a sandbox board and a benchmark there flatters chatty
tools. :class:`Relay` listens on 127.0.0.1 and forwards every connection to a target port, holding
each chunk for ``rtt_ms / 2`` in each direction and, with ``mbit``, pacing each direction to that
many megabits per second (serialisation delay: a chunk leaves once the link would have carried it).

In-process::

    with Relay(target_port=2222, rtt_ms=2) as relay:
        ssh -p {relay.port} ...

As its own process, so its CPU shows in neither the caller's nor the board's figures
(:func:`spawn`, or ``python -m deploy.testing.relay TARGET_PORT --rtt-ms 2 [--mbit 100]``, which
prints the port it listens on as its first line of stdout and relays until it is terminated).

The same server answers on the relay's port, so an SSH client sees the same host key on a second
port: record it for that port too (:meth:`deploy.testing.Project.relay_board`).
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

_CHUNK = 1 << 20  # bytes read at once without a bandwidth limit
_PACED_CHUNK = 16 << 10  # with one: smaller pieces, so pacing stays smooth


class Relay:
    """Forward ``127.0.0.1:<port>`` to ``host:target_port`` with added latency and optional pacing.

    ``port`` is known once the relay is constructed (it binds an ephemeral port at once).
    :meth:`start` serves in a daemon thread; :meth:`serve_forever` in the calling thread.
    :meth:`close` stops accepting and cuts every relayed connection.
    """

    def __init__(self, target_port: int, rtt_ms: float = 0.0, mbit: float | None = None,
                 host: str = "127.0.0.1"):
        if rtt_ms < 0 or (mbit is not None and mbit <= 0):
            raise ValueError("rtt_ms must be >= 0 and mbit > 0")
        self.target = (host, target_port)
        self.delay = rtt_ms / 2000.0  # seconds, each way
        self.bytes_per_s = mbit * 1e6 / 8 if mbit else None
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> Relay:
        threading.Thread(target=self.serve_forever, name=f"relay:{self.port}", daemon=True).start()
        return self

    def serve_forever(self) -> None:
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
            _Direction(self, client, upstream).start()
            _Direction(self, upstream, client).start()

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


class _Direction:
    """One direction of one connection: a reader stamps each chunk with when it may leave, a writer sends it then."""

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket):
        self.relay, self.src, self.dst = relay, src, dst
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.ready = threading.Condition()

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        size = _PACED_CHUNK if self.relay.bytes_per_s else _CHUNK
        while True:
            try:
                data = self.src.recv(size)
            except OSError:
                data = b""
            with self.ready:
                self.queue.append((time.monotonic() + self.relay.delay, data))
                self.ready.notify()
            if not data:
                return

    def _write(self) -> None:
        link_free = 0.0  # when the paced link has finished carrying the previous chunk
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                due, data = self.queue.popleft()
            if self.relay.bytes_per_s and data:
                link_free = max(due, link_free) + len(data) / self.relay.bytes_per_s
                due = link_free
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


class RelayProcess:
    """A relay running as a child process (see :func:`spawn`); :meth:`stop` ends exactly that process."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port

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


def spawn(target_port: int, rtt_ms: float = 0.0, mbit: float | None = None) -> RelayProcess:
    """Start ``python -m deploy.testing.relay`` and return once it listens (its port is known)."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "deploy.testing.relay", str(target_port), "--rtt-ms", str(rtt_ms)]
    if mbit:
        argv += ["--mbit", str(mbit)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"relay did not start (exit {proc.returncode})")
    return RelayProcess(proc, int(line))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.testing.relay", description=__doc__.split("\n")[0])
    ap.add_argument("target_port", type=int, help="port on 127.0.0.1 to relay to")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="added round-trip time (half each way)")
    ap.add_argument("--mbit", type=float, default=None, help="bandwidth each way, megabits per second")
    args = ap.parse_args(argv)
    relay = Relay(args.target_port, args.rtt_ms, args.mbit)
    print(relay.port, flush=True)
    relay.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
