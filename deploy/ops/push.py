"""Push a release to one board: only missing content travels, as one tar stream, switched atomically.

Plan, then act, over a single SSH channel (one round trip for the plan):

1. the host sends the release manifest; the board answers with what it already has
   (``current``, whether this release exists, the sha256s it lacks, ``env.sh``, ``~/.bashrc``);
2. the host computes the new ``.bashrc`` (a pure function in ``envblock``) and, unless this is a
   dry run, sends it plus one tar stream whose members are the missing objects named by sha256
   (the release's ``env.sh`` is one of its files: a push that changes only the environment is a
   new release of one new file);
3. the board verifies every digest, hard-links unchanged files from older releases, renames
   the staged release into place, switches ``current`` by renaming a fresh symlink over it,
   and prunes to ``keep_releases``;
4. the health check (``health.py``): the board's agent classifies the release's probe; on a
   failure the board switches back by itself. Pruning waits for the check to pass, so the
   release to switch back to is still there.

An interruption at any point leaves the previous release current (or, between 3 and 4, the new
one current and unchecked: the next push checks it); the next push removes the debris under the
app lock. The payload counted here is file content actually sent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..board import protocol
from ..errors import ConnectError, PushError, RemoteError, RolloutHeld
from ..fleet import Turn
from ..inventory import Board, Inventory, unsafe_env
from ..link import objstream
from ..link.remote import Call, link_lost, session
from ..release import bundle as bundle_mod
from ..release import envblock
from ..release.bundle import Bundle
from ..release.hashcache import HashCache
from ..targets import for_board
from . import health as health_mod
from .facts import board_python, remember_facts

if TYPE_CHECKING:
    from ..link.ssh import Connection
    from ..release.cbuild import Built


@dataclass(frozen=True)
class PushPlan:
    board: str
    release: str
    current: str | None
    exists: bool
    files: int
    total_bytes: int
    send_files: int
    send_bytes: int
    env_diff: str
    bashrc_diff: str
    facts: protocol.Facts
    needed_bytes: int = 0  # what the push writes on the board's disk (``needed_bytes``)
    free_bytes: int = -1  # free there for the board user (-1: the board did not say)


@dataclass(frozen=True)
class PushResult:
    board: str
    release: str
    previous: str | None
    switched: bool
    payload_bytes: int
    objects: int
    linked: int
    pruned: list[str]
    bashrc_changed: bool
    env_changed: bool
    seconds: float
    dry_run: bool = False
    plan: PushPlan | None = None
    python: str = ""
    target: str = ""
    extra: dict = field(default_factory=dict)
    checked: bool = False  # the release was already current and had passed a health check on this board
    health: health_mod.HealthResult | None = None
    service_enabled: bool = False  # the board has a service of this app that is to run
    service: dict | None = None  # the service moved to this release (deploy/service.py follow_push), or None
    wire_bytes: int = 0  # the object stream as sent: tar framing included, compressed members compressed
    compressed_objects: int = 0
    reused_objects: int = 0  # compressed objects taken ready (compressed once for the fleet, or earlier)
    compress_levels: dict = field(default_factory=dict)  # compressed objects per zlib level
    link_bytes_per_s: float | None = None  # the link's rate as the stream measured it (None: too short to tell)
    unsafe_env: tuple[str, ...] = ()  # env keys that change how the board runs code (app.env_unsafe allowed them)
    gate_s: float = 0.0  # how long the staged release waited for the earlier rollout stage's checks
    timeline: dict = field(default_factory=dict)  # wall-clock (time.time) of the push's steps: sent, staged, go, ...


def build_for(inv: Inventory, board: Board, conn: Connection, cache: HashCache, site: Path | None = None,
              built: Built | None = None) -> Bundle:
    """The release for ``board`` (one build per target and Python in a command); ``built``: its C/C++ build."""
    target = for_board(board)
    python = board_python(inv, board, conn, target)
    key = (target, python, board.sandbox, site, built.root if built else None)  # what it depends on besides the app
    return cache.once(key, lambda: bundle_mod.build(inv.app, board, target, python, cache, site=site,
                                                    state_dir=inv.state_dir, root=inv.root, built=built))


class _Stale(Exception):
    """The cached Python fact went stale (the board's Python changed): rebuild once with these facts."""

    def __init__(self, facts: protocol.Facts):
        super().__init__(facts.python)
        self.facts = facts


def _check_board(board: Board, bundle: Bundle, facts: protocol.Facts) -> None:
    if facts.python_mm != bundle.python:
        if bundle.target.python is None:
            raise _Stale(facts)
        raise PushError(
            f"{board.name}: target {bundle.target.name} expects Python {bundle.python} but the board runs "
            f"{facts.python} ({facts.python_exe}); fix boards.{board.name}.target or .python"
        )
    if facts.arch != bundle.target.arch:
        raise PushError(f"{board.name}: target {bundle.target.name} is {bundle.target.arch} but the board is {facts.arch}")


def make_plan(inv: Inventory, board: Board, bundle: Bundle, state: protocol.PushState) -> tuple[PushPlan, list, str, str]:
    """What this push will do, from the board's answer: (plan, entries to send, new env.sh, new .bashrc)."""
    app = inv.app
    by_sha = {}
    for e in bundle.entries:
        by_sha.setdefault(e.sha256, e)
    send = [by_sha[s] for s in state.missing]
    new_env = bundle.env_sh  # a file of the release: switched, checked and rolled back with it
    new_bashrc = envblock.apply_block(state.bashrc, app.name)
    plan = PushPlan(
        board=board.name,
        release=bundle.release_id,
        current=state.current,
        exists=state.exists,
        files=len(bundle.entries),
        total_bytes=bundle.total_bytes,
        send_files=len(send),
        send_bytes=sum(e.size for e in send),
        env_diff=envblock.env_diff(state.env_sh, new_env, app.env),
        bashrc_diff=envblock.diff(state.bashrc, new_bashrc, "~/.bashrc"),
        facts=state.facts,
        needed_bytes=needed_bytes(bundle, send, state.exists),
        free_bytes=state.free_bytes,
    )
    return plan, send, new_env, new_bashrc


BLOCK = 4096
MiB = 1 << 20


def needed_bytes(bundle: Bundle, send: list, exists: bool) -> int:
    """What a push writes on the board's disk: the objects sent, unpacked (each rounded up to 4 KiB blocks), the
    bytecode of the Python files among them (at most their size), two directory blocks per folder (itself and
    its ``__pycache__``), the manifest, and 1 MiB to spare. Unchanged files are hard links: they cost nothing.
    A release already on the board costs nothing."""
    if exists:
        return 0

    def blocks(n: int) -> int:
        return -(-n // BLOCK) * BLOCK

    folders = {e.path.rpartition("/")[0] for e in bundle.entries}
    return (sum(blocks(e.size) for e in send) + sum(blocks(e.size) for e in send if e.path.endswith(".py"))
            + 2 * BLOCK * len(folders) + blocks(160 * len(bundle.entries)) + MiB)


def mb(n: int) -> str:
    return f"{n / MiB:.0f} MB" if n >= 10 * MiB else f"{n / MiB:.1f} MB"


def check_space(board: Board, app: str, plan: PushPlan) -> None:
    """Refuse, before anything is sent, a push that cannot fit on the board's disk (one line)."""
    if 0 <= plan.free_bytes < plan.needed_bytes:
        raise PushError(f"{board.name}: needs {mb(plan.needed_bytes)} on ~/HIAI_PROJECTS/{app}, {mb(plan.free_bytes)} "
                        "free; nothing was sent, the previous release is still current")


LINK_HINT_S = 7 * 86400  # how long a link measured by a push steers the next push's compression from its first byte


def link_path(inv: Inventory, board: Board) -> Path:
    return inv.state_dir / "links" / f"{board.name}.json"


def link_hint(inv: Inventory, board: Board) -> float | None:
    """The link rate (bytes/s) the last push to ``board`` measured, if recent: compression decided from byte one."""
    try:
        last = json.loads(link_path(inv, board).read_text())
        rate, at = float(last["bytes_per_s"]), float(last["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rate if rate > 0 and 0 <= time.time() - at < LINK_HINT_S else None


def remember_link(inv: Inventory, board: Board, rate: float) -> None:
    try:
        _write_json(link_path(inv, board), {"bytes_per_s": round(rate), "at": time.time()})
    except OSError:  # a hint only: a push never fails for it
        pass


def _write_json(path: Path, obj) -> None:
    """``obj`` as ``path``'s whole new content, replaced at once (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def send_objects(c: Call, board: Board, send: list, on_bytes, compress: str = "auto",
                 hint: float | None = None) -> objstream.Stats:
    """The missing objects as one tar stream named by sha256, compressed where that pays (``objstream``);
    ``hint``: the link's rate as an earlier push measured it."""
    policy = objstream.Policy(compress, link_hint=hint)
    shown = 0
    scale = 1.0  # content bytes per stream byte of the member going out (progress counts content)

    def on_wire(n: int) -> None:
        nonlocal shown
        policy.on_wire(n)
        if on_bytes:
            k = int(n * scale)
            shown += k
            on_bytes(k)

    def on_member(content: int, member: int) -> None:
        nonlocal scale
        scale = content / member if member else 1.0

    writer = c.writer(on_wire)
    try:
        stats = objstream.write(writer, send, policy, on_member)
        writer.flush()
        stats.wire = writer.sent
        if on_bytes and stats.content > shown:
            on_bytes(stats.content - shown)
        return stats
    except OSError as exc:
        if link_lost(c.chan.get_transport()):  # the link or the board went away (exit 4)
            raise ConnectError(f"{board.name}: connection lost during the transfer ({exc}); "
                               "the previous release is still current") from None
        board_said = c.error_after_stream()  # the board stopped reading: its reason (a full disk) is on the channel
        raise PushError(board_said or f"{board.name}: transfer failed: {exc}; the previous release is still current") from None


def push(
    inv: Inventory,
    board: Board,
    conn: Connection,
    *,
    dry_run: bool = False,
    on_plan: Callable[[PushPlan], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    cache: HashCache | None = None,
    health_check: bool = True,
    on_phase: Callable[[str], None] | None = None,
    compress: str = "auto",
    built: Built | None = None,
    gate: Turn | None = None,
) -> PushResult:
    """Push the app's release for ``board``'s target; the previous release stays current on any failure.

    ``on_plan(plan)`` is called once the board has said what it lacks (before anything is sent);
    ``on_bytes(n)`` as content goes out. With ``dry_run`` nothing on the board changes. Unless
    ``health_check`` is False, a release made current is health-checked (:func:`health_step`);
    HealthCheckFailed when it fails, the board back on its previous release. ``compress``: "auto"
    (compress the object stream when the link proves slower than the compressor), "on" or "off". ``built``:
    the board's build of a C/C++ app (``release/cbuild.py``), made before any board was touched. ``gate``: the
    board's place in a staged rollout (``fleet.turn()``): while an earlier stage still checks, the release is
    staged beside the current one and switched only once that stage passed (RolloutHeld, nothing switched,
    when it failed); ``gate.release()`` once this board's transfer is over, before its own check.
    """
    t0 = time.perf_counter()
    cache = cache or HashCache(inv.state_dir / "hashcache.json")
    bundle = build_for(inv, board, conn, cache, built=built)
    check = health_check and bundle.checkable
    try:
        res = _push(inv, board, conn, bundle, t0, dry_run=dry_run, on_plan=on_plan, on_bytes=on_bytes, check=check,
                    compress=compress, gate=gate)
    except _Stale as stale:  # the plan reply already carried the board's facts: no extra round trip
        remember_facts(inv, board, stale.facts)
        return push(inv, board, conn, dry_run=dry_run, on_plan=on_plan, on_bytes=on_bytes, cache=cache,
                    health_check=health_check, on_phase=on_phase, compress=compress, built=built, gate=gate)
    if gate is not None:
        gate.release()  # the next rollout stage may start its transfers while this board checks
    res.timeline["check"] = round(time.time(), 3)
    health = health_step(inv, board, conn, bundle, res, health_check, on_phase)  # raises when it failed
    res.timeline["checked"] = round(time.time(), 3)
    if not res.dry_run:  # the next plan request sends only what differs from it (a failed one is gone)
        remember_pushed(inv, board, bundle)
    moved = None
    if res.service_enabled and not res.dry_run:  # only now, after the check: the service follows a good release
        from . import service as service_mod  # noqa: I001 - only a push that moves a service needs it

        if on_phase:
            on_phase("moving the service")
        moved = service_mod.follow_push(inv, conn, res.release)
    return replace(res, health=health, pruned=res.pruned + health.pruned, seconds=time.perf_counter() - t0,
                   service=moved, unsafe_env=tuple(unsafe_env(inv.app.env)))


def health_step(inv, board, conn, bundle: Bundle, res: PushResult, enabled: bool,
                on_phase: Callable[[str], None] | None = None) -> health_mod.HealthResult:
    """The health check after a push: run when the push made a release current, or left one current that
    never passed a check on this board (a lost link after an earlier switch, a --no-health-check push).
    A push that switched nothing to an already checked release changes nothing, so it is not checked again.
    """
    if res.dry_run:
        return health_mod.skipped("dry run")
    if not enabled:
        return health_mod.skipped("--no-health-check")
    if not bundle.checkable:
        return health_mod.skipped("no probe image: the app has no images (set app.health.probe)")
    probe = bundle.probe
    if res.checked:
        if probe is None:
            return health_mod.HealthResult(status="passed", reason="already current and checked on this board")
        return health_mod.HealthResult(status="passed", probe=probe.path, source=probe.source,
                                       expected=list(probe.expected) if probe.expected else None,
                                       reason="already current and checked on this board")
    if on_phase:
        on_phase("health check")
    result = health_mod.check(conn, inv.app, board.name, res.release, inv.app.keep_releases)
    return replace(result, reason=(probe.note if probe else "") or result.reason)


def pushed_path(inv: Inventory, board: Board) -> Path:
    """Where the host keeps the manifest of the release it last pushed to ``board``."""
    return inv.state_dir / "pushed" / f"{board.name}.json"


def manifest_fields(inv: Inventory, board: Board, bundle: Bundle) -> dict:
    """The manifest as the plan request carries it: only the rows that differ from the release last pushed to
    this board (which keeps it until it is pruned; a push that changes only app.env sends one row), else all."""
    rows = bundle.manifest()
    try:
        last = json.loads(pushed_path(inv, board).read_text())
        base, old = last["release"], {row[0]: row for row in last["files"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {"manifest": rows}
    paths = {row[0] for row in rows}
    return {"base": base, "changed": [row for row in rows if old.get(row[0]) != row],
            "removed": sorted(set(old) - paths)}


def remember_pushed(inv: Inventory, board: Board, bundle: Bundle) -> None:
    path = pushed_path(inv, board)
    try:
        if json.loads(path.read_text()).get("release") == bundle.release_id:
            return
    except (OSError, ValueError, AttributeError):
        pass
    _write_json(path, {"release": bundle.release_id, "files": bundle.manifest()})


def _push(inv, board, conn, bundle: Bundle, t0: float, *, dry_run, on_plan, on_bytes, check,
          compress: str = "auto", gate: Turn | None = None) -> PushResult:
    """One push op; asked again with the whole manifest when the board no longer has the release the delta of
    ``manifest_fields`` is against (pruned, or another host pushed there)."""
    app = inv.app
    fields = manifest_fields(inv, board, bundle)
    for attempt in (0, 1):
        req = protocol.PushRequest(app=app.name, release=bundle.release_id, keep=app.keep_releases, health=check,
                                   **fields)
        with session(conn, "push", req, app=app.name) as c:
            state = c.read(protocol.PushState)
            if state.need_manifest and not attempt:
                c.send(protocol.PushCommit(action="abort"))
                c.read(protocol.PushDone)
                fields = {"manifest": bundle.manifest()}
                continue
            return _act(inv, board, bundle, c, state, t0, dry_run=dry_run, on_plan=on_plan, on_bytes=on_bytes,
                        compress=compress, gate=gate)
    raise PushError(f"{board.name}: the board could not rebuild release {bundle.release_id}'s manifest")


def _act(inv, board, bundle: Bundle, c: Call, state: protocol.PushState, t0: float, *, dry_run, on_plan, on_bytes,
         compress: str, gate: Turn | None = None) -> PushResult:
    """The push after the board's plan: check it, show it, then commit and send what the board lacks."""
    try:
        _check_board(board, bundle, state.facts)
    except BaseException:
        c.send(protocol.PushCommit(action="abort"))
        raise
    plan, send, new_env, new_bashrc = make_plan(inv, board, bundle, state)
    if on_plan:
        on_plan(plan)
    try:
        check_space(board, inv.app.name, plan)  # before anything is sent
    except PushError:
        c.send(protocol.PushCommit(action="abort"))
        raise
    verdict = True if dry_run or gate is None else gate.ready()
    if dry_run or verdict is False:
        c.send(protocol.PushCommit(action="abort"))
        c.read(protocol.PushDone)
        c.close()
        if verdict is False:
            raise RolloutHeld(held_line(board, bundle.release_id, state.current, staged=False))
        return _result(board, bundle, plan, t0, protocol.PushDone(previous=state.current), 0, dry_run=True)
    times = {"sent": round(time.time(), 3)}
    c.send(protocol.PushCommit(action="commit", bashrc=new_bashrc if new_bashrc != state.bashrc else None,
                               hold=HOLD_S if verdict is None else 0.0))
    stream = send_objects(c, board, send, on_bytes, compress, link_hint(inv, board)) if send else objstream.Stats()
    waited = _await_gate(c, gate, times) if verdict is None else 0.0
    done = _read_kept(c, protocol.PushDone)
    c.close()
    times["switched"] = round(time.time(), 3)
    if done.aborted:
        raise RolloutHeld(held_line(board, bundle.release_id, state.current, staged=True))
    if stream.link_bytes_per_s:
        remember_link(inv, board, stream.link_bytes_per_s)
    return replace(_result(board, bundle, plan, t0, done, stream.content), wire_bytes=stream.wire,
                   compressed_objects=stream.compressed, reused_objects=stream.reused,
                   compress_levels=dict(stream.levels), link_bytes_per_s=stream.link_bytes_per_s,
                   gate_s=waited, timeline=times)


HOLD_S = 1800.0  # how long a staged board waits for the go before it removes the release by itself


def _read_kept(c: Call, cls):
    """The board's next reply of a push after the commit; a board error says the previous release stays."""
    try:
        return c.read(cls)
    except RemoteError as exc:
        raise PushError(f"{exc}; the previous release is still current") from None


def _await_gate(c: Call, gate: Turn, times: dict) -> float:
    """The release is staged on the board: wait for the earlier stage's verdict, then say switch or abort."""
    _read_kept(c, protocol.PushStaged)
    times["staged"] = round(time.time(), 3)
    t = time.perf_counter()
    go = gate.wait()
    times["go"] = round(time.time(), 3)
    c.send(protocol.PushCommit(action="switch" if go else "abort"))
    return time.perf_counter() - t


def held_line(board: Board, release: str, current: str | None, staged: bool) -> str:
    what = "staged release removed" if staged else "nothing was sent"
    return (f"{board.name}: release {release} not switched: an earlier rollout stage failed ({what}); "
            f"{current or 'no release'} is still current")


def _result(board, bundle, plan, t0, done: protocol.PushDone, payload: int, dry_run: bool = False) -> PushResult:
    return PushResult(
        board=board.name,
        release=done.release or bundle.release_id,
        previous=done.previous,
        switched=done.switched,
        payload_bytes=payload,
        objects=done.received_objects,
        linked=done.linked,
        pruned=done.pruned,
        bashrc_changed=done.bashrc_changed if not dry_run else bool(plan.bashrc_diff),
        env_changed=bool(plan.env_diff),
        seconds=time.perf_counter() - t0,
        dry_run=dry_run,
        plan=plan,
        python=bundle.python,
        target=bundle.target.name,
        checked=done.checked,
        service_enabled=done.service,
    )
