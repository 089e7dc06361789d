"""Issue 23, the board's side: a compromised board (its cached board code replaced, ``compromised.py``) sends
crafted replies over a real sshd, and the host stays bounded in disk, memory and time, refuses what is not
a run, and prints one line. Each test here failed on the code before issue 23 (item 5's pull check was already
in place: its test guards it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from compromised import compromise, restore

from deploy.testing import SANDBOX_BOARD, Project

RSS_LIMIT = 250 << 20  # the host's peak resident memory in these tests (a deploy command is ~80 MiB)
DISK_LIMIT = 64 << 20  # what a refused pull may have written under outputs/ before the watchdog stops it


@pytest.fixture(scope="module")
def lab(tmp_path_factory, demo):
    proj = Project(tmp_path_factory.mktemp("evil"), demo, boards={n: dict(SANDBOX_BOARD) for n in ("board1", "board2")})
    proj.environ["COLUMNS"] = "400"  # tables are not wrapped in the middle of what the tests look for
    proj.deploy_json("sandbox", "up", timeout=300)
    yield proj
    assert proj.down()


@pytest.fixture
def evil(lab):
    """board1 compromised for the test (``compromise(lab, handlers)``), its own code back afterwards."""
    yield lab
    restore(lab, "board1")


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def disk_used(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


# Started through this small process, so the command's peak RSS is its own: Linux carries a process's
# high-water mark across exec, and a child forked straight from pytest (hundreds of MiB after a whole
# suite) would report pytest's.
SHIM = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.execv(sys.argv[1], sys.argv[1:])\n"
        "_, status, usage = os.wait4(pid, 0)\nopen(os.environ['PEAK_RSS_FILE'], 'w').write(str(usage.ru_maxrss))\n"
        "sys.exit(os.waitstatus_to_exitcode(status) % 256)\n")


def measured(project, *args, timeout: float = 120, watch: Path | None = None, code: str | None = None):
    """``deploy ARGS`` as a subprocess: (result with returncode/stdout/stderr, peak RSS in bytes). Killed (and
    the test failed) past ``timeout`` seconds or once ``watch`` holds more than ``DISK_LIMIT`` bytes."""
    argv = project.argv(*args) if code is None else [sys.executable, "-c", code, *project.argv(*args)[3:]]
    peak_file = project.root / f".peak-rss-{os.getpid()}"
    peak_file.unlink(missing_ok=True)
    p = subprocess.Popen([sys.executable, "-c", SHIM, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=project.root, env={**project.environ, "PEAK_RSS_FILE": str(peak_file)},
                         start_new_session=True)
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()), daemon=True)
               for k, f in (("stdout", p.stdout), ("stderr", p.stderr))]
    for t in readers:
        t.start()
    t0, why = time.monotonic(), None
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > timeout:
            why = f"still running after {timeout:.0f}s"
        elif watch is not None and disk_used(watch) > DISK_LIMIT:
            why = f"wrote more than {DISK_LIMIT >> 20} MiB under {watch}"
        if why:
            os.killpg(p.pid, 9)  # the shim and the command under it
            os.wait4(p.pid, 0)
            pytest.fail(f"deploy {' '.join(args)}: {why}")
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join(10)
    peak = int(peak_file.read_text()) if peak_file.exists() else usage.ru_maxrss
    return subprocess.CompletedProcess(argv, p.returncode, out.get("stdout", ""), out.get("stderr", "")), peak * 1024


# ---------------------------------------------------------------- 10: replies of the wrong shape


def test_wrong_json_types_in_a_reply_are_one_protocol_error(evil):
    compromise(evil, '''
        def status(wire):
            wire.stdin.readline()
            wire.reply({"facts": {"arch": "x86_64", "python": "3.11.7", "free_bytes": "lots"},
                        "runs": [{"id": "r1", "summary": {"ips": 1}}], "bashrc_blocks": "one"})
        HANDLED = {"status": status}
    ''')
    r = evil.deploy("status", "board1", check=False)
    assert r.returncode == 1
    assert "malformed StatusReply" in one_line(r)


# ---------------------------------------------------------------- 4: a board that never finishes a reply

STALL = '''
    def status(wire):
        wire.stdin.readline()
        wire.stdout.write(b'{"facts": {"arch": "x86_64"')
        wire.stdout.flush()
        while True:  # one byte a second: every read gets something, the reply never ends
            time.sleep(1)
            wire.stdout.write(b" ")
            wire.stdout.flush()
    HANDLED = {"status": status}
'''
PATCHED = "import sys, deploy.link.remote as r; r.REPLY_TIMEOUT = 4.0; from deploy.cli import main; sys.exit(main())"


def test_a_stalled_board_fails_its_row_and_the_fleet_finishes(evil):
    compromise(evil, STALL)
    t0 = time.monotonic()
    r, _ = measured(evil, "status", "board1,board2", "--json", code=PATCHED, timeout=90)
    assert time.monotonic() - t0 < 60
    rows = {row["board"]: row for row in json.loads(r.stdout)["boards"]}
    assert r.returncode == 1 and rows["board2"]["ok"]
    assert not rows["board1"]["ok"] and "no answer to status for 4s" in rows["board1"]["error"]


def test_a_line_that_never_ends_is_cut_off_in_bounded_memory(evil):
    compromise(evil, '''
        def status(wire):
            wire.stdin.readline()
            wire.stdout.write(b'{"facts": "')
            chunk = b"A" * (1 << 20)
            for _ in range(400):
                wire.stdout.write(chunk)
            wire.stdout.flush()
            time.sleep(30)
        HANDLED = {"status": status}
    ''')
    r, rss = measured(evil, "status", "board1", code=PATCHED, timeout=90)
    assert r.returncode == 1 and "longer than" in one_line(r)
    assert rss < RSS_LIMIT, rss >> 20


# ---------------------------------------------------------------- 2 and 3: pulls and collects

PULL_HEAD = '''
    def head(wire, files=1, size=512, run_id="r1"):
        wire.stdin.readline()
        wire.reply({"run_id": run_id, "files": files, "bytes": size})

    def stream(wire, header, size):
        wire.stdout.write(header)
        chunk = b"0" * (1 << 20)
        for _ in range(size >> 20):
            wire.stdout.write(chunk)
        wire.stdout.flush()
'''


@pytest.mark.parametrize("kind", ["pax", "gnu-long-name"])
def test_a_huge_tar_header_is_refused_before_it_is_read(evil, kind):
    header = ('tarfile.TarInfo("././@PaxHeader"); info.type = tarfile.XHDTYPE' if kind == "pax" else
              'tarfile.TarInfo("././@LongLink"); info.type = tarfile.GNUTYPE_LONGNAME')
    compromise(evil, PULL_HEAD + f'''
    def pull(wire):
        head(wire)
        info = {header}
        info.size = 400 << 20
        stream(wire, info.tobuf(tarfile.GNU_FORMAT), info.size)
    HANDLED = {{"pull": pull}}
    ''')
    r, rss = measured(evil, "pull", "board1", "--run", "r1", watch=evil.root / "outputs")
    assert r.returncode == 1 and "header of 419430400 bytes" in one_line(r)
    assert rss < RSS_LIMIT, rss >> 20
    assert not list((evil.root / "outputs" / "board1").glob(".r1.partial-*"))


def b256(n: int) -> bytes:
    return bytes([0x80]) + n.to_bytes(11, "big")


def gnu_sparse_member(realsize: int) -> bytes:
    """A GNU sparse member ('S') of 512 stored bytes that claims ``realsize``: all but its end is a hole."""
    import tarfile

    info = tarfile.TarInfo("big.bin")
    info.size = 512
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    buf[156:157] = b"S"
    buf[386:398] = b256(realsize - 512)
    buf[398:410] = b"%011o\0" % 512
    buf[483:495] = b256(realsize)
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % (sum(buf))
    return bytes(buf) + b"X" * 512 + bytes(1024)


def test_a_sparse_member_is_refused(evil):
    compromise(evil, PULL_HEAD + f'''
    def pull(wire):
        head(wire)
        wire.stdout.write({gnu_sparse_member(50 << 30)!r})
        wire.stdout.flush()
    HANDLED = {{"pull": pull}}
    ''')
    r, _ = measured(evil, "pull", "board1", "--run", "r1", watch=evil.root / "outputs")
    assert r.returncode == 1 and "big.bin" in one_line(r)


def test_a_run_announced_larger_than_the_hosts_free_space_is_not_pulled(evil):
    compromise(evil, PULL_HEAD + '''
    def pull(wire):
        head(wire, size=5 << 40)
        info = tarfile.TarInfo("results.jsonl")
        info.size = 5 << 40
        chunk = b"0" * (1 << 20)
        wire.stdout.write(info.tobuf(tarfile.GNU_FORMAT))
        while True:
            wire.stdout.write(chunk)
    HANDLED = {"pull": pull}
    ''')
    r, _ = measured(evil, "pull", "board1", "--run", "r1", watch=evil.root / "outputs")
    assert r.returncode == 1 and "free" in one_line(r) and "not pulled" in r.stderr


def test_a_sparse_file_in_a_run_directory_is_not_pulled(lab):
    """The board's own code, a run directory with a 5 TiB file of holes in it (a tampered file, not code)."""
    home = Path(lab.status("board1")["home"])
    run = home / "HIAI_PROJECTS" / lab.app / "runs" / "holes"
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.jsonl").write_text('{"image": "a.jpg", "ok": true, "topk": [[1, "x", 0.5]]}\n')
    (run / "job.json").write_text('{"v": 1, "run_id": "holes"}\n')  # a run that started (the board pulls only those)
    with open(run / "big.bin", "wb") as f:
        f.truncate(5 << 40)
    owner = home.stat()
    for p in (*run.relative_to(home).parents, run.relative_to(home)):
        if str(p) != ".":
            os.chown(home / p, owner.st_uid, owner.st_gid)
    for p in run.iterdir():
        os.chown(p, owner.st_uid, owner.st_gid)
    try:
        r, _ = measured(lab, "pull", "board1", "--run", "holes", watch=lab.root / "outputs")
        assert r.returncode == 1 and "big.bin" in one_line(r)
    finally:
        (run / "big.bin").unlink()


def test_a_collect_announcing_gigabytes_stays_in_bounded_memory(evil):
    compromise(evil, '''
        def collect(wire):
            wire.stdin.readline()
            wire.reply({"first": 1, "last": 1, "bytes": 3 << 29, "oldest": 1})
            chunk = b"x" * (1 << 20)
            for _ in range(400):
                wire.stdout.write(chunk)
            wire.stdout.flush()
        HANDLED = {"collect": collect}
    ''')
    journal = evil.root / "outputs" / "board1" / "service"
    r, rss = measured(evil, "collect", "board1")
    assert r.returncode == 1 and "nothing was appended" in one_line(r)
    assert rss < RSS_LIMIT, rss >> 20
    assert not journal.exists() or not any(p.stat().st_size for p in journal.iterdir())


# ---------------------------------------------------------------- 5: a run id that is not the one asked for


def test_a_board_cannot_answer_a_pull_with_the_service_journal(evil):
    journal = evil.root / "outputs" / "board1" / "service" / "journal.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text('{"seq": 1, "image": "mine.jpg"}\n')
    compromise(evil, PULL_HEAD + '''
    def pull(wire):
        head(wire, files=1, size=10, run_id="service")
        with tarfile.open(fileobj=wire.stdout, mode="w|") as tf:
            info = tarfile.TarInfo("journal.jsonl")
            info.size = 10
            tf.addfile(info, io.BytesIO(b"forged!!!\\n"))
        wire.stdout.flush()
    HANDLED = {"pull": pull}
    ''')
    r = evil.deploy("pull", "board1", check=False)
    assert r.returncode == 1 and "'service'" in one_line(r)
    assert journal.read_text() == '{"seq": 1, "image": "mine.jpg"}\n'
    r = evil.deploy("run", "board1", "--run-id", "service", check=False)
    assert r.returncode == 2 and "reserved" in r.stderr


# ---------------------------------------------------------------- 6: nothing from the board acts on the terminal

ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"
TERMINAL = f'''
    ESC = {ESC!r}

    def status(wire):
        wire.stdin.readline()
        wire.reply({{"facts": {{"arch": ESC, "python": "3.11" + ESC, "os": ESC}}, "current": ESC,
                    "releases": [{{"id": ESC}}], "runs": [{{"id": ESC, "status": ESC, "summary": {{"ok": ESC}}}}],
                    "service": {{"method": "cron", "enabled": True, "state": ESC, "last_error": ESC}}}})

    def releases(wire):
        wire.stdin.readline()
        wire.reply({{"error": "refused " + ESC}})

    def run(wire):
        req = json.loads(wire.stdin.readline())
        wire.reply({{"helper": "started", "run_id": req["run_id"], "pid": 1, "release": ESC}})
        for ev in ({{"event": "start", "run_id": ESC, "mode": "run", "total": 2}},
                   {{"event": "result", "image": ESC + ".jpg", "topk": [[1, ESC, 0.9]]}},
                   {{"event": "error", "image": ESC, "kind": ESC, "message": ESC}},
                   {{"event": "end", "summary": {{"ok": 1, "failed": 1, "status": ESC}}}}):
            wire.reply(dict(v=1, **ev))
        wire.reply({{"helper": "exit", "ended": True, "code": 0}})

    def pull(wire):
        wire.stdin.readline()
        data = json.dumps({{"image": ESC, "ok": True, "topk": [[1, ESC, 0.5]]}}).encode() + b"\\n"
        wire.reply({{"run_id": "r1", "files": 1, "bytes": len(data)}})
        with tarfile.open(fileobj=wire.stdout, mode="w|") as tf:
            info = tarfile.TarInfo("results.jsonl")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        wire.stdout.flush()

    HANDLED = {{"status": status, "releases": releases, "run": run, "pull": pull}}
'''


@pytest.mark.parametrize("args", [("status", "board1"), ("releases", "board1"), ("run", "board1"),
                                  ("pull", "board1", "--run", "r1")])
def test_board_strings_reach_the_terminal_visible(evil, args):
    compromise(evil, TERMINAL)
    r = evil.deploy(*args, check=False)
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout + r.stderr
    assert "\\x1b]0;pwned\\x07" in r.stdout + r.stderr
    if args[0] in ("status", "run"):  # --json keeps the exact strings
        assert ESC in strings(json.loads(evil.deploy(*args, "--json", check=False).stdout))


def strings(obj) -> list[str]:
    """Every string in a JSON document."""
    if isinstance(obj, str):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    return [s for v in values for s in strings(v)]


def test_an_error_line_on_a_terminal_shows_the_escape_sequence(evil):
    import pty

    compromise(evil, TERMINAL)
    master, slave = pty.openpty()
    p = subprocess.Popen(evil.argv("releases", "board1"), stdin=slave, stdout=slave, stderr=slave, cwd=evil.root,
                         env={**evil.environ, "TERM": "xterm", "COLUMNS": "400"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait(60)
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert p.returncode == 1 and "refused" in text
    assert "\x1b]0;" not in text and "\x1b[2J" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in text.replace("\r\n", "")
