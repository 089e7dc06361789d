"""Load and validate ``inventory.yaml`` into typed, frozen values.

Every error names the file, the line and the dotted field, e.g.::

    inventory.yaml:14: boards.board1.port: must be an integer 1-65535, not 'abc'

The YAML is composed into nodes first (not loaded straight into dicts) so that each
value keeps the line it came from. Unknown keys are errors, not silently ignored:
a typo such as ``taget:`` would otherwise deploy with the default target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InventoryError
from ..targets import PROFILES
from .app import (  # re-exported: `from deploy.inventory import App, ...` (the own app's types: inventory/own.py)
    BACKENDS,
    NAME_RE,
    PRESETS,
    App,
    Service,
    parse_app,
    parse_size,
    unsafe_env,
)
from .doc import Doc, path_conv

__all__ = ["BACKENDS", "NAME_RE", "PRESETS", "App", "Board", "Inventory", "Jump", "Service", "load", "parse", "parse_size",
           "unsafe_env"]


# a login name; a host (DNS name, IPv4, IPv6 without brackets): no space, control, shell metacharacter or leading -
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")
HOST_RE = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,252}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9._-]+)?)\Z")
PYTHON_RE = re.compile(r"^[A-Za-z0-9_./~+][A-Za-z0-9_./~+-]{0,255}\Z")  # an interpreter: a name or a path
# a jump host: [user@]host[:port]; an IPv6 address in brackets ([fe80::1]:22)
JUMP_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                     r"(?P<host>\[[0-9A-Fa-f:.%a-z]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)(?::(?P<port>[0-9]{1,5}))?\Z")
MAX_BYTES, MAX_DEPTH = 1 << 20, 32  # an inventory's size (refused before parsing) and YAML nesting


@dataclass(frozen=True)
class Board:
    name: str
    target: str
    sandbox: bool = False
    host: str | None = None
    port: int = 22
    user: str | None = None
    key: Path | None = None
    python: str | None = None  # the interpreter to use; None: the target's candidates (targets.Target.pythons)
    arch: str = "x86_64"  # sandbox boards only: x86_64 (native) or aarch64 (qemu-user rootfs)
    line: int = 0
    # reach the board through this SSH host: another board's name or [user@]host[:port] (see Jump);
    # None: ~/.ssh/config decides (ProxyJump/ProxyCommand); "none": never through a jump host
    jump: str | None = None
    ddk: Path | None = None  # the Ascend toolkit's arm64-linux (or x86_64-linux) folder C++ apps build against
    persist: int | None = None  # seconds its SSH connection stays warm after a command (0: never; None: 60)


@dataclass(frozen=True)
class Jump:
    """A ``jump:`` that is not a board name: ``[user@]host[:port]``, as OpenSSH's ``-J`` writes a hop."""

    host: str
    user: str | None = None
    port: int | None = None  # None: ~/.ssh/config's Port for host, else 22

    @classmethod
    def parse(cls, spec: str) -> Jump | None:
        """The hop ``spec`` names, or None when it is not ``[user@]host[:port]`` (port 1-65535)."""
        m = JUMP_RE.match(spec)
        if not m or (m["port"] is not None and not 0 < int(m["port"]) < 65536):
            return None
        return cls(m["host"].strip("[]"), m["user"], int(m["port"]) if m["port"] else None)


@dataclass(frozen=True)
class Inventory:
    path: Path
    app: App
    boards: dict[str, Board]
    groups: dict[str, tuple[str, ...]]

    @property
    def root(self) -> Path:
        """The project directory: relative paths in the inventory are taken from here."""
        return self.path.resolve().parent

    @property
    def state_dir(self) -> Path:
        """Project-local state: known_hosts, client key, sandbox boards, caches."""
        return self.root / ".deploy"

    @property
    def outputs(self) -> Path:
        """Where pulled runs land: ``outputs/<board>/<run-id>/`` (and ``<board>/service/``, ``_fleet/``)."""
        return self.root / "outputs"

    def select(self, spec: str) -> list[Board]:
        """Boards named by ``spec``: a board, a group, ``all``, or a comma-separated mix."""
        chosen: dict[str, Board] = {}
        for part in [p.strip() for p in spec.split(",") if p.strip()]:
            if part == "all":
                names: tuple[str, ...] = tuple(self.boards)
            elif part in self.boards:
                names = (part,)
            elif part in self.groups:
                names = self.groups[part]
            else:
                known = ", ".join(sorted([*self.boards, *self.groups, "all"]))
                raise InventoryError(f"{self.path}: no board or group named {part!r} (known: {known})")
            for n in names:
                chosen[n] = self.boards[n]
        if not chosen:
            raise InventoryError(f"{self.path}: no boards selected by {spec!r}")
        return list(chosen.values())


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file. Raises InventoryError with file:line: field: message."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_BYTES + 1).decode("utf-8")
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory not found (pass -i/--inventory PATH)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{path}: cannot read inventory: {exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Inventory:
    """Validate inventory ``text`` read from ``path`` (errors name it; relative paths start at its folder).

    Raises InventoryError (file:line: field: message) for the first problem, checking app:, defaults:,
    boards: and groups: in that order. A board's setting wins over its group's, which wins over defaults:.
    """
    doc = Doc(path)
    top = _sections(doc, _compose(text, path), path)
    base = path.resolve().parent
    app = parse_app(doc, top["app"][1], base)
    defaults = _defaults(doc, top["defaults"][1]) if "defaults" in top else {}
    boards_m = _board_nodes(doc, top["boards"][1])
    # settings a board inherits, as key -> (node, where it was written): defaults < groups < the board itself
    inherited = {name: dict(defaults) for name in boards_m}
    groups = _groups(doc, top["groups"][1], boards_m, inherited) if "groups" in top else {}
    boards = {
        name: _board(doc, name, knode, vnode, inherited[name], base) for name, (knode, vnode) in boards_m.items()
    }
    _check_jumps(doc, boards, {name: _source(vnode, name, "jump", inherited[name]) for name, (_, vnode) in boards_m.items()})
    return Inventory(path=path, app=app, boards=boards, groups=groups)


def _source(vnode: yaml.Node, name: str, key: str, inherited: dict) -> tuple[yaml.Node | None, str]:
    """Where a board's ``key`` setting was written: (its value node, dotted field); the board's own first."""
    if isinstance(vnode, yaml.MappingNode):
        for k, v in vnode.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v, f"boards.{name}.{key}"
    return inherited.get(key, (None, f"boards.{name}.{key}"))


def _check_jumps(doc: Doc, boards: dict[str, Board], sources: dict[str, tuple[yaml.Node | None, str]]) -> None:
    """Every ``jump:`` names a board or a ``[user@]host[:port]``, and no chain of jumps leads back to the
    board it starts from, so such an inventory fails at load, before any board is touched. A loop among
    other boards is reported for those boards."""
    for name, board in boards.items():
        if board.jump in (None, "none"):
            continue
        node, where = sources[name]
        if board.jump not in boards and Jump.parse(board.jump) is None:
            raise doc.fail(node, where, f"not a board of this inventory nor [user@]host[:port]: {board.jump!r}")
        chain = [name]
        while boards[chain[-1]].jump in boards and boards[chain[-1]].jump not in chain:
            chain.append(boards[chain[-1]].jump)
        end = boards[chain[-1]].jump
        if end == name:  # a board in its own group (or defaults:) that names it as the jump host
            hint = f"; set jump: none on {name}" if len(chain) == 1 and where != f"boards.{name}.jump" else ""
            raise doc.fail(node, where, f"jump hosts loop back to {name} ({' -> '.join([*chain, name])}){hint}")
        hop = Jump.parse(end) if end not in boards and end not in (None, "none") else None
        # the chain ends at an address: the board itself is no jump host for its own way in
        if hop is not None and board.host == hop.host and (hop.port or 22) == board.port:
            raise doc.fail(node, where, f"jump hosts loop back to {name} ({' -> '.join([*chain, end])})")


class _Loader(yaml.SafeLoader):
    """Refuses aliases (``*name``: one line can stand for billions of nodes) and nesting past ``MAX_DEPTH``."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        why = "aliases (*name) are not allowed in an inventory" if isinstance(event, yaml.AliasEvent) else (
            f"nested deeper than {MAX_DEPTH} levels" if self.depth >= MAX_DEPTH else None)
        if why:
            raise yaml.MarkedYAMLError(problem=why, problem_mark=event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str, path: Path) -> yaml.Node:
    """The YAML as nodes (which keep their line numbers); syntax errors, size and emptiness as InventoryError."""
    if len(text) > MAX_BYTES:
        raise InventoryError(f"{path}:1: inventory larger than {MAX_BYTES >> 20} MiB; refusing to parse it")
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise InventoryError(f"{path}:{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}:1: YAML error: {exc}") from None
    if root is None:
        raise InventoryError(f"{path}:1: inventory is empty (needs app: and boards:)")
    return root


def _sections(doc: Doc, root: yaml.Node, path: Path) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """The top-level sections: only known ones, and app: and boards: present."""
    top = doc.mapping(root, "")
    doc.check_keys(top, {"app", "boards", "groups", "defaults"}, "")
    for req in ("app", "boards"):
        if req not in top:
            raise InventoryError(f"{path}:1: {req}: required section is missing")
    return top


def _defaults(doc: Doc, node: yaml.Node) -> dict[str, tuple[yaml.Node, str]]:
    """defaults: as key -> (value node, where it was written)."""
    dm = doc.mapping(node, "defaults")
    doc.check_keys(dm, _SHARED_KEYS, "defaults")
    return {k: (v, f"defaults.{k}") for k, (_, v) in dm.items()}


def _board_nodes(doc: Doc, node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """boards: as name -> (key node, value node); at least one, each validly named."""
    boards_m = doc.mapping(node, "boards")
    if not boards_m:
        raise doc.fail(node, "boards", "at least one board is needed")
    for name, (knode, _) in boards_m.items():
        if not NAME_RE.match(name):
            raise doc.fail(knode, f"boards.{name}", "board names use letters, digits, '.', '_' and '-'")
    return boards_m


def _groups(doc: Doc, node: yaml.Node, boards_m: dict, inherited: dict) -> dict[str, tuple[str, ...]]:
    """groups: as name -> member boards; each group's settings go into its members' ``inherited``.

    Two groups may give one board the same setting only with the same value.
    """
    groups: dict[str, tuple[str, ...]] = {}
    group_set: dict[tuple[str, str], str] = {}  # (board, key) -> the group that set it
    for gname, (knode, vnode) in doc.mapping(node, "groups").items():
        where = f"groups.{gname}"
        if gname == "all" or gname in boards_m:
            raise doc.fail(knode, where, "a group cannot be named 'all' or like a board")
        items, where_members, settings = _group_spec(doc, vnode, where)
        members = []
        for item in items:
            member = doc.string(item, where_members)
            if member not in boards_m:
                raise doc.fail(item, where_members, f"unknown board {member!r}")
            members.append(member)
            for key, (k2, v2) in settings.items():
                other = group_set.get((member, key))
                if other is not None and doc.plain(v2, key) != doc.plain(inherited[member][key][0], key):
                    raise doc.fail(k2, f"{where}.{key}", f"board {member} also gets {key} from groups.{other}; "
                                   f"set it on the board instead")
                group_set[(member, key)] = gname
                inherited[member][key] = (v2, f"{where}.{key}")
        groups[gname] = tuple(members)
    return groups


def _group_spec(doc: Doc, vnode: yaml.Node, where: str) -> tuple[list, str, dict]:
    """A group's member nodes, the field they sit in, and its settings.

    A group is either a plain list of boards or ``{boards: [...], target: ..., user: ...}``.
    """
    settings: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    members_node = vnode
    where_members = where
    if isinstance(vnode, yaml.MappingNode):
        gm = doc.mapping(vnode, where)
        doc.check_keys(gm, _SHARED_KEYS | {"boards"}, where)
        if "boards" not in gm:
            raise doc.fail(vnode, f"{where}.boards", "required: the list of the group's boards")
        members_node = gm.pop("boards")[1]
        settings = gm
        where_members = f"{where}.boards"
    if not isinstance(members_node, yaml.SequenceNode):
        raise doc.fail(members_node, where_members, "must be a list of board names")
    return members_node.value, where_members, settings


_BOARD_KEYS = {"sandbox", "host", "port", "user", "key", "target", "python", "arch", "jump", "ddk", "persist"}


_SHARED_KEYS = _BOARD_KEYS - {"sandbox", "host"}  # what defaults: and groups: may set for their boards


def _board(doc: Doc, name: str, knode, vnode, inherited: dict, base: Path) -> Board:
    where = f"boards.{name}"
    if vnode.tag == "tag:yaml.org,2002:null":
        own: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    else:
        own = doc.mapping(vnode, where)
    doc.check_keys(own, _BOARD_KEYS, where)
    merged = {**inherited, **{k: (v, f"{where}.{k}") for k, (_, v) in own.items()}}

    def get(key, conv, *args, default=None):
        if key not in merged:
            return default
        node, w = merged[key]
        return conv(node, w, *args)

    sandbox = get("sandbox", doc.boolean, default=False)
    host = get("host", doc.string, HOST_RE, "not a host name or address")
    if not sandbox and not host:
        raise doc.fail(knode, f"{where}.host", "required for a real board (or set sandbox: true)")
    if sandbox and host:
        raise doc.fail(own["host"][0], f"{where}.host", "a sandbox board gets its address from `deploy sandbox up`")
    target = get("target", doc.string)
    if target is None:
        target = "x86_64-cpu" if sandbox else "atlas200dk"
    if target not in PROFILES:
        raise doc.fail(*merged["target"], f"unknown target {target!r} (known: {', '.join(PROFILES)})")
    # a sandbox board is its target's arch (an Atlas under qemu-user) unless `arch: x86_64` asks for the fast one
    arch = get("arch", doc.string, default=PROFILES[target].arch if sandbox else "x86_64")
    if arch not in ("x86_64", "aarch64"):
        raise doc.fail(*merged["arch"], f"must be x86_64 or aarch64, not {arch!r}")
    key = get("key", path_conv(doc, base))
    return Board(
        name=name,
        target=target,
        sandbox=sandbox,
        host=host,
        port=get("port", doc.integer, 1, 65535, default=22),
        user=get("user", doc.string, USER_RE, "not a login name (letters, digits, '.', '_', '-')"),
        key=key,
        python=get("python", doc.string, PYTHON_RE, "not an interpreter name or path"),
        arch=arch,
        line=knode.start_mark.line + 1,
        jump=get("jump", doc.string),
        ddk=get("ddk", path_conv(doc, base)),
        persist=get("persist", doc.integer, 0, 86400),
    )
