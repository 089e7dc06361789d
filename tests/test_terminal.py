"""The face in a real terminal: commands that show progress leave a clean screen.

Each command runs in a pseudo-terminal of 140x40 (stdout and stderr both on it, as in a shell), and its whole
output is played through a VT100 emulator (pyte) that keeps the scrollback. Afterwards no line may hold two
records (a completion line glued onto a progress row), no progress row may be left anywhere (rows repeated
into the scrollback by prints that bypassed the live display), and no counter may exceed its total.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pytest

from deploy.testing import SANDBOX_BOARD, Project

pyte = pytest.importorskip("pyte")

COLUMNS, ROWS = 140, 40
BOARDS = [f"b{i}" for i in range(1, 9)]
BAR = "━"
COUNTER = re.compile(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)(?: ([kMG]?B))?")
TABLE = "┏┡└│┃┗┌├╭╰"


def in_terminal(project: Project, *args: str, timeout: float = 300) -> tuple[int, list[str]]:
    """``deploy ARGS`` in a pty; (exit status, every line the terminal shows or scrolled away)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**project.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(ROWS)}
    proc = subprocess.Popen(project.argv(*args), stdin=slave, stdout=slave, stderr=slave, cwd=project.root, env=env,
                            start_new_session=True)
    os.close(slave)
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10000, ratio=0.5)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:  # EIO: the child closed the pty
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                stream.feed(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    history = ["".join(ch.data for ch in line.values()).rstrip() for line in screen.history.top]
    return code, [*history, *(line.rstrip() for line in screen.display)]


def progress_rows(lines: list[str]) -> list[str]:
    """Lines that are (or contain) a live progress row: a bar outside a table's borders."""
    return [ln for ln in lines if BAR in ln and ln.lstrip()[:1] not in TABLE]


def over_total(lines: list[str]) -> list[str]:
    """Counters in progress rows that show more than their total (118.4/117.5 MB, 7/6)."""
    bad = []
    for ln in progress_rows(lines):
        for done, total, _ in COUNTER.findall(ln):
            if float(done) > float(total):
                bad.append(ln)
    return bad


def assert_clean(lines: list[str], record: str) -> None:
    """No progress row left, no line with two records (``record``: a regex of one), no counter past its total."""
    assert not progress_rows(lines), "\n".join(progress_rows(lines))
    glued = [ln for ln in lines if len(re.findall(record, ln)) > 1]
    assert not glued, "\n".join(glued)
    assert not over_total(lines)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("terminal"), boards={b: dict(SANDBOX_BOARD) for b in BOARDS})
    project.deploy("sandbox", "up")
    yield project
    assert project.down()


def test_the_checker_sees_what_was_wrong():
    glued = ["b3: health check ━━━━━━━━ 119.8/117.5 MB 11.3 MB/s 0:00:11pushed b3: switched to release ef5b"]
    assert progress_rows(glued) and over_total(glued)
    assert not progress_rows(["┃ board ┃ result ┃", "┡━━━━━━━╇━━━━━━━━━┩", "pushed b1: switched to release 1"])


def test_push_to_eight_boards_leaves_a_clean_screen(fleet):
    code, lines = in_terminal(fleet, "push", "all", "--no-health-check")
    assert code == 0, "\n".join(lines[-20:])
    assert_clean(lines, r"pushed b\d")
    assert sum(ln.startswith("pushed ") for ln in lines) == len(BOARDS)
    assert any("targeted 8, ok 8" in ln for ln in lines)
    (fleet.images / "extra.jpg").write_bytes((fleet.images / "coffee.jpg").read_bytes() + b"\0" * 1000)
    code, lines = in_terminal(fleet, "push", "all")  # health checks this time
    assert code == 0
    assert_clean(lines, r"pushed b\d")
    assert sum(ln.startswith("pushed ") and "switched to release" in ln for ln in lines) == len(BOARDS), lines
    assert any("healthy 8" in ln for ln in lines), lines


def test_push_to_one_board_run_pull_and_service_status_leave_a_clean_screen(fleet):
    code, lines = in_terminal(fleet, "push", "b1")
    assert code == 0 and sum(ln.startswith("pushed ") for ln in lines) == 1
    assert_clean(lines, r"pushed b\d")
    code, lines = in_terminal(fleet, "run", "b1")
    assert code == 0, "\n".join(lines[-20:])
    assert_clean(lines, r"run \S+ on b\d")
    summary = [ln for ln in lines if re.match(r"run \S+ on b1: \d+ ok", ln)]
    assert len(summary) == 1, lines
    assert sum(" ok  " in ln for ln in lines) == 4  # one line per image (3 photos + extra.jpg)
    code, lines = in_terminal(fleet, "pull", "b1")
    assert code == 0
    assert_clean(lines, r"pulled \d+ files")
    assert sum(ln.startswith("pulled ") for ln in lines) == 1
    code, lines = in_terminal(fleet, "service", "status", "b1")
    assert code == 0
    assert_clean(lines, r"service: ")
    assert any(ln.startswith("b1: service: none") for ln in lines), lines


def test_run_on_eight_boards_leaves_a_clean_screen(fleet):
    code, lines = in_terminal(fleet, "run", "all")
    assert code == 0, "\n".join(lines[-20:])
    assert_clean(lines, r"run \S+ on b\d")
    assert sum(bool(re.match(r"run \S+ on b\d: 4 ok", ln)) for ln in lines) == len(BOARDS), lines
