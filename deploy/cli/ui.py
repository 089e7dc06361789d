"""The terminal: rich consoles, progress bars and tables, loaded only when a person will see them.

``--json`` output, and commands that show nothing, never import rich (about 40 ms of every
command otherwise). Everything user-controlled that reaches rich goes through ``escape``.
"""

from __future__ import annotations

import functools
import json
import sys


@functools.cache
def err():
    """The stderr console: progress, warnings and errors."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@functools.cache
def out():
    """The stdout console: tables and results for people."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    """``text`` with rich markup neutralised (a file named ``[red]x.jpg`` prints as itself)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


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
        sys.stderr.write(f"{prefix}{message}\n")
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


def transfer_progress(silent: bool, transient: bool = True):
    """Bytes with rate (push, pull)."""
    if silent:
        return _Silent()
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeElapsedColumn(), console=err(), transient=transient)


def count_progress(silent: bool):
    """Images done of total, with a free ``rate`` field (runs)."""
    if silent:
        return _Silent()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err(), transient=False)


def status(message: str):
    """A spinner with a message that can be updated (``.update(text)``)."""
    return err().status(message)
