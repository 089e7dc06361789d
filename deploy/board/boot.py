# The bootstrap: the only code sent on the command line (``python3 -I -c BOOT HASH OP``).
# Python 3.7 + stdlib only, and small on purpose. It installs the board code archive once per
# version into ~/.cache/atlas-deploy/board/<HASH>/ (atomically, verified by sha256), then runs OP.
# stdin starts with "cached\n" or "code <length>\n" + the zip archive, then the op's request line.
# The first line it writes is {"boot": "ok"} or, when the host said "cached" and the archive is
# not here, {"boot": "need-code"} (the host then calls again with the archive).
import os
import sys


def _install(data, digest, dest):
    """Unpack the archive into ``dest`` (atomically); False if it does not hash to ``digest``."""
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
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if name.startswith("/") or ".." in name.split("/"):
                return False
        zf.extractall(tmp)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another op installed it first
    return True


def _boot():
    digest, op = sys.argv[1], sys.argv[2]
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    if sys.version_info < (3, 7):  # noqa: UP036  (a 3.6 python3 must get this line, not a SyntaxError)
        msg = "{} is Python {}.{}; the board code needs >= 3.7 (set the board's python: in the inventory)"
        out.write(('{"error": "%s"}\n' % msg.format(sys.executable, *sys.version_info[:2])).encode())  # noqa: UP031
        return 1
    home = os.path.expanduser("~")
    dest = os.path.join(home, ".cache", "atlas-deploy", "board", digest)
    head = inp.readline().split()
    if head[:1] == [b"code"]:
        if not _install(inp.read(int(head[1])), digest, dest):
            out.write(b'{"error": "board code archive arrived corrupted"}\n')
            return 1
    elif not os.path.isdir(dest):
        out.write(b'{"boot": "need-code"}\n')
        out.flush()
        return 0
    out.write(b'{"boot": "ok"}\n')
    out.flush()
    sys.path.insert(0, dest)
    from deploy_board.main import run
    from deploy_board.wire import Wire

    return run(op, Wire(inp, out, home))


sys.exit(_boot())
