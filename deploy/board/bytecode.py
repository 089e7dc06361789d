"""Bytecode written once and checked: the only ``.pyc`` files the board code and the agent read.

Python 3.7 + stdlib only. CPython's own bytecode writer (``importlib._bootstrap_external._write_atomic``)
does not check for short writes: with a few KiB free on the board it leaves a truncated ``.pyc`` that every
later import fails on ("marshal data too short") long after the space is freed. So nothing on the board
writes bytecode as it imports (board operations run with ``-B``, the agent with ``PYTHONDONTWRITEBYTECODE``);
the bytecode is written here instead, when a release is assembled in its staging directory (and by
``boot.py`` for the board code): every byte checked, then renamed into place, so a full disk fails the push
and leaves no half file. The files are PEP 552 unchecked hash-based ``.pyc``: a release never changes, so
the interpreter takes them without reading the source again. A file unchanged since an older release gets
that release's ``.pyc`` by a hard link, as it got its source.
"""

import importlib.util
import marshal
import os

UNCHECKED_HASH = b"\x01\x00\x00\x00"  # PEP 552 flags: hash-based, source not checked


def pyc_bytes(source, path):
    """The ``.pyc`` of ``source`` (bytes) for this interpreter; SyntaxError/ValueError when it is not its Python."""
    code = compile(source, path, "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + UNCHECKED_HASH + importlib.util.source_hash(source) + marshal.dumps(code)


def write_whole(path, data):
    """Write ``data`` to ``path`` through a temporary file, every byte checked; OSError leaves nothing behind."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]  # a short write is followed by one that raises (ENOSPC)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def ours(pyc):
    """Whether a ``.pyc`` was written here (unchecked hash-based); an older agent's own (timestamp) ones may
    be torn and are never reused."""
    try:
        with open(pyc, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == UNCHECKED_HASH


def compile_file(path):
    """Compile one source file next to itself (``__pycache__``); False when it is not this interpreter's Python."""
    with open(path, "rb") as f:
        source = f.read()
    try:
        data = pyc_bytes(source, path)
    except (SyntaxError, ValueError):  # e.g. a test file of a package written for another Python
        return False
    pyc = importlib.util.cache_from_source(path)
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    write_whole(pyc, data)
    return True


def compile_release(staging, rows, index):
    """Bytecode for every ``.py`` of a release assembled in ``staging`` (manifest ``rows``); ``index`` maps a
    sha256 to the file that provided it (``push.assemble``): an older release's file lends its ``.pyc`` by
    a hard link. Returns (compiled, linked)."""
    todo, linked = link_unchanged(staging, rows, index)
    return compile_all(todo), linked


WORKERS = 8  # at most: an Atlas 200 DK has 8 cores (Cortex-A55), and a first push compiles ~300 files
CHUNK = 40  # fewer files than this per worker are not worth a process


def compile_all(paths):
    """Compile ``paths``, spread over forked workers when there are many (each file is independent; a
    worker's failure is the whole push's, as a serial compile's would be). Returns how many compiled."""
    workers = min(WORKERS, os.cpu_count() or 1, len(paths) // CHUNK)
    if workers < 2:
        return sum(compile_file(p) for p in paths)
    pids = []
    for k in range(1, workers):
        pid = os.fork()
        if pid == 0:  # a worker: its share, then out without running anything of the parent's
            code = 0
            try:
                for p in paths[k::workers]:
                    compile_file(p)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    compiled = sum(compile_file(p) for p in paths[0::workers])
    failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
    if failed:
        raise OSError(f"compiling the release's bytecode failed in {len(failed)} worker(s) (the disk may be full)")
    theirs = [p for k in range(1, workers) for p in paths[k::workers]]
    return compiled + sum(ours(importlib.util.cache_from_source(p)) for p in theirs)


def link_unchanged(staging, rows, index):
    """Hard-link the ``.pyc`` of every ``.py`` unchanged since an older release; the rest, to compile."""
    todo, linked = [], 0
    for path, _size, sha, _mode in rows:
        if not path.endswith(".py"):
            continue
        dst = os.path.join(staging, path)
        src = index.get(sha, (dst,))[0]
        if src != dst:
            old = importlib.util.cache_from_source(src)
            if ours(old):
                new = importlib.util.cache_from_source(dst)
                os.makedirs(os.path.dirname(new), exist_ok=True)
                try:
                    os.link(old, new)
                    linked += 1
                    continue
                except OSError:
                    pass
        todo.append(dst)
    return todo, linked
