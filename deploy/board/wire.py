"""The board end of one operation's channel: a request line in, reply lines out, bulk bytes after.

``Wire`` is built from explicit streams and an explicit home directory, never from
globals read at import, so every operation can be driven in a test on a temporary
directory with ``io.BytesIO`` streams and no board. Python 3.7 + stdlib only.
"""

import json
import os
import re

from . import protocol

ID_RE = protocol.ID_RE
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class Fail(Exception):
    """A refusal the user must read: sent to the host as ``{"error": message}``."""


class Wire:
    """One operation's streams: ``stdin``/``stdout`` are binary files; ``home`` is the board user's home."""

    def __init__(self, stdin, stdout, home):
        self.stdin = stdin
        self.stdout = stdout
        self.home = home

    def reply(self, message):
        """Send one message (a ``protocol.Message`` or a plain dict) as one JSON line, flushed."""
        obj = message.to_json() if isinstance(message, protocol.Message) else message
        self.stdout.write((json.dumps(obj) + "\n").encode("utf-8"))
        self.stdout.flush()

    def read(self, cls):
        """The next request line as message class ``cls``; a missing or malformed line is a Fail."""
        line = self.stdin.readline()
        if not line:
            raise Fail("no request received")
        try:
            return protocol.decode(cls, json.loads(line.decode("utf-8")))
        except (ValueError, TypeError) as exc:
            raise Fail(f"malformed {cls.__name__}: {exc}") from None

    def app_dir(self, app):
        """``~/HIAI_PROJECTS/<app>`` for a checked app name."""
        return os.path.join(self.home, "HIAI_PROJECTS", check_id(app, "app name"))


def check_id(value, what):
    """An app, release or run id: one safe path component, or a Fail."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise Fail(f"invalid {what}: {value!r}")
    return value


def check_run_id(value):
    """A run id: a valid id that is not a reserved name (``protocol.RESERVED_RUN_IDS``), or a Fail."""
    if not protocol.valid_run_id(value):
        raise Fail(f"invalid run id: {value!r}" + (" (a reserved name)" if protocol.valid_id(value) else ""))
    return value


def safe_rel(path):
    """A manifest or tar path must stay inside its directory."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path:
        raise Fail(f"unsafe path {path!r}")
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise Fail(f"unsafe path {path!r}")
    return path
