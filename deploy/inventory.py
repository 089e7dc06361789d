"""Load and validate ``inventory.yaml`` into typed, frozen values.

Every error names the file, the line and the dotted field, e.g.::

    inventory.yaml:14: boards.board1.port: must be an integer 1-65535, not 'abc'

The YAML is composed into nodes first (not loaded straight into dicts) so that each
value keeps the line it came from. Unknown keys are errors, not silently ignored:
a typo such as ``taget:`` would otherwise deploy with the default target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InventoryError
from .targets import PROFILES

# patterns end in \Z, not $ (which matches before a final newline too): a value is exactly what its grammar says
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# a login name; a host (DNS name, IPv4, IPv6 without brackets): no space, control, shell metacharacter or leading -
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")
HOST_RE = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,252}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9._-]+)?)\Z")
PYTHON_RE = re.compile(r"^[A-Za-z0-9_./~+][A-Za-z0-9_./~+-]{0,255}\Z")  # an interpreter: a name or a path
# a jump host: [user@]host[:port]; an IPv6 address in brackets ([fe80::1]:22)
JUMP_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                     r"(?P<host>\[[0-9A-Fa-f:.%a-z]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)(?::(?P<port>[0-9]{1,5}))?\Z")
PATH_RE = re.compile(r"^[^\x00-\x1f\x7f]+\Z")  # a path has no control character (nor has an env value but tab)
# env keys that change how the board runs code (shell, loader: LD_* too, Python's imports): only with app.env_unsafe
UNSAFE_ENV = frozenset({"PATH", "BASH_ENV", "ENV", "IFS", "CDPATH", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND",
                        "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT",
                        "PYTHONWARNINGS", "GCONV_PATH"})
MAX_BYTES, MAX_DEPTH = 1 << 20, 32  # an inventory's size (refused before parsing) and YAML nesting
BACKENDS = ("onnx", "om", "magicmind")  # app.models kinds: ONNX, Ascend .om, a MagicMind model
PRESETS = ("imagenet", "caffe", "cifar", "raw-u8")


@dataclass(frozen=True)
class Service:
    """``app.service``: how ``deploy service start`` runs the agent as a service (see agent/service.py)."""

    inbox: str = ""  # on the board; "" = ~/HIAI_PROJECTS/<app>/inbox
    policy: str = "move"  # what happens to a classified image: keep | move (to <inbox>/done/) | delete
    max_disk: int = 1 << 30  # bytes the service may use: journal, logs, done/
    settle: float = 2.0  # seconds a file written in place (not renamed in) must keep its size
    rotate: int = 16 << 20  # journal segment size
    log_max: int = 4 << 20  # agent.log size before it is rotated


SERVICE_POLICIES = ("keep", "move", "delete")
SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")


def unsafe_env(keys) -> list[str]:
    """The env keys among ``keys`` that change how the board runs code (``UNSAFE_ENV``, ``LD_*``), sorted."""
    return sorted(k for k in keys if k in UNSAFE_ENV or k.startswith("LD_"))


def parse_size(text: str | int) -> int | None:
    """``500MB``, ``2GiB``, ``1.5G``, ``4096`` as bytes (K/M/G/T are powers of 1024); None if unreadable."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = SIZE_RE.match(str(text))
    if not m:
        return None
    return int(float(m[1]) * 1024 ** " KMGT".index((m[2] or " ").upper()))


@dataclass(frozen=True)
class App:
    name: str
    models: dict[str, Path]  # backend file kind ("onnx" | "om") -> local path
    labels: Path | None
    images: Path | None
    preprocess: dict[str, Any]
    topk: int = 5
    batch: int = 1
    keep_releases: int = 5
    env: dict[str, str] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)  # acl: async, callback_interval, buffers, device
    env_unsafe: bool = False  # app.env_unsafe: env may set keys that change how the board runs code (unsafe_env)
    probe: Path | None = None  # app.health.probe: the health check's image (None: chosen from app.images)
    health_timeout: int = 60  # app.health.timeout: seconds the board's agent may take for the check
    service: Service = field(default_factory=Service)  # app.service


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


class _Doc:
    """Walks composed YAML nodes, turning each problem into a file:line: field: message error."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, node: yaml.Node | None, where: str, msg: str) -> InventoryError:
        line = node.start_mark.line + 1 if node is not None else 1
        return InventoryError(f"{self.path}:{line}: {where}: {msg}")

    def mapping(self, node: yaml.Node, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, "must be a mapping (key: value lines)")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.fail(k, where, "keys must be plain names")
            if k.value in out:
                raise self.fail(k, f"{where}.{k.value}" if where else k.value, "duplicate key")
            out[k.value] = (k, v)
        return out

    def check_keys(self, m: dict, allowed: set[str], where: str) -> None:
        for key, (knode, _) in m.items():
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                raise self.fail(knode, f"{where}.{key}" if where else key, f"unknown field (expected one of: {hint})")

    def scalar(self, node: yaml.Node, where: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, where, "must be a single value, not a list or mapping")
        return self.plain(node, where) if node.tag != "tag:yaml.org,2002:str" else node.value

    def string(self, node: yaml.Node, where: str, pattern: re.Pattern | None = None, what: str = "") -> str:
        val = self.scalar(node, where)
        if not isinstance(val, str) or not val:
            raise self.fail(node, where, f"must be a non-empty string, not {val!r}")
        if pattern is not None and not pattern.match(val):
            raise self.fail(node, where, f"{what or 'invalid value'}: {val!r}")
        return val

    def integer(self, node: yaml.Node, where: str, lo: int, hi: int) -> int:
        val = self.scalar(node, where)
        if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
            raise self.fail(node, where, f"must be an integer {lo}-{hi}, not {val!r}")
        return val

    def boolean(self, node: yaml.Node, where: str) -> bool:
        val = self.scalar(node, where)
        if not isinstance(val, bool):
            raise self.fail(node, where, f"must be true or false, not {val!r}")
        return val

    def plain(self, node: yaml.Node, where: str) -> Any:
        """Any YAML value, as plain Python (for free-form sections such as preprocess overrides)."""
        if node.tag == "tag:yaml.org,2002:null":  # `key:` left empty serializes to no document at all
            return None
        return yaml.safe_load(yaml.serialize(node))


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
    doc = _Doc(path)
    top = _sections(doc, _compose(text, path), path)
    base = path.resolve().parent
    app = _app(doc, top["app"][1], base)
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


def _check_jumps(doc: _Doc, boards: dict[str, Board], sources: dict[str, tuple[yaml.Node | None, str]]) -> None:
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


def _sections(doc: _Doc, root: yaml.Node, path: Path) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """The top-level sections: only known ones, and app: and boards: present."""
    top = doc.mapping(root, "")
    doc.check_keys(top, {"app", "boards", "groups", "defaults"}, "")
    for req in ("app", "boards"):
        if req not in top:
            raise InventoryError(f"{path}:1: {req}: required section is missing")
    return top


def _defaults(doc: _Doc, node: yaml.Node) -> dict[str, tuple[yaml.Node, str]]:
    """defaults: as key -> (value node, where it was written)."""
    dm = doc.mapping(node, "defaults")
    doc.check_keys(dm, _SHARED_KEYS, "defaults")
    return {k: (v, f"defaults.{k}") for k, (_, v) in dm.items()}


def _board_nodes(doc: _Doc, node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """boards: as name -> (key node, value node); at least one, each validly named."""
    boards_m = doc.mapping(node, "boards")
    if not boards_m:
        raise doc.fail(node, "boards", "at least one board is needed")
    for name, (knode, _) in boards_m.items():
        if not NAME_RE.match(name):
            raise doc.fail(knode, f"boards.{name}", "board names use letters, digits, '.', '_' and '-'")
    return boards_m


def _groups(doc: _Doc, node: yaml.Node, boards_m: dict, inherited: dict) -> dict[str, tuple[str, ...]]:
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


def _group_spec(doc: _Doc, vnode: yaml.Node, where: str) -> tuple[list, str, dict]:
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


_APP_KEYS = {"name", "models", "labels", "images", "preprocess", "topk", "batch", "keep_releases", "env",
             "backend_options", "health", "service", "env_unsafe"}
# app.backend_options (the acl backend's; seed 000's async sample: callback interval, in-flight buffers)
_ACL_OPTIONS = {"async": (bool, None), "callback_interval": (int, (1, 10000)), "buffers": (int, (1, 64)),
                "device": (int, (0, 63))}
_BOARD_KEYS = {"sandbox", "host", "port", "user", "key", "target", "python", "arch", "jump"}
_SHARED_KEYS = _BOARD_KEYS - {"sandbox", "host"}  # what defaults: and groups: may set for their boards


def _path(doc: _Doc, node: yaml.Node, where: str, base: Path) -> Path:
    p = Path(doc.string(node, where, PATH_RE, "a path cannot hold control characters")).expanduser()
    return p if p.is_absolute() else base / p


def _app(doc: _Doc, node: yaml.Node, base: Path) -> App:
    m = doc.mapping(node, "app")
    doc.check_keys(m, _APP_KEYS, "app")
    if "name" not in m:
        raise doc.fail(node, "app.name", "required field is missing")
    name = doc.string(m["name"][1], "app.name", NAME_RE, "use letters, digits, '.', '_' and '-'")
    if "models" not in m:
        raise doc.fail(node, "app.models", "required field is missing (e.g. models: {onnx: models/net.onnx})")
    models = {}
    for kind, (knode, vnode) in doc.mapping(m["models"][1], "app.models").items():
        if kind not in BACKENDS:
            raise doc.fail(knode, f"app.models.{kind}", f"model kind must be one of {', '.join(BACKENDS)}")
        models[kind] = _path(doc, vnode, f"app.models.{kind}", base)
    if not models:
        raise doc.fail(m["models"][1], "app.models", "name at least one model")
    preprocess: dict[str, Any] = {"preset": "imagenet"}
    if "preprocess" in m:
        pnode = m["preprocess"][1]
        if isinstance(pnode, yaml.ScalarNode):
            preprocess = {"preset": doc.string(pnode, "app.preprocess")}
        else:
            preprocess = doc.plain(pnode, "app.preprocess")
            if not isinstance(preprocess, dict):
                raise doc.fail(pnode, "app.preprocess", "must be a preset name or a mapping with preset:")
            preprocess.setdefault("preset", "imagenet")
        if preprocess["preset"] not in PRESETS:
            raise doc.fail(pnode, "app.preprocess.preset", f"must be one of {', '.join(PRESETS)}, not {preprocess['preset']!r}")
        for key in ("mean", "std"):
            if key in preprocess:
                v = preprocess[key]
                if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                    raise doc.fail(pnode, f"app.preprocess.{key}", "must be a list of three numbers")
    env_unsafe = doc.boolean(m["env_unsafe"][1], "app.env_unsafe") if "env_unsafe" in m else False
    env = _env(doc, m["env"][1], env_unsafe) if "env" in m else {}
    return App(
        name=name,
        models=models,
        labels=_path(doc, m["labels"][1], "app.labels", base) if "labels" in m else None,
        images=_path(doc, m["images"][1], "app.images", base) if "images" in m else None,
        preprocess=preprocess,
        topk=doc.integer(m["topk"][1], "app.topk", 1, 1000) if "topk" in m else 5,
        batch=doc.integer(m["batch"][1], "app.batch", 1, 1024) if "batch" in m else 1,
        keep_releases=doc.integer(m["keep_releases"][1], "app.keep_releases", 1, 100) if "keep_releases" in m else 5,
        env=env,
        env_unsafe=env_unsafe,
        backend_options=_backend_options(doc, m["backend_options"][1]) if "backend_options" in m else {},
        **(_health(doc, m["health"][1], base) if "health" in m else {}),
        **({"service": _service(doc, m["service"][1])} if "service" in m else {}),
    )


def _env(doc: _Doc, node: yaml.Node, unsafe_ok: bool) -> dict[str, str]:
    """app.env: shell names, values without control characters but tab; ``unsafe_env`` keys only if allowed."""
    env = {}
    for k, (knode, vnode) in doc.mapping(node, "app.env").items():
        if not ENV_KEY_RE.match(k):
            raise doc.fail(knode, f"app.env.{k}", "not a valid environment variable name")
        val = doc.scalar(vnode, f"app.env.{k}")
        env[k] = "" if val is None else str(val)
        if env[k] and not PATH_RE.match(env[k].replace("\t", " ")):
            raise doc.fail(vnode, f"app.env.{k}", "a value cannot hold control characters (newlines included)")
        if unsafe_env([k]) and not unsafe_ok:
            raise doc.fail(knode, f"app.env.{k}", "changes how the board runs code (the shell, the loader or Python's "
                           "imports); set app.env_unsafe: true to allow it")
    return env


def _service(doc: _Doc, node: yaml.Node) -> Service:
    """app.service: ``{inbox: ~/in, policy: move, max_disk: 2GB, settle: 2, rotate: 16MB, log_max: 4MB}``."""
    sm = doc.mapping(node, "app.service")
    doc.check_keys(sm, {"inbox", "policy", "max_disk", "settle", "rotate", "log_max"}, "app.service")
    out: dict[str, Any] = {}
    if "inbox" in sm:
        out["inbox"] = doc.string(sm["inbox"][1], "app.service.inbox", PATH_RE, "a path cannot hold control characters")
    if "policy" in sm:
        policy = doc.string(sm["policy"][1], "app.service.policy")
        if policy not in SERVICE_POLICIES:
            raise doc.fail(sm["policy"][1], "app.service.policy", f"must be one of {', '.join(SERVICE_POLICIES)}, "
                           f"not {policy!r}")
        out["policy"] = policy
    for key, lo in (("max_disk", 1 << 20), ("rotate", 4096), ("log_max", 4096)):
        if key in sm:
            vnode = sm[key][1]
            size = parse_size(doc.scalar(vnode, f"app.service.{key}"))
            if size is None or size < lo:
                raise doc.fail(vnode, f"app.service.{key}", f"must be a size of at least {lo} bytes "
                               f"(e.g. 500MB, 2GiB), not {vnode.value!r}")
            out[key] = size
    if "settle" in sm:
        vnode = sm["settle"][1]
        val = doc.scalar(vnode, "app.service.settle")
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val <= 3600:
            raise doc.fail(vnode, "app.service.settle", f"must be seconds 0-3600, not {val!r}")
        out["settle"] = float(val)
    return Service(**out)


def _health(doc: _Doc, node: yaml.Node, base: Path) -> dict[str, Any]:
    """app.health: ``{probe: images/cat.jpg, timeout: 60}`` (both optional) as App fields."""
    hm = doc.mapping(node, "app.health")
    doc.check_keys(hm, {"probe", "timeout"}, "app.health")
    out: dict[str, Any] = {}
    if "probe" in hm:
        out["probe"] = _path(doc, hm["probe"][1], "app.health.probe", base)
    if "timeout" in hm:
        out["health_timeout"] = doc.integer(hm["timeout"][1], "app.health.timeout", 1, 3600)
    return out


def _backend_options(doc: _Doc, node: yaml.Node) -> dict[str, Any]:
    """app.backend_options, each checked: ``{async: true, callback_interval: 8, buffers: 4}``."""
    out: dict[str, Any] = {}
    for key, (knode, vnode) in doc.mapping(node, "app.backend_options").items():
        if key not in _ACL_OPTIONS:
            raise doc.fail(knode, f"app.backend_options.{key}", f"unknown option (known: {', '.join(_ACL_OPTIONS)})")
        kind, bounds = _ACL_OPTIONS[key]
        where = f"app.backend_options.{key}"
        if kind is bool:
            value = doc.plain(vnode, where)
            if not isinstance(value, bool):
                raise doc.fail(vnode, where, "must be true or false")
            out[key] = value
        else:
            out[key] = doc.integer(vnode, where, *bounds)
    return out


def _board(doc: _Doc, name: str, knode, vnode, inherited: dict, base: Path) -> Board:
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
    key = get("key", _path_conv(doc, base))
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
    )


def _path_conv(doc: _Doc, base: Path):
    def conv(node, where):
        return _path(doc, node, where, base)

    return conv
