"""An emulated aarch64 board runtime: a Debian arm64 root filesystem run through qemu-user.

An `arch: aarch64` sandbox board must exercise what a real Atlas board would: aarch64 wheels, an
aarch64 Python, an sshd that is not the host's. We get that without a VM by building a Debian
bullseye arm64 rootfs with debootstrap (once, cached outside the repo) and running its binaries
through qemu-aarch64-static, registered with binfmt_misc so the kernel starts qemu for any aarch64
ELF, including inside a chroot.

This module owns only the runtime: binfmt, the rootfs, users inside it, the bind mounts and the
chrooted sshd process. The sandbox module decides ports, host keys and the sshd config.

Everything here needs root (debootstrap, chroot, mount); failures raise EmulationError with a
one-line message the CLI can print as is.

Safety: while a chroot is active the rootfs contains bind mounts of the host's /dev, /sys and
/proc. Deleting such a tree recursively would delete host device nodes, so every removal here
goes through `_remove_tree`, which unmounts (and verifies) first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .. import proc
from ..errors import EmulationError  # a SandboxError; re-exported under its old name
from . import sysroot

SUITE = "bullseye"  # Python 3.9: the newest the 200I DK A2's CANN supports; glibc 2.31
ARCH = "arm64"
VARIANT = "minbase"
# What a board needs beyond minbase (which already has bash, coreutils, tar, passwd):
# openssh-server (sshd + sftp-server), python3 (3.9), libgomp1 (onnxruntime's OpenMP runtime),
# ca-certificates (pip over https from inside, if ever needed), procps (ps/pkill for the agent's
# detached runs), fonts-dejavu-core (the font the Ascend samples draw labels with).
PACKAGES = ("openssh-server", "python3", "libgomp1", "ca-certificates", "procps", "fonts-dejavu-core")
# What C and C++ need of the board (sysroot.py), stamped apart: an older rootfs gets them by apt, no rebuild.
SYSROOT_PACKAGES = sysroot.PACKAGES
DEFAULT_MIRROR = "http://deb.debian.org/debian"

QEMU = "/usr/bin/qemu-aarch64-static"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = BINFMT_DIR / "qemu-aarch64"
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")

STAMP_NAME = ".atlas-deploy-rootfs.json"
# A clean environment for anything started inside the rootfs: the host's PATH (pyenv shims,
# /usr/local/bin of x86_64 tools) means nothing there.
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}
# (mount point inside the rootfs, how to mount it), mounted in this order, unmounted in reverse.
# /proc and /sys: Python's os.cpu_count and onnxruntime's cpuinfo read them. /dev: /dev/null,
# /dev/urandom, /dev/ptmx for sshd. /dev/pts separately (a plain bind of /dev does not carry its
# submounts) so that `ssh -t` gets a pty. /dev/shm for Python's multiprocessing primitives.
_MOUNTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("proc", ("-t", "proc", "proc")),
    ("sys", ("--bind", "--make-private", "/sys")),
    ("dev", ("--bind", "--make-private", "/dev")),
    ("dev/pts", ("--bind", "--make-private", "/dev/pts")),
    ("dev/shm", ("--bind", "--make-private", "/dev/shm")),
)
_BASHRC_GUARD = re.compile(r"case \$- in\s*\n\s*\*i\*\)\s*;;\s*\n\s*\*\)\s*return\s*;;\s*\n\s*esac")
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$")  # HwHiAiUser, as on Atlas boards


# --- prerequisites ------------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise EmulationError("aarch64 emulation needs root (debootstrap, chroot and bind mounts)")


def _run(argv: Sequence[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a host tool; a failure becomes an EmulationError naming `what` and the tool's last line."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", **kwargs)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise EmulationError(f"{what} failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    return proc


def _binfmt_flags() -> str | None:
    """Flags of the qemu-aarch64 binfmt entry, '' if disabled, None if there is no entry."""
    try:
        text = BINFMT_ENTRY.read_text()
    except FileNotFoundError:
        return None
    if not text.startswith("enabled"):
        return ""
    match = re.search(r"^flags:\s*(\S*)", text, re.MULTILINE)
    return match.group(1) if match else ""


def ensure_binfmt() -> None:
    """Make the kernel run aarch64 ELF binaries through qemu, also inside a chroot.

    The F (fix-binary) flag matters: without it the kernel looks the interpreter path up at exec
    time, i.e. inside the chroot, where /usr/libexec/qemu-binfmt/... does not exist, and every exec
    fails with ENOENT. Debian's qemu-user-static registers with F; we verify instead of assuming,
    because containers and older hosts register differently.
    """
    if not (os.path.exists(QEMU) or shutil.which("qemu-aarch64-static")):
        raise EmulationError(
            "qemu-user-static is not installed: apt-get install qemu-user-static binfmt-support"
        )
    if not (BINFMT_DIR / "status").exists():
        _require_root()
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
    flags = _binfmt_flags()
    if flags is None and shutil.which("update-binfmts"):
        _require_root()
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
        flags = _binfmt_flags()
    if flags is None and BINFMT_CONF.is_file():
        # No binfmt-support (or it did nothing): register from the systemd-binfmt snippet directly.
        _require_root()
        line = next((ln for ln in BINFMT_CONF.read_text().splitlines() if ln.startswith(":")), None)
        if line:
            with contextlib.suppress(OSError):
                (BINFMT_DIR / "register").write_text(line)
        flags = _binfmt_flags()
    if flags is None:
        raise EmulationError(
            "binfmt_misc has no qemu-aarch64 entry: apt-get install binfmt-support && "
            "update-binfmts --enable qemu-aarch64"
        )
    if flags == "":
        _require_root()
        BINFMT_ENTRY.write_text("1")
        flags = _binfmt_flags() or ""
    if "F" not in flags:
        raise EmulationError(
            f"binfmt_misc entry qemu-aarch64 has flags {flags!r} without F (fix-binary), so it cannot "
            "work inside a chroot: re-register it with F (Debian's qemu-user-static does)"
        )


# --- the rootfs ---------------------------------------------------------------------------------


def default_rootfs_path() -> Path:
    """Where the rootfs lives: $DEPLOY_ROOTFS_CACHE (the rootfs directory itself) or the user cache.

    Outside the repo on purpose: it is ~220 MB of another architecture's binaries, shared by all
    checkouts and all emulated boards (each board only adds a user and a home inside it).
    """
    env = os.environ.get("DEPLOY_ROOTFS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "atlas-deploy" / "rootfs" / f"{SUITE}-{ARCH}"


def _wanted_stamp() -> dict:
    return {"suite": SUITE, "arch": ARCH, "variant": VARIANT, "packages": sorted(PACKAGES)}


def _stamp_ok(rootfs: Path) -> bool:
    try:
        stamp = json.loads((rootfs / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return {k: stamp.get(k) for k in _wanted_stamp()} == _wanted_stamp()


@contextlib.contextmanager
def _locked(rootfs: Path) -> Iterator[None]:
    """Serialise builds and mount bookkeeping for one rootfs across processes (sandbox up in parallel)."""
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    with open(rootfs.parent / f".{rootfs.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_rootfs(cache: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Return the path of a ready arm64 rootfs, building it with debootstrap the first time.

    The build (about 4 min with a fast mirror on 2 cores; 220 MB) runs into a temporary sibling directory renamed
    into place only once complete and stamped, so an interrupted build never leaves a half rootfs that a later run
    would trust. A rootfs with another stamp (suite/arch/variant/packages) is rebuilt (unless in use); one that
    lacks only SYSROOT_PACKAGES gets them by apt inside it (15 s). `progress` gets debootstrap's or apt's lines.
    """
    rootfs = (Path(cache) if cache is not None else default_rootfs_path()).absolute()
    if _stamp_ok(rootfs) and not _missing_sysroot(rootfs):
        return rootfs
    _require_root()
    ensure_binfmt()
    with _locked(rootfs):
        if _stamp_ok(rootfs):  # ours but without the sysroot packages, or built by another process meanwhile
            _top_up(rootfs, progress)
            return rootfs
        if not shutil.which("debootstrap"):
            raise EmulationError("debootstrap is not installed: apt-get install debootstrap")
        _build(rootfs, progress)
    return rootfs


def _build(rootfs: Path, progress: Callable[[str], None] | None) -> None:
    """debootstrap into a sibling, finish, stamp and rename into place (the lock is held)."""
    for stale in rootfs.parent.glob(f".{rootfs.name}.build-*"):
        _remove_tree(stale)  # interrupted earlier builds; we hold the lock, so none is running
    if rootfs.exists() and _mounts_under(rootfs):
        raise EmulationError(f"{rootfs} is out of date but in use by running boards: stop them first")
    build = rootfs.parent / f".{rootfs.name}.build-{os.getpid()}"
    try:
        _debootstrap(build, progress)
        _finish_rootfs(build)
    except BaseException:
        _keep_debootstrap_log(build, rootfs)
        _remove_tree(build)
        raise
    old = rootfs.parent / f".{rootfs.name}.old-{os.getpid()}"
    if rootfs.exists():
        os.rename(rootfs, old)
    os.rename(build, rootfs)
    _remove_tree(old)  # nothing when there was no rootfs before


def _missing_sysroot(rootfs: Path) -> list[str]:
    """SYSROOT_PACKAGES the rootfs lacks, plus "(links)" while its library links are not yet relative."""
    stamp = json.loads((rootfs / STAMP_NAME).read_text())  # _stamp_ok read it
    missing = sorted(set(SYSROOT_PACKAGES) - set(stamp.get("sysroot_packages") or []))
    return missing + ([] if stamp.get("sysroot_links") == "relative" else ["(links)"])


def _top_up(rootfs: Path, progress: Callable[[str], None] | None) -> None:
    """The missing SYSROOT_PACKAGES by apt inside the rootfs, relative library links (the lock is held); stamped."""
    missing = [p for p in _missing_sysroot(rootfs) if p != "(links)"]
    if missing:
        _apt_install(rootfs, missing, progress)
    sysroot.relative_links(rootfs)
    stamp = json.loads((rootfs / STAMP_NAME).read_text())
    stamp.update(sysroot_packages=sorted(SYSROOT_PACKAGES), sysroot_links="relative")
    (rootfs / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")


def _apt_install(rootfs: Path, missing: list[str], progress: Callable[[str], None] | None) -> None:
    """apt-get install ``missing`` inside the rootfs, with /proc, /dev ... mounted (the lock is held)."""
    apt = ["chroot", str(rootfs), "/usr/bin/apt-get", "-q", "-y", "-o", "APT::Sandbox::User=root"]
    env = {**CHROOT_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    state = _load_state(rootfs)
    holder = {"id": f"apt-{uuid.uuid4().hex}", "pid": os.getpid(), "start": _start_time(os.getpid())}
    try:
        _mount_all(rootfs, state)
        state["holders"].append(holder)
        _save_state(rootfs, state)
        for refresh in (False, True):  # the package lists debootstrap left may be outdated: refresh them once
            if refresh:
                proc.stream([*apt, "update"], progress, keep=5, env=env)
            code, tail = proc.stream([*apt, "install", "--no-install-recommends", *missing], progress, keep=5, env=env)
            if code == 0:
                break
        else:
            raise EmulationError(f"installing {' '.join(missing)} failed: {proc.last_line(tail, f'exit {code}')}")
        proc.stream([*apt, "clean"], None, keep=1, env=env)
    finally:
        _release(rootfs, state, holder["id"])
        _save_state(rootfs, state)


def debootstrap_command(target: Path, mirror: str | None = None) -> list[str]:
    """The exact debootstrap invocation (also shown to users who want to build the rootfs by hand)."""
    return [
        "debootstrap",
        f"--arch={ARCH}",
        f"--variant={VARIANT}",
        f"--include={','.join(PACKAGES + SYSROOT_PACKAGES)}",
        SUITE,
        str(target),
        mirror or os.environ.get("DEPLOY_DEBIAN_MIRROR", DEFAULT_MIRROR),
    ]


def _debootstrap(target: Path, progress: Callable[[str], None] | None) -> None:
    code, tail = proc.stream(debootstrap_command(target), progress, keep=5)
    if code != 0:
        raise EmulationError(f"debootstrap failed: {proc.last_line(tail, f'exit status {code}')}")
    for mount in _mounts_under(target):  # debootstrap mounts proc/sys itself; never leave them
        _umount(mount)


def _keep_debootstrap_log(build: Path, rootfs: Path) -> None:
    log = build / "debootstrap" / "debootstrap.log"
    if log.is_file():
        with contextlib.suppress(OSError):
            shutil.copyfile(log, rootfs.parent / f"{rootfs.name}.debootstrap.log")


def _finish_rootfs(root: Path) -> None:
    """Make a fresh debootstrap a board template: no shared secrets, sshd able to start, stamped."""
    # debootstrap's openssh-server postinst generated host keys. Every board built from this rootfs
    # would share them, so remove them: each board gets its own key from the sandbox code.
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    # sshd's privilege-separation directory; normally created by the systemd unit, which never runs here.
    (root / "run" / "sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()  # ~45 MB of package files nobody needs again
    skel = root / "etc" / "skel" / ".bashrc"
    if not skel.is_file() or not _BASHRC_GUARD.search(skel.read_text()):
        raise EmulationError(f"{skel} lacks the interactive-shell guard the board .bashrc must have")
    sysroot.relative_links(root)
    stamp = dict(_wanted_stamp(), sysroot_packages=sorted(SYSROOT_PACKAGES), sysroot_links="relative",
                 mirror=debootstrap_command(root)[-1])
    (root / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")


# --- users --------------------------------------------------------------------------------------


def inside(rootfs: Path, path: str) -> Path:
    """Host path of `path` as seen inside the rootfs.

    Writing through it from the host follows symlinks on the host's terms, so only use it for paths
    this tool created (home, .ssh), never for paths a board user could have replaced by a symlink.
    """
    return Path(rootfs) / path.lstrip("/")


def user_ids(rootfs: Path, user: str) -> tuple[int, int]:
    """(uid, gid) of `user` in the rootfs: the host must chown files it writes into the board's home."""
    for line in (Path(rootfs) / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user and len(fields) >= 7:
            return int(fields[2]), int(fields[3])
    raise EmulationError(f"no user {user!r} in {rootfs}")


def add_board_user(rootfs: Path, user: str, home: str) -> None:
    """Create a board login `user` with bash and `home` (a path inside the rootfs), idempotently.

    The home starts as a copy of the rootfs's /etc/skel, i.e. a stock Debian .bashrc with the
    `case $- in *i*)` guard: non-interactive ssh commands return from it early, which is exactly
    the real boards' trap our env block must survive. The password is `*` (no password can match)
    rather than useradd's `!`: with UsePAM no, sshd treats a `!` hash as a locked account and
    refuses even public-key logins.
    """
    rootfs = Path(rootfs)
    if not _USER_NAME.match(user):
        raise EmulationError(f"invalid board user name {user!r}")
    if not home.startswith("/") or ".." in Path(home).parts:
        raise EmulationError(f"board home must be an absolute path inside the rootfs, not {home!r}")
    ensure_binfmt()
    try:
        existing = _passwd_entry(rootfs, user)
    except EmulationError:
        existing = None
    if existing is None:
        _run(
            ["chroot", str(rootfs), "/usr/sbin/useradd", "--create-home", "--home-dir", home,
             "--shell", "/bin/bash", "--user-group", user],
            f"creating user {user} in {rootfs}",
            env=CHROOT_ENV,
        )  # fmt: skip
    elif existing[5] != home:
        raise EmulationError(f"user {user} already exists in {rootfs} with home {existing[5]}, not {home}")
    _run(["chroot", str(rootfs), "/usr/sbin/usermod", "-p", "*", user], f"unlocking {user}", env=CHROOT_ENV)
    bashrc = inside(rootfs, home) / ".bashrc"
    if not bashrc.is_file():
        uid, gid = user_ids(rootfs, user)
        inside(rootfs, home).mkdir(parents=True, exist_ok=True)
        os.chown(inside(rootfs, home), uid, gid)
        shutil.copyfile(rootfs / "etc" / "skel" / ".bashrc", bashrc)
        os.chown(bashrc, uid, gid)
    if not _BASHRC_GUARD.search(bashrc.read_text()):
        raise EmulationError(f"{bashrc} lacks the interactive-shell guard")


def _passwd_entry(rootfs: Path, user: str) -> list[str]:
    for line in (rootfs / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    raise EmulationError(f"no user {user!r} in {rootfs}")


# --- mounts and their holders ---------------------------------------------------------------------


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [_unescape(line.split()[4]) for line in info]


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (the order to unmount them in)."""
    base = os.path.realpath(root)
    found = [m for m in _mount_points() if m == base or m.startswith(base + "/")]
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def _umount(point: str) -> None:
    """Unmount; if busy (a session still has a file open there), detach lazily instead of failing."""
    if subprocess.run(["umount", point], capture_output=True).returncode != 0:
        _run(["umount", "--lazy", point], f"unmounting {point}")


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts everything below `path` and refuses if anything stays mounted."""
    if not path.exists():
        return
    for point in _mounts_under(path):
        _umount(point)
    if _mounts_under(path):
        raise EmulationError(f"refusing to delete {path}: it still has mounts below it")
    shutil.rmtree(path)


def _state_path(rootfs: Path) -> Path:
    # Beside the rootfs, not inside it: boards must not see (or edit) the host's bookkeeping.
    return rootfs.parent / f".{rootfs.name}.chroot.json"


def _load_state(rootfs: Path) -> dict:
    try:
        state = json.loads(_state_path(rootfs).read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault("mounted", [])
    state.setdefault("holders", [])
    return state


def _save_state(rootfs: Path, state: dict) -> None:
    tmp = _state_path(rootfs).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, _state_path(rootfs))


def _start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (field 22 of /proc/PID/stat): a PID alone may be reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(holder: Mapping) -> bool:
    return _start_time(holder["pid"]) == holder["start"]


def _mount_all(rootfs: Path, state: dict) -> None:
    for rel, how in _MOUNTS:
        point = os.path.realpath(rootfs / rel)
        if point in _mount_points():
            continue  # already there (ours from an earlier holder, or someone else's: leave it)
        os.makedirs(point, exist_ok=True)
        _run(["mount", *how, point], f"mounting {rel} into {rootfs}")
        state["mounted"].append(point)


def _release(rootfs: Path, state: dict, holder_id: str | None) -> bool:
    """Drop `holder_id` and dead holders; unmount what we mounted if nobody is left. True if unmounted."""
    state["holders"] = [h for h in state["holders"] if h["id"] != holder_id and _alive(h)]
    if state["holders"]:
        return False
    for point in reversed(state["mounted"]):
        if point in _mount_points():
            _umount(point)
    state["mounted"] = []
    return True


@contextlib.contextmanager
def mounted(rootfs: Path) -> Iterator[None]:
    """Keep /proc, /sys, /dev, /dev/pts, /dev/shm mounted in the rootfs for the duration of the block."""
    rootfs = Path(rootfs).absolute()
    _require_root()
    holder = {"id": f"ctx-{uuid.uuid4().hex}", "pid": os.getpid(), "start": _start_time(os.getpid())}
    with _locked(rootfs):
        state = _load_state(rootfs)
        try:
            _mount_all(rootfs, state)
            state["holders"].append(holder)
        finally:
            _save_state(rootfs, state)
    try:
        yield
    finally:
        with _locked(rootfs):
            state = _load_state(rootfs)
            _release(rootfs, state, holder["id"])
            _save_state(rootfs, state)


def chroot_run(
    rootfs: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    userspec: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run one command inside the rootfs (as root, or `userspec` 'user:group'), with the mounts held.

    For setup and tests; boards run their commands through their own sshd. Output is captured as text.
    """
    rootfs = Path(rootfs).absolute()
    ensure_binfmt()
    cmd = ["chroot"]
    if userspec:
        cmd.append(f"--userspec={userspec}")
    cmd += [str(rootfs), *argv]
    with mounted(rootfs):
        return subprocess.run(
            cmd, env={**CHROOT_ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )


def start_chroot_sshd(rootfs: Path, config_path_inside: str, log_path: Path) -> subprocess.Popen:
    """Start `/usr/sbin/sshd -D -e -f CONFIG` inside the rootfs; returns the running process.

    The returned PID is sshd's own (chroot execs it, and binfmt runs qemu in the same process), so
    stopping the board is `os.kill(proc.pid, SIGTERM)` followed by `stop_chroot(rootfs, proc.pid)`.
    sshd logs to `log_path` (-e). It runs in its own session so a Ctrl-C in the CLI does not kill
    the boards that `sandbox up` left running. The caller waits for the port to accept connections
    (startup under emulation takes about a second).
    """
    rootfs = Path(rootfs).absolute()
    _require_root()
    ensure_binfmt()
    if not inside(rootfs, config_path_inside).is_file():
        raise EmulationError(f"sshd config {config_path_inside} not found inside {rootfs}")
    (rootfs / "run" / "sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(rootfs):
        state = _load_state(rootfs)
        try:
            _mount_all(rootfs, state)
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    ["chroot", str(rootfs), "/usr/sbin/sshd", "-D", "-e", "-f", config_path_inside],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=CHROOT_ENV,
                    start_new_session=True,
                )
            state["holders"].append(
                {"id": f"sshd-{proc.pid}", "pid": proc.pid, "start": _start_time(proc.pid)}
            )
        except BaseException:
            _release(rootfs, state, None)
            raise
        finally:
            _save_state(rootfs, state)
    return proc


def stop_chroot(rootfs: Path, pid: int | None = None) -> bool:
    """Release the rootfs for sshd `pid` (already stopped by the caller) and unmount if unused.

    Holders are the sshd processes started here (and `mounted` blocks); dead ones are dropped, so a
    crashed board never pins the mounts. Only mounts this module made are unmounted. Returns True
    when nothing is mounted any more.
    """
    rootfs = Path(rootfs).absolute()
    with _locked(rootfs):
        state = _load_state(rootfs)
        unmounted = _release(rootfs, state, f"sshd-{pid}" if pid is not None else None)
        _save_state(rootfs, state)
    return unmounted


__all__ = [
    "CHROOT_ENV",
    "PACKAGES",
    "EmulationError",
    "add_board_user",
    "chroot_run",
    "debootstrap_command",
    "default_rootfs_path",
    "ensure_binfmt",
    "ensure_rootfs",
    "inside",
    "mounted",
    "start_chroot_sshd",
    "stop_chroot",
    "user_ids",
]
