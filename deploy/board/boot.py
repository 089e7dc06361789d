# The bootstrap: the only code sent on the command line (``python3 -I -B -c BOOT HASH OP``).
# Python 3.7 + stdlib only, and small on purpose. It installs the board code archive once per
# version into ~/.cache/atlas-deploy/board/<HASH>/ (atomically, verified by sha256), then runs OP.
# stdin starts with "cached\n" or "code <length>\n" + the zip archive, then the op's request line.
# The first line it writes is {"boot": "ok"} or, when the host said "cached" and the archive is
# not here, {"boot": "need-code"} (the host then calls again with the archive).
# OP "-" (``... HASH - APP``): a standby a warm connection keeps ready: it loads the board code at
# once, then waits for a line "op NAME" before the rest; if the app's env.sh (sourced before it
# started) has changed since, it answers {"boot": "stale"} and the host starts a fresh one.
import os
import sys


def _install(data, digest, dest):
    """Unpack the archive into ``dest`` (atomically), its bytecode written and checked here (the ops run with
    -B: CPython's own writer leaves torn .pyc files on a full disk); False if it does not hash to ``digest``."""
    import hashlib
    import io
    import shutil
    import zipfile

    if hashlib.sha256(data).hexdigest() != digest:
        return False
    if os.path.isdir(dest):
        return True
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                if name.startswith("/") or ".." in name.split("/"):
                    return False
            zf.extractall(tmp)
        _compile(os.path.join(tmp, "deploy_board"), os.path.join(dest, "deploy_board"))
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(dest):  # else another op installed it first
            raise
    return True


def _compile(pkg, final):
    import importlib.util as util
    import marshal

    os.mkdir(os.path.join(pkg, "__pycache__"))
    for name in os.listdir(pkg):
        if name.endswith(".py"):
            with open(os.path.join(pkg, name), "rb") as f:
                src = f.read()
            code = compile(src, os.path.join(final, name), "exec", dont_inherit=True)
            view = memoryview(util.MAGIC_NUMBER + b"\1\0\0\0" + util.source_hash(src) + marshal.dumps(code))
            fd = os.open(util.cache_from_source(os.path.join(pkg, name)), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                while view:
                    view = view[os.write(fd, view):]  # every byte checked (a short write, then ENOSPC)
            finally:
                os.close(fd)


def _load(dest):
    """The board code's entry points, or None when the cache is damaged (removed: the host sends it again)."""
    sys.path.insert(0, dest)
    try:
        from deploy_board.main import run
        from deploy_board.wire import Wire
    except (EOFError, ValueError, ImportError, SyntaxError):
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
        return None
    return run, Wire


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _standby(inp, out, home, dest):
    """(the op a command asks for, the board code loaded) once it asks; (None, None) when the command's line
    never came (the connection closed) or the app's env.sh changed while this waited (said as "stale")."""
    app = sys.argv[3] if len(sys.argv) > 3 else ""
    env = os.path.join(home, "HIAI_PROJECTS", app, "env.sh") if app else None
    stamp = _stamp(env) if env else None
    entry = _load(dest) if os.path.isdir(dest) else None
    words = inp.readline().split()
    if len(words) != 2 or words[0] != b"op":
        return None, None
    if env and _stamp(env) != stamp:
        out.write(b'{"boot": "stale"}\n')
        out.flush()
        return None, None
    return words[1].decode("ascii", "replace"), entry


def _boot():
    digest, op = sys.argv[1], sys.argv[2]
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    if sys.version_info < (3, 7):  # noqa: UP036  (a 3.6 python3 must get this line, not a SyntaxError)
        msg = "{} is Python {}.{}; the board code needs >= 3.7 (set the board's python: in the inventory)"
        out.write(('{"error": "%s"}\n' % msg.format(sys.executable, *sys.version_info[:2])).encode())  # noqa: UP031
        return 1
    home = os.path.expanduser("~")
    dest = os.path.join(home, ".cache", "atlas-deploy", "board", digest)
    entry = None
    if op == "-":
        op, entry = _standby(inp, out, home, dest)
        if op is None:
            return 0
    head = inp.readline().split()
    try:
        if head[:1] == [b"code"] and not _install(inp.read(int(head[1])), digest, dest):
            out.write(b'{"error": "board code archive arrived corrupted"}\n')
            return 1
    except OSError as exc:  # a full disk: said in one line, nothing half-installed left
        import json

        out.write((json.dumps({"error": f"cannot install the board code in {dest}: {exc}"}) + "\n").encode())
        return 1
    if entry is None and os.path.isdir(dest):
        entry = _load(dest)
    if entry is None:
        out.write(b'{"boot": "need-code"}\n' if head[:1] != [b"code"] else b'{"error": "board code does not load"}\n')
        out.flush()
        return 0
    out.write(b'{"boot": "ok"}\n')
    out.flush()
    run, wire = entry
    return run(op, wire(inp, out, home))


sys.exit(_boot())
