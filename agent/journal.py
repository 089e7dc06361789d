"""The service's results journal: append-only JSON lines with a sequence number, in segments.

::

    <service>/journal/000000000001.jsonl    records 1 .. n (named by the first sequence number)
    <service>/journal/000000000412.jsonl    the open segment (always the newest)
    <service>/ack                           the host's last acknowledged sequence number

One record per image, ``{"seq": N, "t": unix time, "image": name, "claim": C, "ok": ..., ...}``,
written with one unbuffered ``write(2)`` (a failed or short one, e.g. on a full disk, is cut back off), and fsync'd before the image's file is disposed of (moved,
deleted or marked kept), so a disposed image always has a durable record. A crash can leave a
torn last line; :meth:`Journal.open` cuts it off before appending (like ``results.jsonl``).

Sequence numbers are contiguous from 1 and never reused: the host collects "everything after my
last sequence number", which makes an interrupted collect resumable and duplicate-free. Segments
roll over between chunks only (:meth:`rotate_if`), so one chunk's records share a segment, and the
newest segment is never removed, so the last sequence number and claim are always on disk.
Only the host's ack removes a segment (``deploy_board.service``), never the agent: unsent results
are never deleted. Python 3.7 compatible.
"""

import errno
import os
import threading

from .files import cut_torn_tail, json_line, records

SEGMENT_DIGITS = 12


def segment_name(first_seq):
    return "{:0{}d}.jsonl".format(first_seq, SEGMENT_DIGITS)


def segments(directory):
    """[(first seq, path)] oldest first."""
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext == ".jsonl" and stem.isdigit():
            out.append((int(stem), os.path.join(directory, name)))
    return sorted(out)


def read_ack(service_dir):
    try:
        with open(os.path.join(service_dir, "ack")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _records(data):
    return (rec for rec in records(data) if isinstance(rec.get("seq"), int))


class Journal:
    """The open journal of one service: ``append`` assigns the next sequence number (thread-safe)."""

    def __init__(self, service_dir, rotate_bytes=16 << 20):
        self.dir = os.path.join(service_dir, "journal")
        self.service_dir = service_dir
        self.rotate_bytes = int(rotate_bytes)
        self.seq = 0
        self.max_claim = 0
        self._f = None
        self._lock = threading.Lock()

    def open(self):
        """Find the last sequence number and claim, cut a torn tail, open the newest segment for appending."""
        os.makedirs(self.dir, exist_ok=True)
        segs = segments(self.dir)
        self.seq = read_ack(self.service_dir)
        if segs:
            path = segs[-1][1]
            recs = list(_records(cut_torn_tail(path)))  # a crash's torn last line is dropped before appending
            if recs:
                self.seq = max(self.seq, recs[-1]["seq"])
                self.max_claim = max(int(r.get("claim") or 0) for r in recs)
            else:
                self.seq = max(self.seq, segs[-1][0] - 1)
            self._f = open(path, "ab", buffering=0)
        else:
            self._f = open(os.path.join(self.dir, segment_name(self.seq + 1)), "ab", buffering=0)
        return self

    def recorded_claims(self, wanted):
        """Which of the claim ids in ``wanted`` already have a record (newest segments first)."""
        wanted = set(wanted)
        found = set()
        if not wanted:
            return found
        low = min(wanted)
        for _first, path in reversed(segments(self.dir)):
            with open(path, "rb") as f:
                claims = [int(r.get("claim") or 0) for r in _records(f.read())]
            found.update(c for c in claims if c in wanted)
            if found == wanted or (claims and max(claims) < low):
                break
        return found

    def append(self, record):
        """Write ``record`` with the next sequence number; returns it. A failed write (disk full) is
        undone (the file is cut back), so the journal never holds a torn line in the middle."""
        with self._lock:
            seq = self.seq + 1
            rec = {"seq": seq}
            rec.update(record)
            line = json_line(rec)
            pos = os.fstat(self._f.fileno()).st_size  # O_APPEND: the record goes at the end
            try:
                written = self._f.write(line)  # unbuffered: one write(2), nothing left behind in a buffer
                if written != len(line):  # a short write: the disk filled up mid-line
                    raise OSError(errno.ENOSPC, "no space left for a whole journal record")
            except OSError:
                try:
                    os.ftruncate(self._f.fileno(), pos)  # no torn line left in the journal
                    self._f.seek(pos)
                except OSError:
                    pass
                raise
            self.seq = seq
            claim = int(record.get("claim") or 0)
            if claim > self.max_claim:
                self.max_claim = claim
            return seq

    def sync(self):
        """Make every record so far durable (before the images they describe are disposed of)."""
        with self._lock:
            self._f.flush()
            fd = os.dup(self._f.fileno())  # fsync outside the lock: appends go on meanwhile (rotation may close the file)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rotate_if(self):
        """Start a new segment when the open one has reached ``rotate_bytes`` (call between chunks)."""
        with self._lock:
            if self._f.tell() < self.rotate_bytes:
                return False
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = open(os.path.join(self.dir, segment_name(self.seq + 1)), "ab", buffering=0)
            return True

    def bytes_on_disk(self):
        total = 0
        for _first, path in segments(self.dir):
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
        return total

    def close(self):
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None
