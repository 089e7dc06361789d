"""The app's service on the board: install and supervise it, report it, hand its journal to the host.

Python 3.7 + stdlib only. Everything lives in ``~/HIAI_PROJECTS/<app>/service/`` (see
``agent.service`` for the agent's files and ``supervisor.py`` for the supervisor's). Operations:

``service`` start
    write ``config.json`` and the release pin, copy ``supervisor.py`` next to them, make the
    supervisor start at boot without root, start it now, wait until the agent runs. At boot: a
    systemd **user** unit when ``systemctl --user`` answers (plus ``loginctl enable-linger``, without
    which a user manager only runs while the user is logged in), else an ``@reboot`` line in the
    user's crontab (marked ``# atlas-deploy service <app>``). Neither: refused, with the reason.
``service`` stop
    the ``stop`` flag first (so nothing starts it again), the boot entry removed, SIGTERM to the
    supervisor (it ends the agent), waited for. Unsent results stay in the journal.
``service`` switch
    pin another release (after a push and its health check); the agent moves between two chunks.
``collect``
    journal records after the host's sequence number as raw lines, then the host's ack; segments
    wholly acknowledged (never the open one) are removed then, and only then.
``logs``
    the tail of ``agent.log``, and with follow what is appended (across rotations).
"""

import json
import os
import signal
import sys
import time

from . import protocol
from .files import Lock, pid_alive, read_text, write_atomic
from .health import checking
from .layout import current_release, releases_dir
from .wire import Fail, check_id

POLICIES = ("keep", "move", "delete")
MARK = "# atlas-deploy service "
CHUNK = 1 << 20


def service_dir(base):
    return os.path.join(base, "service")


def _read_json(path):
    try:
        obj = json.loads(read_text(path) or "{}")
        return obj if isinstance(obj, dict) else {}
    except ValueError:
        return {}


def _pid(path):
    text = read_text(path)
    try:
        pid = int(text.strip()) if text else None
    except ValueError:
        return None
    return pid if pid and pid_alive(pid) else None


def unit_name(app):
    return f"atlas-deploy-{app}.service"


# ---------------------------------------------------------------- boot entries


def _quiet(argv, stdin=None, timeout=15):
    """(exit status, output) of a board tool; 127 when it is not there."""
    import subprocess

    try:
        r = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc).encode()
    return r.returncode, r.stdout


def choose_method(wanted):
    import shutil

    if wanted in ("auto", "systemd") and shutil.which("systemctl"):
        if _quiet(["systemctl", "--user", "show-environment"])[0] == 0:
            return "systemd"
    if wanted == "systemd":
        raise Fail("systemctl --user does not work on this board (no user systemd); use method cron")
    if shutil.which("crontab"):
        return "cron"
    raise Fail("cannot keep the service running across reboots without root: `systemctl --user` does not work "
               "and there is no crontab on this board")


def supervisor_argv(svc):
    return [sys.executable, os.path.join(svc, "supervisor.py"), svc]


def _crontab_lines():
    code, out = _quiet(["crontab", "-l"])
    if code != 0:  # "no crontab for USER"
        return []
    return out.decode("utf-8", "surrogateescape").splitlines()


def _set_crontab(lines):
    text = "".join(line + "\n" for line in lines)
    code, out = _quiet(["crontab", "-"], stdin=text.encode("utf-8", "surrogateescape"))
    if code != 0:
        raise Fail("crontab refused the service's entry: {}".format(out.decode("utf-8", "replace").strip()[-300:]))


def install_cron(app, svc):
    import shlex

    command = " ".join(shlex.quote(w) for w in supervisor_argv(svc)) + " >/dev/null 2>&1"
    line = "@reboot {} {}{}".format(command.replace("%", "\\%"), MARK, app)  # % is a newline to cron
    lines = [ln for ln in _crontab_lines() if not ln.endswith(MARK + app)]
    _set_crontab(lines + [line])


def remove_cron(app):
    lines = _crontab_lines()
    kept = [ln for ln in lines if not ln.endswith(MARK + app)]
    if kept != lines:
        _set_crontab(kept)


def install_systemd(app, svc, home):
    import shlex

    unit_dir = os.path.join(home, ".config", "systemd", "user")
    os.makedirs(unit_dir, exist_ok=True)
    text = "\n".join([
        "[Unit]", f"Description=atlas-deploy service of {app}", "",
        "[Service]", "ExecStart={}".format(" ".join(shlex.quote(w) for w in supervisor_argv(svc))),
        "Restart=always", "RestartSec=2", "KillMode=mixed", "TimeoutStopSec=20", "",
        "[Install]", "WantedBy=default.target", "",
    ])
    write_atomic(os.path.join(unit_dir, unit_name(app)), text.encode())
    _quiet(["systemctl", "--user", "daemon-reload"])
    code, out = _quiet(["systemctl", "--user", "enable", "--now", unit_name(app)])
    if code != 0:
        raise Fail("systemctl --user enable failed: {}".format(out.decode("utf-8", "replace").strip()[-300:]))
    _quiet(["loginctl", "enable-linger"])
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    code, out = _quiet(["loginctl", "show-user", user, "-p", "Linger"])
    if b"Linger=yes" not in out:
        return "linger is off: the user's systemd (and the service) runs only while the user is logged in"
    return ""


def remove_systemd(app, home):
    _quiet(["systemctl", "--user", "disable", "--now", unit_name(app)], timeout=30)
    try:
        os.unlink(os.path.join(home, ".config", "systemd", "user", unit_name(app)))
    except OSError:
        pass
    _quiet(["systemctl", "--user", "daemon-reload"])


# ---------------------------------------------------------------- status


def info(base):
    """The service's figures (``ServiceInfo``), or None when no service was ever started for the app."""
    svc = service_dir(base)
    cfg = _read_json(os.path.join(svc, "config.json"))
    if not cfg:
        return None
    sup = _read_json(os.path.join(svc, "supervisor.json"))
    agent = _read_json(os.path.join(svc, "status.json"))
    stopped = os.path.exists(os.path.join(svc, "stop"))
    sup_pid = _pid(os.path.join(svc, "supervisor.pid"))
    agent_pid = _pid(os.path.join(svc, "agent.pid"))
    if sup_pid:
        supervisor = sup.get("state") or "running"
    else:
        supervisor = "stopped" if stopped else "dead"
    state = agent.get("state", "") if agent_pid else ("stopped" if agent else "")
    if agent_pid and agent.get("pid") != agent_pid:  # figures of the agent before: this one is still loading
        state, agent = "starting", dict(agent, state="starting", reason="", ips=0.0, updated=None)
    if agent_pid is None and supervisor in ("backoff", "crash-loop"):
        state = supervisor
    if agent_pid is None:  # the last agent's figures are not now's: no uptime, no rate, the inbox counted here
        agent = dict(agent, since=None, ips=0.0, waiting=inbox_waiting(cfg.get("inbox") or "", cfg.get("policy")))
    return protocol.ServiceInfo(
        enabled=not stopped, method=cfg.get("method", ""), supervisor=supervisor, supervisor_pid=sup_pid,
        agent_pid=agent_pid, state=state, reason=agent.get("reason", "") if agent_pid else sup.get("reason", ""),
        release=agent.get("release", ""), pinned=(read_text(os.path.join(svc, "release")) or "").strip(),
        current=current_release(base), since=agent.get("since"), restarts=int(sup.get("restarts") or 0),
        crashes=int(sup.get("crashes") or 0), last_exit=sup.get("last_exit"), ok=int(agent.get("ok") or 0),
        failed=int(agent.get("failed") or 0), waiting=int(agent.get("waiting") or 0), ips=agent.get("ips") or 0.0,
        last_error=agent.get("last_error", ""), disk_used=int(agent.get("disk_used") or 0),
        max_disk=int(cfg.get("max_disk") or 0), seq=int(agent.get("seq") or 0), acked=_ack(svc),
        inbox=cfg.get("inbox", ""), policy=cfg.get("policy", ""), watch=agent.get("watch", ""),
        updated=agent.get("updated"), note=cfg.get("note", ""),
    )


def inbox_waiting(inbox, policy):
    """Images waiting while no agent runs: the inbox's regular files (dot-names are never taken; with policy
    keep, less those kept in place, ``.work/kept.idx``) and, moved out of it, those claimed but not recorded."""
    kept = set()
    if policy == "keep":  # a claim is a hard link: the image is still in the inbox, counted there
        for line in (read_text(os.path.join(inbox, ".work", "kept.idx")) or "").splitlines():
            parts = line.split("\t", 3)
            if len(parts) == 4 and parts[0].isdigit():
                kept.add((parts[3], int(parts[0])))
    count = 0
    try:
        with os.scandir(inbox) as it:
            for e in it:
                if not e.name.startswith(".") and e.is_file(follow_symlinks=False) and (e.name, e.inode()) not in kept:
                    count += 1
        if policy != "keep":
            count += sum(1 for n in os.listdir(os.path.join(inbox, ".work")) if n.partition("~")[0].isdigit())
    except OSError:
        pass
    return count


def _ack(svc):
    try:
        return int((read_text(os.path.join(svc, "ack")) or "0").strip() or 0)
    except ValueError:
        return 0


def _wait(base, until, timeout):
    """Poll ``info`` until ``until(info)`` or ``timeout`` seconds; returns the last info."""
    deadline = time.monotonic() + timeout
    while True:
        now = info(base)
        if until(now) or time.monotonic() >= deadline:
            return now
        time.sleep(0.1)


# ---------------------------------------------------------------- the op


def op_service(wire, req):
    base = wire.app_dir(req.app)
    action = req.action
    if action == "status":
        wire.reply(info(base) or protocol.ServiceInfo())
    elif action == "start":
        wire.reply(start(wire, base, req))
    elif action == "stop":
        wire.reply(stop(wire, base, req))
    elif action == "switch":
        wire.reply(switch(base, req))
    else:
        raise Fail(f"unknown service action {action!r}")


def _check_start(base, req):
    if req.policy not in POLICIES:
        raise Fail("service policy must be one of {}, not {!r}".format(", ".join(POLICIES), req.policy))
    cur = current_release(base)
    if cur is None or not os.path.isdir(os.path.join(base, "current")):
        raise Fail("nothing deployed for this app yet: run `deploy push` first")
    pending = checking(base)
    if pending and pending[0] == cur:
        raise Fail("release {} became current at {} and has no health-check verdict yet: the service starts on a "
                   "checked release (push again if that push was cut off)".format(
                       cur, time.strftime("%H:%M:%S UTC", time.gmtime(pending[1]))))


def start(wire, base, req):
    """Install or reconfigure the service and start it, under the app lock (what it pins is what is current
    and checked: a push or rollback cannot switch ``current`` under it); then wait, the lock released."""
    with Lock(base, "service start"):
        _install(wire, base, req)
    started = time.time()

    def running(now):
        if now is None:
            return False
        if now.agent_pid is None:  # not up (yet): a crash loop is an answer; a backoff or no supervisor, after a while
            late = time.time() - started > 5.0
            return now.supervisor == "crash-loop" or (late and now.supervisor in ("backoff", "dead"))
        return now.state in ("running", "idle", "disk-full") and (now.updated or 0) >= started - 0.5

    return _wait(base, running, float(req.wait)) or protocol.ServiceInfo()


def _install(wire, base, req):
    import shutil
    import subprocess

    _check_start(base, req)
    svc = service_dir(base)
    os.makedirs(svc, exist_ok=True)
    inbox = os.path.expanduser(req.inbox) if req.inbox else os.path.join(base, "inbox")
    if not os.path.isabs(inbox):
        inbox = os.path.join(wire.home, inbox)
    os.makedirs(inbox, exist_ok=True)
    method = choose_method(req.method)
    rid = current_release(base)
    cfg = {
        "v": 1, "app": req.app, "service_dir": svc, "inbox": inbox, "policy": req.policy, "settle": float(req.settle),
        "max_disk": int(req.max_disk), "rotate": int(req.rotate), "log_max": int(req.log_max), "chunk": 32,
        "python": sys.executable, "method": method,
    }
    old = _read_json(os.path.join(svc, "config.json"))
    shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervisor.py"),
                    os.path.join(svc, "supervisor.py"))
    write_atomic(os.path.join(svc, "release"), (rid + "\n").encode())
    if method == "systemd":
        remove_cron_quietly(req.app)
        cfg["note"] = ""
        write_atomic(os.path.join(svc, "config.json"), json.dumps(cfg, indent=1).encode())
        _clear_stop(svc)
        cfg["note"] = install_systemd(req.app, svc, wire.home)
        write_atomic(os.path.join(svc, "config.json"), json.dumps(cfg, indent=1).encode())
    else:
        write_atomic(os.path.join(svc, "config.json"), json.dumps(cfg, indent=1).encode())
        _clear_stop(svc)
        install_cron(req.app, svc)
    sup = _pid(os.path.join(svc, "supervisor.pid"))
    changed = {k: v for k, v in cfg.items() if k != "note"} != {k: v for k, v in old.items() if k != "note"}
    if sup and changed:  # a new configuration: the agent restarts in it (exit 0 on SIGTERM: restarted at once)
        agent = _pid(os.path.join(svc, "agent.pid"))
        if agent:
            os.kill(agent, signal.SIGTERM)
    elif not sup and method == "cron":
        with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
            subprocess.Popen(supervisor_argv(svc), stdin=null_in, stdout=null_out, stderr=null_out, cwd=wire.home,
                             start_new_session=True)  # outlives this SSH session, as it would from cron


def remove_cron_quietly(app):
    import shutil

    if shutil.which("crontab"):
        try:
            remove_cron(app)
        except Fail:
            pass


def _clear_stop(svc):
    try:
        os.unlink(os.path.join(svc, "stop"))
    except OSError:
        pass


def stop(wire, base, req):
    svc = service_dir(base)
    if not os.path.isfile(os.path.join(svc, "config.json")):
        raise Fail(f"no service of {req.app} on this board")
    with Lock(base, "service stop"):
        write_atomic(os.path.join(svc, "stop"), b"stopped by deploy service stop\n")
        cfg = _read_json(os.path.join(svc, "config.json"))
        if cfg.get("method") == "systemd":
            remove_systemd(req.app, wire.home)
        remove_cron_quietly(req.app)
        sup = _pid(os.path.join(svc, "supervisor.pid"))
        if sup:
            os.kill(sup, signal.SIGTERM)
        agent = _pid(os.path.join(svc, "agent.pid"))
        if agent and not sup:
            os.kill(agent, signal.SIGTERM)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and ((sup and pid_alive(sup)) or (agent and pid_alive(agent))):
        time.sleep(0.1)
    return info(base)


def switch(base, req):
    """Pin ``req.release``; wait until the agent runs it (it moves between two chunks)."""
    svc = service_dir(base)
    now = info(base)
    if now is None or not now.enabled:
        return now or protocol.ServiceInfo()
    rid = check_id(req.release, "release id")
    with Lock(base, "service switch"):
        if not os.path.isdir(os.path.join(releases_dir(base), rid)):
            raise Fail(f"no release {rid} on the board")
        write_atomic(os.path.join(svc, "release"), (rid + "\n").encode())

    def moved(now):
        return now is None or now.supervisor_pid is None or (
            now.release == rid and now.state in ("running", "idle", "disk-full")) or now.supervisor == "crash-loop"

    return _wait(base, moved, float(req.wait))


# ---------------------------------------------------------------- collect and logs


def journal_segments(jdir):
    out = []
    try:
        names = os.listdir(jdir)
    except OSError:
        return out
    for n in names:
        stem, ext = os.path.splitext(n)
        if ext == ".jsonl" and stem.isdigit():
            out.append((int(stem), os.path.join(jdir, n)))
    return sorted(out)


def _last_seq(path):
    """(seq of the last complete line, offset after it) of a segment; (None, 0) when it has none."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        back = min(size, 1 << 16)
        while True:
            f.seek(size - back)
            tail = f.read(back)
            end = tail.rfind(b"\n")
            start = tail.rfind(b"\n", 0, end) + 1 if end >= 0 else -1
            if end >= 0 and (start > 0 or back == size):
                try:
                    rec = json.loads(tail[start:end].decode("utf-8"))
                    return int(rec["seq"]), size - back + end + 1
                except (ValueError, KeyError, TypeError):
                    return None, 0
            if back == size:
                return None, 0
            back = min(size, back * 4)


def plan_collect(jdir, after):
    segs = journal_segments(jdir)
    if not segs:
        return [], after + 1, after, after + 1
    last, last_end = _last_seq(segs[-1][1])
    if last is None:
        last, last_end = segs[-1][0] - 1, 0
    oldest = segs[0][0]
    start_seq = max(after + 1, oldest)
    pieces = []
    for i, (first, path) in enumerate(segs):
        seg_last = segs[i + 1][0] - 1 if i + 1 < len(segs) else last
        if seg_last < start_seq or first > last:
            continue
        end = last_end if i + 1 == len(segs) else os.path.getsize(path)
        begin = 0
        if start_seq > first:  # skip the lines of records already collected
            with open(path, "rb") as f:
                data = f.read(end)
            for _ in range(start_seq - first):
                begin = data.index(b"\n", begin) + 1
        pieces.append((path, begin, end))
    return pieces, start_seq, last, oldest


def op_collect(wire, req):
    base = wire.app_dir(req.app)
    svc = service_dir(base)
    jdir = os.path.join(svc, "journal")
    after = max(0, int(req.after))
    pieces, first, last, oldest = plan_collect(jdir, after)
    wire.reply(protocol.CollectHead(first=first, last=last, bytes=sum(e - b for _, b, e in pieces), oldest=oldest))
    for path, begin, end in pieces:
        with open(path, "rb") as f:
            f.seek(begin)
            left = end - begin
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise Fail(f"journal segment {os.path.basename(path)} shrank while it was sent")
                wire.stdout.write(data)
                left -= len(data)
    wire.stdout.flush()
    ack = wire.read(protocol.CollectAck)
    acked = max(_ack(svc), min(int(ack.seq), last))
    if os.path.isdir(svc):
        write_atomic(os.path.join(svc, "ack"), f"{acked}\n".encode())
    removed = []
    segs = journal_segments(jdir)
    for i, (_first, path) in enumerate(segs[:-1]):  # never the open (newest) segment
        if segs[i + 1][0] - 1 <= acked:
            os.unlink(path)
            removed.append(os.path.basename(path))
    wire.reply(protocol.CollectDone(acked=acked, removed=removed))


def _tail(path, lines):
    """The last ``lines`` lines of ``path`` and the offset after them."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return b"", 0
    with open(path, "rb") as f:
        back = min(size, 1 << 16)
        while True:
            f.seek(size - back)
            data = f.read(back)
            if data.count(b"\n") > lines or back == size:
                break
            back = min(size, back * 4)
    parts = data.split(b"\n")
    keep = b"\n".join(parts[-(lines + 1):]) if lines else b""
    return keep, size


def op_logs(wire, req):
    svc = service_dir(wire.app_dir(req.app))
    path = os.path.join(svc, "agent.log")
    if not os.path.isfile(os.path.join(svc, "config.json")):
        raise Fail(f"no service of {req.app} on this board")
    data, pos = _tail(path, max(0, int(req.lines)))
    wire.reply(protocol.LogsHead(path=path, size=pos))
    wire.stdout.write(data)
    wire.stdout.flush()
    if not req.follow:
        return
    ino = os.stat(path).st_ino if os.path.exists(path) else None
    while not _closed(wire.stdin):  # until the host closes the channel
        try:
            st = os.stat(path)
        except OSError:
            time.sleep(0.2)
            continue
        if st.st_ino != ino or st.st_size < pos:  # rotated: the rest of the old file is in agent.log.1
            ino, pos = st.st_ino, 0
        if st.st_size > pos:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read(st.st_size - pos)
            pos += len(data)
            wire.stdout.write(data)
            wire.stdout.flush()
        else:
            time.sleep(0.2)


def _closed(stream):
    """Whether the host has closed its end (EOF on stdin); a stream without a descriptor never is."""
    import select

    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready) and not os.read(fd, 4096)
