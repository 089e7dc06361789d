"""The event schema between the agent (board) and the host: one definition for both sides.

Every event is one JSON object on one line, written to the agent's stdout and to
``events.jsonl`` in the run directory. Each carries ``"v": 1`` and an ``"event"``:

``start``     run_id, mode, backend, model, total (images to do), skipped (already done), batch
``result``    image (path relative to the input root), topk: [[index, label, score], ...], ms (per-image timings)
``error``     image, kind (one of ERROR_KINDS), message
``progress``  done, total, ips (images per second so far)
``end``       summary: ok, failed, total, elapsed_s, ips, status ("ok" | "partial" | "failed")

The host renders events; the agent never draws terminal UI. Python 3.7 compatible.
"""

import json

VERSION = 1

EVENT_KINDS = ("start", "result", "error", "progress", "end", "log")

# Why an image could not be classified. "decode" covers every file Pillow cannot read as an image.
ERROR_KINDS = ("decode", "too_large", "unreadable", "preprocess", "inference", "output", "internal")

_REQUIRED = {
    "start": ("run_id", "mode", "total"),
    "result": ("image", "topk"),
    "error": ("image", "kind", "message"),
    "progress": ("done", "total"),
    "end": ("summary",),
    "log": ("message",),
}


class ProtocolError(ValueError):
    """A line that is not a valid event of this protocol version."""


def make(event, **fields):
    """Build an event dict; raises ProtocolError when a required field is missing."""
    if event not in EVENT_KINDS:
        raise ProtocolError(f"unknown event kind: {event!r}")
    missing = [f for f in _REQUIRED[event] if f not in fields]
    if missing:
        raise ProtocolError("{} event lacks {}".format(event, ", ".join(missing)))
    out = {"v": VERSION, "event": event}
    out.update(fields)
    return out


def encode(event):
    """One event as one line (with the trailing newline). Non-ASCII stays readable; NaN is refused."""
    return json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"


def decode(line):
    """Parse one line into an event dict, checking version, kind and required fields."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("event is not an object")
    if obj.get("v") != VERSION:
        raise ProtocolError("unsupported protocol version {!r} (want {})".format(obj.get("v"), VERSION))
    kind = obj.get("event")
    if kind not in EVENT_KINDS:
        raise ProtocolError(f"unknown event kind: {kind!r}")
    missing = [f for f in _REQUIRED[kind] if f not in obj]
    if missing:
        raise ProtocolError("{} event lacks {}".format(kind, ", ".join(missing)))
    return obj
