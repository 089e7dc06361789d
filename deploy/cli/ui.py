"""The terminal: rich consoles, progress bars and tables, loaded only when a person will see them.

``--json`` output, and commands that show nothing, never import rich (about 40 ms of every
command otherwise). Every string of board origin (labels, image names, events, facts, ids, error
replies) and every file name goes through ONE function on its way to a person, :func:`visible`:
C0 and C1 control characters (ESC, CSI, BEL, CR, newline ...), DEL, and the Unicode line separators
and bidirectional overrides are shown as ``\x1b`` / ``\u202e`` instead of acting on the terminal.
:func:`escape` is ``visible`` plus rich's markup escaping (what goes through rich), and
:func:`error_line` applies it whether or not stderr is a terminal. ``--json`` keeps exact strings.

**One screen, one live region.** A command shows at most one live display (a row per board), and
while it is up every line the command prints, results on stdout and error lines on stderr alike,
goes *through that display's console*, which prints it above the live rows and redraws them below.
Printing around it (a second Console on the same terminal) is what glued completion lines onto
progress rows and repeated rows: rich's consoles write past its own stdout redirection
(``rich_proxied_file``). Lines are routed only while their stream is a terminal: with stdout
redirected to a file, results go to the file as they are.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading

_active: list = []  # the live display that is up (at most one per command)
_lock = threading.Lock()


@functools.cache
def _console(stderr: bool):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=not stderr)


class _Routed:
    """A console for one stream that prints through the live display while one is up on a terminal."""

    def __init__(self, stderr: bool):
        self.stderr = stderr

    @property
    def _own(self):
        return _console(self.stderr)

    def print(self, *objects, **kwargs) -> None:
        live = _live()
        stream = sys.stderr if self.stderr else sys.stdout
        if live is not None and stream.isatty():
            # under the display's own lock: rich positions the cursor for a print when it renders it and
            # writes it later, so a refresh from its thread in between left stale rows in the scrollback
            with live.live._lock:
                live.console.print(*objects, **kwargs)
        else:
            self._own.print(*objects, **kwargs)

    def __getattr__(self, name):
        return getattr(self._own, name)


@functools.cache
def err() -> _Routed:
    """The stderr console: progress, warnings and errors."""
    return _Routed(stderr=True)


@functools.cache
def out() -> _Routed:
    """The stdout console: tables and results for people."""
    return _Routed(stderr=False)


def _live():
    with _lock:
        return _active[-1] if _active else None


def live_console():
    """The console a live display draws on: stdout's when it is a terminal, else stderr's."""
    return _console(not sys.stdout.isatty())


_CONTROLS = "\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_SHOWN = re.compile(f"[\n{_CONTROLS}]")
_SHOWN_KEEP_LINES = re.compile(f"[{_CONTROLS}]")


def _show(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text, lines: bool = False) -> str:
    """``text`` (anything: it is made a string) with every control character shown, not obeyed: ESC as
    ``\x1b``, a newline as ``\x0a`` (kept as a line break with ``lines``), U+202E as ``\u202e``."""
    text = text if isinstance(text, str) else str(text)
    pattern = _SHOWN_KEEP_LINES if lines else _SHOWN
    return pattern.sub(_show, text) if pattern.search(text) else text


_BRACKET = re.compile(r"(\\*)\[")
_TRAILING = re.compile(r"(\\+)$")


def escape(text, lines: bool = False) -> str:
    """:func:`visible` ``text`` with rich markup neutralised too (a file named ``[red]x.jpg`` prints as itself).

    Every ``[`` is escaped, not only those that look like a tag (``rich.markup.escape``): an escaped piece
    ends up next to others, and ``[/:`` in one with ``]`` in the next would make a tag of them. Backslashes
    before a bracket or at the end are doubled, so they can escape neither ours nor the next piece's tags."""
    text = visible(text, lines)
    if "[" in text:
        text = _BRACKET.sub(lambda m: m.group(1) * 2 + "\\[", text)
    return _TRAILING.sub(lambda m: m.group(1) * 2, text) if text.endswith("\\") else text


def table(*columns, **kwargs):
    from rich.table import Table

    return Table(*columns, **kwargs)


def emit_json(obj) -> None:
    """One JSON document on stdout (what ``--json`` prints; nothing else goes to stdout)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def error_line(message: str, prefix: str = "error: ") -> None:
    """One line on stderr: how every user-facing failure is shown (red on a terminal)."""
    if not sys.stderr.isatty():
        sys.stderr.write(f"{prefix}{visible(message)}\n")
        return
    err().print(f"[red]{prefix}[/]{escape(message)}" if prefix else f"[red]{escape(message)}[/]", soft_wrap=True)


class _Silent:
    """A progress display that shows nothing (``--json``): same calls as rich's Progress."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass

    def remove_task(self, *args, **kwargs) -> None:
        pass

    @property
    def console(self):
        return err()


def no_progress() -> _Silent:
    """The display of a command that shows none (or of ``--json``)."""
    return _Silent()


def _progress(*columns, transient: bool = True):
    """The command's one live display: registered while it is up, so every print goes through it.

    A counter never shows more than its total: a row's ``completed`` is clamped (a byte count that
    includes framing, a bench that loops past its estimate)."""
    from rich.progress import Progress

    class Live(Progress):
        def __enter__(self):
            with _lock:
                _active.append(self)
            return super().__enter__()

        def __exit__(self, *exc):
            try:
                return super().__exit__(*exc)
            finally:
                with _lock:
                    _active.remove(self)

        def update(self, task_id, **kwargs):
            super().update(task_id, **kwargs)
            self._clamp(task_id)

        def advance(self, task_id, advance=1):
            super().advance(task_id, advance)
            self._clamp(task_id)

        def _clamp(self, task_id):
            with self._lock:
                task = self._tasks.get(task_id)
                if task is not None and task.total is not None and task.completed > task.total:
                    task.completed = task.total

    return Live(*columns, console=live_console(), transient=transient)


def transfer_progress(silent: bool, transient: bool = True):
    """Bytes with rate (push, pull, collect)."""
    if silent:
        return _Silent()
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    return _progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                     TimeElapsedColumn(), transient=transient)


def count_progress(silent: bool):
    """Images done of total, with a free ``rate`` field (runs)."""
    if silent:
        return _Silent()
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return _progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn())


def spinner_progress():
    """A spinner row per board while it works with no count to show (service start/stop)."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    return _progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn())


def status(message: str):
    """A spinner with a message that can be updated (``.update(text)``)."""
    return _console(True).status(message)
