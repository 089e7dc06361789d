"""The object stream of a push: the missing content objects as one tar, zlib-compressed where that pays.

Each member is named by its content's sha256. A member named ``<sha256>.z`` is that content
compressed with zlib (level 1): the board inflates it while hashing and refuses it unless it
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
"""

from __future__ import annotations

import io
import queue
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LEVEL = 1  # zlib's fastest: ~50 MB/s on shared objects here, ~40% of their size
SAMPLE = 64 << 10  # bytes of an object compressed to judge it
RAW_RATIO = 0.85  # worse than this in the sample: not worth the CPU
WARMUP_S = 0.25  # the first moments only fill socket buffers (MiBs at memory speed): the link shows after
PROBE_S = 0.5  # the link's rate is measured over this long, again and again
AHEAD = 3  # objects compressed ahead of the sender
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
    link_bytes_per_s: float | None = None
    compressor_bytes_per_s: float | None = None


class Policy:
    """The compress-or-not decision, fed by the sender's progress and the compressor's timings (thread-safe)."""

    def __init__(self, mode: str = "auto", clock: Callable[[], float] = time.perf_counter):
        if mode not in MODES:
            raise ValueError(f"compression mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode
        self.clock = clock
        self.lock = threading.Lock()
        self.sent = 0
        self.start: float | None = None  # the first bytes went out
        self.mark: tuple[float, int] | None = None  # (time, bytes) when the warm-up ended
        self.link: float | None = None  # bytes/s
        self.zin = 0  # bytes given to the compressor ...
        self.zsec = 0.0  # ... and the seconds it took

    def on_wire(self, n: int) -> None:
        """``n`` more bytes have gone out (the sender blocks while the link is full, so this paces with it)."""
        now = self.clock()
        with self.lock:
            self.sent += n  # these went out before now
            if self.start is None:
                self.start = now
            elif self.mark is None:
                if now - self.start >= WARMUP_S:
                    self.mark = (now, self.sent)
            elif now - self.mark[0] >= PROBE_S:  # a fresh measurement every PROBE_S
                self.link = (self.sent - self.mark[1]) / (now - self.mark[0])
                self.mark = (now, self.sent)

    def timed(self, n: int, seconds: float) -> None:
        with self.lock:
            self.zin += n
            self.zsec += seconds

    @property
    def compressor(self) -> float | None:
        with self.lock:
            return self.zin / self.zsec if self.zsec > 0 and self.zin >= SAMPLE else None

    def compress(self) -> bool:
        """Whether objects prepared now should be compressed."""
        if self.mode != "auto":
            return self.mode == "on"
        link, comp = self.link, self.compressor
        if link is None:
            return False
        return comp is None or link < comp  # no timing yet: a sample decides it on the next object


def _deflate(data: bytes, policy: Policy) -> bytes:
    t = time.perf_counter()
    out = zlib.compress(data, LEVEL)  # releases the GIL: runs beside the sender
    policy.timed(len(data), time.perf_counter() - t)
    return out


def _prepare(entry, policy: Policy):
    """(entry, compressed bytes or None, judged): compressed when the policy says so and the sample agrees;
    ``judged`` once the sample has spoken, so the object is not sampled twice."""
    if not policy.compress():
        return entry, None, False
    with entry.open() as f:
        head = f.read(SAMPLE)
        if not head or len(_deflate(head, policy)) > RAW_RATIO * len(head):
            return entry, None, True
        data = head + f.read()
    if len(data) != entry.size:
        raise OSError(f"{entry.sha256[:12]} changed size while it was being sent")
    return entry, _deflate(data, policy), True


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
          on_member: Callable[[int, int], None] | None = None) -> Stats:
    """Write the tar of ``entries`` (``.sha256``, ``.size``, ``.open()``) to ``fileobj``; compressed members
    are prepared by a thread up to ``AHEAD`` objects in front of the sender. ``on_member(content, member)``
    is called before each member goes out with its content size and its size in the stream."""
    stats = Stats()
    todo: queue.Queue = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()

    def put(item) -> bool:
        """Queue ``item`` unless the sender has stopped (then nobody would take it); whether it was queued."""
        while not stop.is_set():
            try:
                todo.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def producer():
        try:
            for e in order(entries):
                if not put(_prepare(e, policy)):
                    return
            put(None)
        except BaseException as exc:  # handed to the sender, which raises it
            put(exc)

    worker = threading.Thread(target=producer, name="objstream", daemon=True)
    worker.start()
    try:
        # tarfile's stream buffer is a bytes object grown with `buf += data` (a full copy per 16 KiB
        # write): keep it at its default record size; the caller's writer batches (ChannelWriter: 1 MiB)
        with _Tar.open(fileobj=fileobj, mode="w|", format=tarfile.GNU_FORMAT) as tf:
            while (item := todo.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                e, packed, judged = item
                if packed is None and not judged and policy.compress():
                    e, packed, judged = _prepare(e, policy)  # the link proved slow since it was queued
                if on_member:
                    on_member(e.size, e.size if packed is None else len(packed))
                if packed is not None:
                    info = tarfile.TarInfo(e.sha256 + ".z")
                    info.size, info.mode = len(packed), 0o644
                    tf.addfile(info, io.BytesIO(packed))
                    stats.compressed += 1
                else:
                    info = tarfile.TarInfo(e.sha256)
                    info.size, info.mode = e.size, 0o644
                    with e.open() as f:
                        tf.addfile(info, f)
                stats.content += e.size
    finally:
        stop.set()
        worker.join(5)
    stats.link_bytes_per_s, stats.compressor_bytes_per_s = policy.link, policy.compressor
    return stats
