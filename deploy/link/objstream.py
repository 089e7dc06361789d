"""The object stream of a push: the missing content objects as one tar, zlib-compressed where that pays.

Each member is named by its content's sha256. A member named ``<sha256>.z`` is that content
compressed with zlib (any level): the board inflates it while hashing and refuses it unless it
expands to exactly the manifest's size and digest. zlib is in every Python, so the board needs
nothing new.

When to compress is measured, not guessed (``mode="auto"``). Compression pays when the link is
slower than the compressor: sending S bytes raw takes S/L, compressed about max(S/C, r*S/L) with
the compressor running ahead of the sender, so it wins exactly when L < C. The first objects go
raw while the link's rate L shows (after the first quarter second, which only fills socket buffers); the
compressor's rate C is timed on samples of the objects themselves. On loopback L is far above C
and nothing is compressed; on a 50-100 Mbit/s link (a lab LAN, the DK's USB link) it is below.
An object whose first 64 KiB compress worse than ``RAW_RATIO`` (model weights, JPEGs) travels raw
whatever the link. Objects of kinds that rarely compress (``RAW_FIRST``: models, images, archives)
go first, so the link is measured on bytes that would travel raw anyway and every object after
them gets the decision. ``mode="on"`` and ``"off"`` (``--compress``/``--no-compress``) override.
A link measured by an earlier push to the same board (``link_hint``) decides from the first byte,
until this stream's own measurement replaces it.

**Which level.** zlib level 1 runs at ~50 MB/s per core here and packs shared libraries to ~43%;
level 6 at ~16 MB/s to ~40% (what ``rsync -z`` uses). The tight level is taken when even it, on
``WORKERS`` threads, keeps ahead of the measured link (the link is the bottleneck: every byte saved is
time saved); the fast level otherwise. Objects are compressed on ``WORKERS`` threads ahead of the
sender (zlib releases the GIL), the stream's order kept.

**Compress once, send many.** Compressed objects are kept for the whole process by (sha256, level)
in ``PACKED``, and so are the objects whose sample did not compress: the boards of a fleet push (one
process, a thread per board) share them, so eight boards of one target cost the compression CPU of
one. The first stream that needs an object compresses it; another that needs it meanwhile waits for
that result instead of compressing it again. An object already packed at any level is sent packed at
no CPU cost whenever the stream compresses at all.
"""

from __future__ import annotations

import io
import os
import queue
import tarfile
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

FAST, TIGHT = 1, 6  # zlib levels: ~50 MB/s to ~43% of shared objects here; ~16 MB/s to ~40% (rsync -z's)
TIGHT_COST = 3.4  # how much slower TIGHT runs than FAST (measured here), until TIGHT itself is timed
HEADROOM = 0.8  # TIGHT when its rate on every worker stays this far ahead of the link
STARVED = 0.15  # a probe window in which the sender waited this share of its time for compression: CPU-bound
WORKERS = max(1, min(4, os.cpu_count() or 1))  # compressor threads
PACKED_LIMIT = 256 << 20  # bytes of compressed objects kept per process (a release packs to ~56 MB)
SAMPLE = 64 << 10  # bytes of an object compressed to judge it
RAW_RATIO = 0.85  # worse than this in the sample: not worth the CPU
WARMUP_S = 0.25  # the first moments only fill socket buffers (MiBs at memory speed): the link shows after
PROBE_S = 0.5  # the link's rate is measured over this long, again and again
AHEAD_BYTES = 64 << 20  # content prepared ahead of the sender: a 30 MB library starts compressing while the
#                         link still carries what is before it (a count of objects starved the sender on big ones)
MODES = ("auto", "on", "off")
# kinds that rarely compress: sent first while the link is measured (only the order changes)
RAW_FIRST = (".onnx", ".om", ".mm", ".pb", ".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip", ".gz", ".xz",
             ".bz2", ".npz", ".whl")


def order(entries: Iterable) -> list:
    """``entries`` with the kinds in RAW_FIRST first, each group in its given order."""
    entries = list(entries)
    first = [e for e in entries if str(getattr(e, "path", "")).lower().endswith(RAW_FIRST)]
    ids = {id(e) for e in first}
    return first + [e for e in entries if id(e) not in ids]


@dataclass
class Stats:
    """What one stream did: content bytes, bytes on the wire (tar framing included), objects compressed."""

    content: int = 0
    wire: int = 0
    compressed: int = 0
    reused: int = 0  # compressed objects taken ready from PACKED (another board's stream, or earlier)
    levels: dict[int, int] = field(default_factory=dict)  # compressed objects per zlib level
    link_bytes_per_s: float | None = None
    compressor_bytes_per_s: float | None = None


class Policy:
    """The compress-or-not decision, fed by the sender's progress and the compressor's timings (thread-safe)."""

    def __init__(self, mode: str = "auto", clock: Callable[[], float] = time.perf_counter, *,
                 link_hint: float | None = None, level: int | None = None):
        if mode not in MODES:
            raise ValueError(f"compression mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode
        self.clock = clock
        self.fixed_level = level  # None: chosen from the link and the compressor's rates
        self.lock = threading.Lock()
        self.sent = 0
        self.start: float | None = None  # the first bytes went out
        self.mark: tuple[float, int] | None = None  # (time, bytes) when the warm-up ended
        self.link: float | None = link_hint  # bytes/s: an earlier push's measurement until this stream's own
        self.measured = False  # whether ``link`` is this stream's own measurement
        self.waited = 0.0  # seconds the sender waited for the compressor (the CPU, not the link, was short)
        self.cpu_bound = False  # a probe window found the sender waiting on compression: FAST from then on
        self.zin = {FAST: 0, TIGHT: 0}  # bytes given to the compressor per level ...
        self.zsec = {FAST: 0.0, TIGHT: 0.0}  # ... and the seconds it took

    def on_wire(self, n: int) -> None:
        """``n`` more bytes have gone out (the sender blocks while the link is full, so this paces with it)."""
        now = self.clock()
        with self.lock:
            self.sent += n  # these went out before now
            if self.start is None:
                self.start = now
            elif self.mark is None:
                if now - self.start >= WARMUP_S:
                    self.mark = (now, self.sent, self.waited)
            elif now - self.mark[0] >= PROBE_S:  # a fresh measurement every PROBE_S
                span, starved = now - self.mark[0], self.waited - self.mark[2]
                # the link's own rate: the time the sender sat waiting for the compressor is not the link's
                self.link = (self.sent - self.mark[1]) / max(span - starved, span * 0.05)
                self.measured = True
                self.cpu_bound = self.cpu_bound or starved > STARVED * span
                self.mark = (now, self.sent, self.waited)

    def starved(self, seconds: float) -> None:
        """The sender waited ``seconds`` for an object still being compressed."""
        with self.lock:
            self.waited += seconds

    def timed(self, n: int, seconds: float, level: int = FAST) -> None:
        with self.lock:
            self.zin[level] = self.zin.get(level, 0) + n
            self.zsec[level] = self.zsec.get(level, 0.0) + seconds

    def rate(self, level: int) -> float | None:
        """The compressor's measured bytes/s on one thread at ``level`` (None: not timed enough yet)."""
        with self.lock:
            n, sec = self.zin.get(level, 0), self.zsec.get(level, 0.0)
        return n / sec if sec > 0 and n >= SAMPLE else None

    @property
    def compressor(self) -> float | None:
        """The fast level's rate on one thread: compression pays on a link slower than that (the workers'
        other threads are headroom for the sender's own CPU, which a small machine needs)."""
        return self.rate(FAST)

    def level(self) -> int:
        """The zlib level for objects prepared now: TIGHT when the link is the bottleneck even for it."""
        if self.fixed_level is not None:
            return self.fixed_level
        if self.cpu_bound:
            return FAST
        link, fast = self.link, self.rate(FAST)
        tight = self.rate(TIGHT) or (fast / TIGHT_COST if fast else None)
        if link is not None and tight is not None and link < HEADROOM * tight * WORKERS:
            return TIGHT
        return FAST

    def compress(self) -> bool:
        """Whether objects prepared now should be compressed."""
        if self.mode != "auto":
            return self.mode == "on"
        link, comp = self.link, self.compressor
        if link is None:
            return False
        return comp is None or link < comp  # no timing yet: a sample decides it on the next object


class Packed:
    """Compressed objects by sha256 (with the level they were made at), and the objects whose sample did not
    compress, shared by every stream of this process (thread-safe). ``get`` compresses an object at most once:
    a stream asking for one another stream is compressing waits for that result. Beyond ``limit`` bytes the
    least recently used go."""

    def __init__(self, limit: int = PACKED_LIMIT):
        self.limit = limit
        self.lock = threading.Lock()
        self.items: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self.size = 0
        self.busy: dict[str, threading.Event] = {}
        self.raw: set[str] = set()  # sha256s whose sample compressed worse than RAW_RATIO

    def get(self, sha: str, make: Callable[[], tuple[bytes, int] | None]) -> tuple[tuple[bytes, int] | None, bool]:
        """((the object packed, its level) or None when it does not compress, whether this call made it);
        ``make`` compresses it (None: it does not compress) and runs once per object."""
        while True:
            with self.lock:
                if sha in self.raw:
                    return None, False
                if sha in self.items:
                    self.items.move_to_end(sha)
                    return self.items[sha], False
                event = self.busy.get(sha)
                if event is None:
                    event = self.busy[sha] = threading.Event()
                    break
            event.wait()  # another stream is making it: take its result (or make it, if that stream failed)
        try:
            item = make()
            self._keep(sha, item)
            return item, True
        finally:
            with self.lock:
                del self.busy[sha]
            event.set()

    def _keep(self, sha: str, item: tuple[bytes, int] | None) -> None:
        with self.lock:
            if item is None:
                self.raw.add(sha)
                return
            if len(item[0]) > self.limit:
                return
            self.items[sha] = item
            self.size += len(item[0])
            while self.size > self.limit:
                _, (old, _) = self.items.popitem(last=False)
                self.size -= len(old)


PACKED = Packed()


def _deflate(data: bytes, policy: Policy, level: int) -> bytes:
    t = time.perf_counter()
    out = zlib.compress(data, level)  # releases the GIL: runs beside the sender and the other workers
    policy.timed(len(data), time.perf_counter() - t, level)
    return out


def _pack(entry, policy: Policy) -> tuple[bytes, int] | None:
    """(the object compressed, the level), or None when its first 64 KiB compress worse than RAW_RATIO; the
    level is chosen after the sample, which times the compressor too."""
    with entry.open() as f:
        head = f.read(SAMPLE)
        if not head or len(_deflate(head, policy, FAST)) > RAW_RATIO * len(head):
            return None
        data = head + f.read()
    if len(data) != entry.size:
        raise OSError(f"{entry.sha256[:12]} changed size while it was being sent")
    level = policy.level()
    return _deflate(data, policy, level), level


@dataclass
class _Item:
    """An object ready for the stream: packed (its compressed bytes) or raw; ``judged`` once the decision
    was made for it with the compressor on (so it is not sampled twice)."""

    entry: object
    packed: bytes | None = None
    level: int = 0
    judged: bool = False
    reused: bool = False


def _prepare(entry, policy: Policy, packed: Packed) -> _Item:
    """The object compressed when the policy says so and its sample agrees (from ``packed`` when it is there)."""
    if not policy.compress():
        return _Item(entry)
    item, made = packed.get(entry.sha256, lambda: _pack(entry, policy))
    if item is None:
        return _Item(entry, judged=True)
    return _Item(entry, item[0], item[1], True, not made)


class _Tar(tarfile.TarFile):
    """A tar stream that ends with its two zero blocks, not padded to tarfile's 10 KiB record: the board stops
    at the first zero block, and a push of one small file (an env.sh) is then about 2 KiB on the wire."""

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            if self.mode == "w":
                self.fileobj.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        finally:
            self.fileobj.close()


def write(fileobj, entries: Iterable, policy: Policy,
          on_member: Callable[[int, int], None] | None = None, packed: Packed | None = None) -> Stats:
    """Write the tar of ``entries`` (``.sha256``, ``.size``, ``.open()``) to ``fileobj``; objects are prepared
    (compressed, or taken from ``packed``: ``PACKED`` by default) on ``WORKERS`` threads up to ``AHEAD_BYTES`` of content
    in front of the sender. ``on_member(content, member)`` is called before each member goes out with its
    content size and its size in the stream."""
    packed = PACKED if packed is None else packed
    stats = Stats()
    todo: queue.Queue = queue.Queue()
    stop = threading.Event()
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="objstream-z")
    budget = _Budget(AHEAD_BYTES, stop)

    def producer():
        try:
            for e in order(entries):
                if not budget.take(e.size):
                    return
                todo.put(pool.submit(_prepare, e, policy, packed))
            todo.put(None)
        except BaseException as exc:  # handed to the sender, which raises it
            todo.put(exc)

    worker = threading.Thread(target=producer, name="objstream", daemon=True)
    worker.start()
    try:
        # tarfile's stream buffer is a bytes object grown with `buf += data` (a full copy per 16 KiB
        # write): keep it at its default record size; the caller's writer batches (ChannelWriter: 1 MiB)
        with _Tar.open(fileobj=fileobj, mode="w|", format=tarfile.GNU_FORMAT) as tf:
            while (item := todo.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                ready = _ready(item, policy, packed)
                _send(tf, ready, stats, on_member)
                budget.give(ready.entry.size)
    finally:
        stop.set()
        budget.give(0)
        pool.shutdown(wait=False, cancel_futures=True)
        worker.join(5)
    # the link as this stream measured it (a remembered hint is not a measurement)
    stats.link_bytes_per_s = policy.link if policy.measured else None
    stats.compressor_bytes_per_s = policy.compressor
    return stats


class _Budget:
    """Bytes of content in flight between the producer and the sender, at most ``limit`` (one object always)."""

    def __init__(self, limit: int, stop: threading.Event):
        self.limit, self.stop, self.used = limit, stop, 0
        self.cond = threading.Condition()

    def take(self, n: int) -> bool:
        """Wait for room for ``n`` bytes; False when the sender has stopped."""
        with self.cond:
            while self.used and self.used + n > self.limit and not self.stop.is_set():
                self.cond.wait(0.2)
            self.used += n
            return not self.stop.is_set()

    def give(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def _ready(future: Future, policy: Policy, packed: Packed) -> _Item:
    waiting, t = not future.done(), time.perf_counter()
    item = future.result()
    if waiting and item.packed is not None:
        policy.starved(time.perf_counter() - t)
    if item.packed is None and not item.judged and policy.compress():
        item = _prepare(item.entry, policy, packed)  # the link proved slow since it was queued
    return item


def _send(tf: tarfile.TarFile, item: _Item, stats: Stats, on_member) -> None:
    e = item.entry
    if on_member:
        on_member(e.size, e.size if item.packed is None else len(item.packed))
    if item.packed is not None:
        info = tarfile.TarInfo(e.sha256 + ".z")
        info.size, info.mode = len(item.packed), 0o644
        tf.addfile(info, io.BytesIO(item.packed))
        stats.compressed += 1
        stats.reused += item.reused
        stats.levels[item.level] = stats.levels.get(item.level, 0) + 1
    else:
        info = tarfile.TarInfo(e.sha256)
        info.size, info.mode = e.size, 0o644
        with e.open() as f:
            tf.addfile(info, f)
    stats.content += e.size
