"""Issue 23: the host's parsers of what a board sends, fuzzed. Reply lines (``remote.Call`` over a channel that
replays bytes, for every reply class, then rendered), the tar reader of a pull, agent events and journal
streams get random and mutated inputs from a seeded loop. Each case must end in success or the parser's own
one-line error: never another exception, never a hang (the whole loop is timed), never unbounded memory
(``tracemalloc``'s peak), never a file outside the destination.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from rich.console import Console

from agent import protocol as events
from deploy.board import protocol
from deploy.cli import render
from deploy.errors import RemoteError, ServiceError
from deploy.inventory import Board
from deploy.link import remote, untar
from deploy.ops import facts as facts_mod
from deploy.ops import runs, service
from deploy.targets import PROFILES

SEED = 23
CASES = 1500


class Replay:
    """A paramiko channel stand-in that replays ``data`` in random pieces, then the end of the stream."""

    def __init__(self, data: bytes, rng: random.Random):
        self.data = memoryview(data)
        self.rng = rng
        self.status_event = threading.Event()
        self.status_event.set()

    def settimeout(self, t):
        pass

    def recv(self, n):
        take = self.rng.randint(1, max(1, min(n, len(self.data))))
        piece, self.data = bytes(self.data[:take]), self.data[take:]
        return piece

    def recv_exit_status(self):
        return 1

    def recv_stderr_ready(self):
        return False

    def shutdown_write(self):
        pass

    def close(self):
        pass


def junk(rng: random.Random, depth: int = 0):
    """A random JSON value: every type, odd numbers, control characters, nesting."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), 10**30, rng.randint(-10**6, 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, float("nan"), float("inf")])
    if kind in (4, 5):
        return "".join(rng.choice("ab\x1b[]\x07\n\u202e/.:0") for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["id", "ok", "summary", "x", "seq"]): junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def sample(cls, rng: random.Random) -> dict:
    """A reply of ``cls`` as JSON, some fields replaced by junk, some removed, some unknown ones added."""
    obj = cls().to_json()
    for key in list(obj):
        roll = rng.random()
        if roll < 0.25:
            obj[key] = junk(rng)
        elif roll < 0.3:
            del obj[key]
    if cls is protocol.StatusReply and rng.random() < 0.5:
        obj["runs"] = [{"id": junk(rng), "summary": junk(rng), "status": junk(rng)}]
        obj["facts"] = {"free_bytes": junk(rng), "os": junk(rng), "python": junk(rng)}
    if rng.random() < 0.1:
        key = junk(rng)
        obj[key if isinstance(key, str) else "extra"] = junk(rng)
    return obj


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            del data[pos:]
        elif op == 2:
            data[pos:pos] = rng.choice([b"\n", b"\x00", b'"', b"{", b"]", b"\\u0000", b"9" * 400])
        elif op == 3:
            del data[pos : pos + rng.randrange(1, 16)]
        else:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
    return bytes(data)


REPLIES = sorted({reply for _, reply in protocol.OPERATIONS.values()} | {protocol.PushDone, protocol.PushStaged, protocol.CollectDone},
                 key=lambda c: c.__name__)


def render_reply(reply) -> None:
    """What the host does with a decoded reply that people see: it must not raise either."""
    con = Console(file=io.StringIO(), width=120)
    if isinstance(reply, protocol.StatusReply):
        render.print_status(con, "b", reply)
    elif isinstance(reply, protocol.ReleasesReply):
        render.print_releases(con, "b", reply)
    elif isinstance(reply, protocol.ServiceInfo):
        con.print(render.escape(render.service_line(reply)))
    elif isinstance(reply, protocol.Facts):
        facts_mod.evaluate(Board(name="b", target="atlas200dk"), PROFILES["atlas200dk"], reply)


def test_reply_lines_decode_or_fail_in_one_line():
    rng = random.Random(SEED)
    decoded = refused = 0
    tracemalloc.start()
    t0 = time.monotonic()
    for i in range(CASES):
        cls = REPLIES[i % len(REPLIES)]
        line = (json.dumps(sample(cls, rng)) + "\n").encode()
        data = mutate(line, rng) if rng.random() < 0.5 else line
        call = remote.Call(Replay(data, rng), "b", "fuzz")
        try:
            reply = call.read(cls)
        except RemoteError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        for name, spec in protocol.field_specs(cls).items():
            assert protocol.fits(getattr(reply, name), spec) or isinstance(getattr(reply, name), protocol.Message)
        render_reply(reply)
        decoded += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert decoded > CASES // 10 and refused > CASES // 5
    assert peak < 32 << 20 and time.monotonic() - t0 < 120


def test_a_reply_line_past_the_cap_is_refused_without_reading_on():
    rng = random.Random(SEED)
    data = b'{"facts": "' + b"A" * (remote.MAX_LINE + (4 << 20)) + b'"}\n'
    call = remote.Call(Replay(data, rng), "b", "status")
    with pytest.raises(RemoteError, match="longer than"):
        call.read(protocol.StatusReply)
    assert len(call.buf) < remote.MAX_LINE + (2 << 20)


# ---------------------------------------------------------------- the tar reader of a pull


def pull_stream(rng: random.Random) -> tuple[bytes, int, int]:
    """A pull as the board writes it (PAX, long names), with its announced file count and bytes."""
    buf = io.BytesIO()
    files = size = 0
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for i in range(rng.randrange(1, 6)):
            name = rng.choice(["results.jsonl", f"labelled/{'é' * rng.randrange(1, 80)}{i}.jpg", f"d/e/f{i}"])
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 1500)))
            info = tarfile.TarInfo(f"{name}.{i}")
            info.size, info.mtime = len(data), 1.5e9 + rng.random()
            tf.addfile(info, io.BytesIO(data))
            files, size = files + 1, size + len(data)
    return buf.getvalue(), files, size


def tar_mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    blocks = len(data) // 512
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        block = rng.randrange(blocks) * 512
        if op == 0:  # a header field: type, size, name, checksum
            at = block + rng.choice([0, 1, 99, 124, 130, 135, 148, 156, 257, 345])
            data[at : at + 1] = bytes([rng.randrange(256)])
        elif op == 1:  # a whole header rewritten with its checksum right: another type or size
            info = tarfile.TarInfo(rng.choice(["../x", "/etc/x", "a/../../b", "ok", "a\x00b", "././@PaxHeader"]))
            info.type = rng.choice([b"0", b"1", b"2", b"3", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"S", b"V"])
            info.size = rng.choice([0, 1, 511, 512, 1 << 20, 1 << 34])
            data[block : block + 512] = info.tobuf(tarfile.GNU_FORMAT)[:512]
        elif op == 2:
            del data[rng.randrange(len(data) + 1):]
        elif op == 3:
            data[block:block] = bytes(rng.randrange(256) for _ in range(512))
        elif op == 4:  # a pax record of its own
            rec = rng.choice([b"30 GNU.sparse.size=99999999\n", b"20 size=999999999999\n", b"9 path=\n",
                              b"99999 path=x\n", b"x path=y\n", b"12 path=../a\n"])
            data[block + 512 : block + 512 + len(rec)] = rec
        else:
            data[block : block + 512] = bytes(512)
    return bytes(data)


def test_the_tar_reader_extracts_or_refuses_in_one_line(tmp_path):
    rng = random.Random(SEED)
    outcomes = {"ok": 0, "refused": 0, "os": 0}
    tracemalloc.start()
    t0 = time.monotonic()
    for i in range(CASES // 3):
        data, files, size = pull_stream(rng)
        if i % 4:
            data = tar_mutate(data, rng)
        dest = tmp_path / f"case{i}"
        dest.mkdir()
        try:
            untar.extract(io.BytesIO(data).read, dest, size, files)
            outcomes["ok"] += 1
        except untar.TarRefused as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        except OSError:  # the file system's refusal (a name too long): ops/outputs turns it into one line
            outcomes["os"] += 1
        written = 0
        for dirpath, _, names in os.walk(dest):
            assert Path(dirpath).resolve().is_relative_to(dest.resolve())
            for name in names:
                p = Path(dirpath, name)
                assert not p.is_symlink() and p.is_file()
                written += p.stat().st_size
        assert written <= size
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert outcomes["ok"] > CASES // 12 and outcomes["refused"] > CASES // 12, outcomes
    assert peak < 32 << 20 and time.monotonic() - t0 < 120


# ---------------------------------------------------------------- agent events and journal records


def test_agent_events_are_checked_before_they_are_rendered():
    rng = random.Random(SEED)
    good = [{"v": 1, "event": "start", "run_id": "r", "mode": "run", "total": 3},
            {"v": 1, "event": "result", "image": "a.jpg", "topk": [[1, "cat", 0.9]]},
            {"v": 1, "event": "error", "image": "b.jpg", "kind": "decode", "message": "bad"},
            {"v": 1, "event": "progress", "done": 1, "total": 3, "ips": 2.5},
            {"v": 1, "event": "end", "summary": {"ok": 1, "bench": [{"batch": 1, "throughput": 2.0,
                                                                     "latency_ms": {"p99": 1.0}}]}}]
    checked = 0
    for _ in range(CASES):
        ev = dict(rng.choice(good))
        for key in [k for k in ev if k not in ("v", "event")]:
            if rng.random() < 0.4:
                ev[key] = junk(rng)
        line = json.dumps(ev).encode()
        try:
            ev = runs.checked_event(events.decode(mutate(line, rng) if rng.random() < 0.3 else line))
        except events.ProtocolError:
            continue
        if ev["event"] in ("result", "error"):
            Console(file=io.StringIO()).print(render.event_line(ev))
        checked += 1
    assert checked > CASES // 10


def test_journal_streams_are_checked_before_they_are_appended():
    rng = random.Random(SEED)
    for _ in range(CASES):
        first = rng.randrange(1, 5)
        records = b"".join(json.dumps({"seq": first + k, "image": "x"}).encode() + b"\n" for k in range(3))
        data = mutate(records, rng) if rng.random() < 0.7 else records
        head = protocol.CollectHead(first=first, last=first + rng.choice([1, 2, 3]), bytes=len(data))
        try:
            service._check_records("b", data, head)
        except ServiceError as exc:
            assert "\n" not in str(exc)
