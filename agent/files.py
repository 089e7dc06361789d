"""The file idioms the run directory (``rundir.py``), the service (``service.py``) and its journal
(``journal.py``) share: replacing a small file at once, and append-only JSON-lines files (one record
a line, written whole; after a crash at most a torn last line). Python 3.7 compatible.
"""

import json
import os


def write_atomic(path, text):
    """Replace ``path`` with ``text`` (UTF-8) at once: a reader sees the old file or the new one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def json_line(record):
    """``record`` as one JSON-lines line of UTF-8 bytes: compact, non-ASCII kept, NaN refused."""
    return (json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


def cut_torn_tail(path):
    """The file's bytes up to its last newline. A torn last line (a killed writer's) is cut off the
    file itself first, so the next append starts a line of its own."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    return data


def records(data):
    """The JSON objects of JSON-lines ``data`` (bytes), in order; a line that is not one is skipped."""
    for raw in data.splitlines():
        try:
            rec = json.loads(raw.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec
