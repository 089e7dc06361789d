"""Push a release to one board: only missing content travels, as one tar stream, switched atomically.

Plan, then act, over a single SSH channel (one round trip for the plan):

1. the host sends the release manifest; the board answers with what it already has
   (``current``, whether this release exists, the sha256s it lacks, ``env.sh``, ``~/.bashrc``);
2. the host computes the new ``env.sh`` and ``.bashrc`` (pure functions in ``envblock``) and,
   unless this is a dry run, sends them plus one tar stream whose members are the missing
   objects named by sha256;
3. the board verifies every digest, hard-links unchanged files from older releases, renames
   the staged release into place, switches ``current`` by renaming a fresh symlink over it,
   and prunes to ``keep_releases``.

An interruption at any point leaves the previous release current; the next push removes
the debris under the app lock. The payload counted here is file content actually sent.
"""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import bundle as bundle_mod
from . import envblock
from .bundle import Bundle, HashCache
from .errors import PushError, RemoteError
from .inventory import Board, Inventory
from .ssh import Connection
from .targets import Target
from .targets import get as get_target


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
    facts: dict


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


def board_python(inv: Inventory, board: Board, conn: Connection, target: Target) -> str:
    """The board's CPython "major.minor": fixed by the target profile, else read off the board once and cached."""
    if target.python:
        return target.python
    cache = inv.state_dir / "facts" / f"{board.name}.json"
    try:
        facts = json.loads(cache.read_text())
        return facts["python_mm"]
    except (OSError, ValueError, KeyError):
        pass
    call = conn.helper("facts", {})
    facts = call.read_json()
    call.close()
    return remember_facts(inv, board, facts)


def remember_facts(inv: Inventory, board: Board, facts: dict) -> str:
    mm = ".".join(facts["python"].split(".")[:2])
    cache = inv.state_dir / "facts" / f"{board.name}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**facts, "python_mm": mm}, indent=1))
    return mm


def build_for(inv: Inventory, board: Board, conn: Connection, cache: HashCache, site: Path | None = None) -> Bundle:
    target = get_target(board.target)
    python = board_python(inv, board, conn, target)
    return bundle_mod.build(inv.app, board, target, python, cache, site=site)


def push(
    inv: Inventory,
    board: Board,
    conn: Connection,
    *,
    dry_run: bool = False,
    on_plan: Callable[[PushPlan], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    cache: HashCache | None = None,
) -> PushResult:
    t0 = time.perf_counter()
    cache = cache or HashCache(inv.state_dir / "hashcache.json")
    bundle = build_for(inv, board, conn, cache)
    app = inv.app
    call = conn.helper(
        "push",
        {"app": app.name, "release": bundle.release_id, "manifest": bundle.manifest(), "keep": app.keep_releases},
        app=app.name,
    )
    state = call.read_json()
    facts = state["facts"]
    board_mm = ".".join(facts["python"].split(".")[:2])
    if board_mm != bundle.python:
        call.send_json({"action": "abort"})
        call.close()
        if bundle.target.python is None:  # cached fact went stale (board's Python changed): rebuild once
            remember_facts(inv, board, facts)
            return push(inv, board, conn, dry_run=dry_run, on_plan=on_plan, on_bytes=on_bytes, cache=cache)
        raise PushError(
            f"{board.name}: target {bundle.target.name} expects Python {bundle.python} but the board runs "
            f"{facts['python']} ({facts['python_exe']}); fix boards.{board.name}.target or .python"
        )
    if facts["arch"] != bundle.target.arch:
        call.send_json({"action": "abort"})
        call.close()
        raise PushError(f"{board.name}: target {bundle.target.name} is {bundle.target.arch} but the board is {facts['arch']}")
    missing = state["missing"]
    by_sha = {}
    for e in bundle.entries:
        by_sha.setdefault(e.sha256, e)
    send = [by_sha[s] for s in missing]
    new_env = envblock.env_sh(app.name, bundle.target, app.env)
    new_bashrc = envblock.apply_block(state["bashrc"], app.name)
    plan = PushPlan(
        board=board.name,
        release=bundle.release_id,
        current=state["current"],
        exists=state["exists"],
        files=len(bundle.entries),
        total_bytes=bundle.total_bytes,
        send_files=len(send),
        send_bytes=sum(e.size for e in send),
        env_diff=envblock.redact(envblock.diff(state["env_sh"], new_env, "env.sh"), app.env),
        bashrc_diff=envblock.diff(state["bashrc"], new_bashrc, "~/.bashrc"),
        facts=facts,
    )
    if on_plan:
        on_plan(plan)
    if dry_run:
        call.send_json({"action": "abort"})
        call.read_json()
        call.close()
        return PushResult(
            board=board.name, release=bundle.release_id, previous=state["current"], switched=False, payload_bytes=0,
            objects=0, linked=0, pruned=[], bashrc_changed=bool(plan.bashrc_diff), env_changed=bool(plan.env_diff),
            seconds=time.perf_counter() - t0, dry_run=True, plan=plan, python=bundle.python, target=bundle.target.name,
        )
    call.send_json({
        "action": "commit",
        "env_sh": new_env,
        "bashrc": new_bashrc if new_bashrc != state["bashrc"] else None,
    })
    payload = 0
    if send:
        writer = call.writer(on_bytes)
        try:
            # tarfile's stream buffer is a bytes object grown with `buf += data` (a full copy per 16 KiB
            # write): keep it at its default record size; ChannelWriter already batches 1 MiB per send
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.GNU_FORMAT) as tf:
                for e in send:
                    info = tarfile.TarInfo(e.sha256)
                    info.size = e.size
                    info.mode = 0o644
                    with e.open() as f:
                        tf.addfile(info, f)
                    payload += e.size
            writer.flush()
        except OSError as exc:
            raise PushError(f"{board.name}: transfer failed: {exc}; the previous release is still current") from None
    try:
        done = call.read_json()
    except RemoteError as exc:
        raise PushError(f"{exc}; the previous release is still current") from None
    call.close()
    return PushResult(
        board=board.name,
        release=done["release"],
        previous=done["previous"],
        switched=done["switched"],
        payload_bytes=payload,
        objects=done["received_objects"],
        linked=done["linked"],
        pruned=done["pruned"],
        bashrc_changed=done["bashrc_changed"],
        env_changed=bool(plan.env_diff),
        seconds=time.perf_counter() - t0,
        plan=plan,
        python=bundle.python,
        target=bundle.target.name,
    )


def releases(inv: Inventory, conn: Connection) -> dict:
    call = conn.helper("releases", {"app": inv.app.name})
    out = call.read_json()
    call.close()
    return out


def rollback(inv: Inventory, conn: Connection, to: str | None = None) -> dict:
    call = conn.helper("rollback", {"app": inv.app.name, "to": to}, app=inv.app.name)
    out = call.read_json()
    call.close()
    return out


def verify(inv: Inventory, conn: Connection, release: str | None = None) -> dict:
    call = conn.helper("verify", {"app": inv.app.name, "release": release})
    out = call.read_json()
    call.close()
    return out
