"""The host <-> board protocol: one request type and one reply type per board operation.

Shared by both ends: the host imports it as ``deploy.board.protocol``, the board gets it in
the code archive (see ``boot.py``). Python 3.7 + stdlib only.

On the wire every message is one JSON object per line, its fields in declaration order
(``Message.to_json``); bulk bytes (tar streams) follow a message on the same channel
where an operation says so. A failure on the board is the line ``{"error": "..."}``
instead of the expected reply, and ends the operation. The first line of every operation
is the boot line (``{"boot": "ok"}``), written by the bootstrap before the operation runs.

Messages are decoded with ``decode(cls, obj)``: unknown fields are ignored (a newer board
may say more), missing fields take their defaults (an older one may say less), every field
present must have the JSON type its annotation says (``str``, ``int``, ``list[str]``,
``ImportProbe | None`` ...: a ValueError naming the field otherwise, so a board's reply of the
wrong shape is a protocol error and never reaches code that trusts it), and nested messages are
rebuilt from the class's ``NESTED`` map, so no dict of dicts crosses a module boundary on the host.
"""

from __future__ import annotations

import re

VERSION = 1

#: an app, release or run id: one safe path component on both ends (the board's directories, the host's outputs/)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
#: names under outputs/<board>/ that are not runs: ``service`` holds the collected journal
RESERVED_RUN_IDS = ("service",)


#: inventory env keys whose values are never shown (status, releases, dry-run diffs): masked by key
SECRET_KEY_RE = re.compile(r"(PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH)", re.I)


def secret_key(key):
    return bool(SECRET_KEY_RE.search(key))


def valid_id(value):
    return isinstance(value, str) and bool(ID_RE.match(value))


def valid_run_id(value):
    """A run id: a valid id that names no other directory of the host's ``outputs/<board>/``."""
    return valid_id(value) and value not in RESERVED_RUN_IDS


class Message:
    """Base of every request and reply: the class's annotated attributes are its fields, in order.

    A field's class attribute is its default (a list or dict default is copied per instance).
    ``NESTED`` maps a field to its message class ([cls] for a list of them). Deliberately not
    ``dataclasses``: on a board every operation starts a fresh interpreter, and importing
    dataclasses (it pulls in ``inspect``) plus generating ~30 classes costs more than the op.
    """

    NESTED = {}
    FIELDS = ()
    TYPES = {}  # field -> its annotation (a string: this module's annotations are not evaluated)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names, types = [], {}
        for klass in reversed(cls.__mro__):
            for name, note in klass.__dict__.get("__annotations__", {}).items():
                if name not in names and name not in ("NESTED", "FIELDS", "TYPES"):
                    names.append(name)
                    types[name] = note
        cls.FIELDS = tuple(names)
        cls.TYPES = types

    def __init__(self, **kwargs):
        for name in self.FIELDS:
            if name in kwargs:
                value = kwargs.pop(name)
            else:
                value = getattr(type(self), name)
                if isinstance(value, (list, dict)):
                    value = type(value)(value)
            setattr(self, name, value)
        if kwargs:
            raise TypeError("{}: unknown field(s) {}".format(type(self).__name__, ", ".join(sorted(kwargs))))

    def __eq__(self, other):
        return type(self) is type(other) and self.to_json() == other.to_json()

    def __repr__(self):
        return "{}({})".format(type(self).__name__, ", ".join(f"{n}={getattr(self, n)!r}" for n in self.FIELDS))

    def to_json(self):
        """The message as plain JSON values (nested messages included), fields in declaration order."""
        return {name: _plain(getattr(self, name)) for name in self.FIELDS}


def _plain(value):
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, list) and value and isinstance(value[0], Message):
        return [v.to_json() for v in value]
    return value


_KINDS = ("bool", "int", "float", "str", "list", "dict")
_INT_RANGE = 1 << 63  # a JSON integer beyond 64 bits is no count, size or pid of ours


def _spec(note):
    """An annotation as ``(None allowed, kind, element spec or None)``; kind "any" is not checked."""
    parts = [p.strip() for p in note.split("|")]
    rest = [p for p in parts if p != "None"]
    if len(rest) != 1:
        return (True, "any", None)
    t = rest[0]
    if t.endswith("]") and t.startswith(("list[", "dict[")):
        inner = t[5:-1] if t[0] == "l" else t[5:-1].split(",", 1)[-1]
        return (len(rest) < len(parts), t[:4], _spec(inner))
    return (len(rest) < len(parts), t if t in _KINDS else "any", None)


def fits(value, spec):
    """Whether a JSON value has the type ``spec`` says (messages are checked when they are decoded)."""
    none, kind, inner = spec
    if value is None:
        return none
    if kind == "str" or kind == "bool":
        return type(value) is (str if kind == "str" else bool)
    if kind == "int" or kind == "float":
        return (type(value) is int and -_INT_RANGE <= value < _INT_RANGE) or (kind == "float" and type(value) is float)
    if kind == "list" or kind == "dict":
        if type(value) is not (list if kind == "list" else dict):
            return False
        if inner is None or inner[1] == "any":
            return True
        return all(fits(v, inner) for v in (value if kind == "list" else value.values()))
    return True


def field_specs(cls):
    """``cls``'s field specs, parsed on first use (most operations decode two or three classes)."""
    specs = cls.__dict__.get("_specs")
    if specs is None:
        specs = {}
        for name, note in cls.TYPES.items():
            none, kind, inner = _spec(note)
            specs[name] = (none or getattr(cls, name) is None, kind, inner)
        cls._specs = specs
    return specs


def decode(cls, obj):
    """``obj`` (a parsed JSON object) as an instance of message class ``cls``; ValueError when a field present
    has another JSON type than its annotation says."""
    if not isinstance(obj, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, not {type(obj).__name__}")
    kwargs = {}
    specs = field_specs(cls)
    for key in cls.FIELDS:
        if key not in obj:
            continue
        value = obj[key]
        if not fits(value, specs[key]):
            raise ValueError(f"{cls.__name__}.{key} must be {cls.TYPES[key]}, not {type(value).__name__}")
        sub = cls.NESTED.get(key)
        if sub is not None and value is not None:
            value = [decode(sub[0], v) for v in value] if isinstance(sub, list) else decode(sub, value)
        kwargs[key] = value
    for key, sub in cls.NESTED.items():  # a message the annotation does not allow to be None: its defaults
        if kwargs.get(key) is None and not isinstance(sub, list) and "None" not in cls.TYPES[key]:
            kwargs[key] = sub()
    return cls(**kwargs)


# ---------------------------------------------------------------- facts


class ImportProbe(Message):
    """``import acl`` with env.sh sourced: whether it worked and the last line it printed."""

    ok: bool = False
    detail: list[str] = []
    sourced: str = ""  # what set up the environment: "env.sh" (the app's), a CANN set_env.sh, or ""


class CommandProbe(Message):
    """A board tool such as ``npu-smi info``: whether it succeeded and the tail of its output."""

    ok: bool = False
    output: str = ""


class Facts(Message):
    arch: str = ""
    python: str = ""
    python_exe: str = ""
    home: str = ""
    free_bytes: int = 0
    os: str = ""
    user: str = ""
    acl: ImportProbe | None = None
    npu_smi: CommandProbe | None = None
    magicmind: ImportProbe | None = None  # import magicmind.python.runtime, Cambricon targets
    cnmon: CommandProbe | None = None  # `cnmon` (the MLU table), Cambricon targets
    modules: dict[str, bool] = {}
    pythons: list[list[str]] = []  # per interpreter candidate asked for: [name, path or "", version or ""]
    files: dict[str, bool] = {}  # per file asked for: whether it is there (the fonts Huawei's samples draw with)
    NESTED = {"acl": ImportProbe, "npu_smi": CommandProbe, "magicmind": ImportProbe, "cnmon": CommandProbe}

    @property
    def python_mm(self):
        return ".".join(self.python.split(".")[:2])


class FactsRequest(Message):
    probe: list[str] = []
    modules: list[str] = []
    pythons: list[str] = []  # interpreter candidates to locate and ask for their version
    cann_env: list[str] = []  # set_env.sh candidates to source for the acl probe when no env.sh is yet
    files: list[str] = []  # absolute paths whose presence to report


# ---------------------------------------------------------------- releases


class ReleaseInfo(Message):
    id: str = ""
    current: bool = False
    created: float | None = None
    env: dict[str, str] = {}  # the inventory's variables its env.sh sets (secret-looking values "***")
    env_sha: str = ""  # the first 12 hex digits of its env.sh's sha256 ("" when it has none)


class PushRequest(Message):
    """Phase 1 of a push: the release's manifest rows are [path, size, sha256, mode]: all of them, or (``base``)
    those that differ from release ``base``'s, which the host pushed last and the board may still have."""

    app: str = ""
    release: str = ""
    manifest: list[list] = []
    keep: int = 5
    health: bool = False  # a health check follows a switch: the push leaves pruning to it
    base: str = ""  # the manifest is ``base``'s with ``changed`` rows put in and ``removed`` paths taken out
    changed: list[list] = []
    removed: list[str] = []


class PushState(Message):
    """The board's answer to a PushRequest: what it has, what it lacks, its env.sh and ~/.bashrc."""

    facts: Facts = None
    current: str | None = None
    releases: list[str] = []
    exists: bool = False
    missing: list[str] = []
    env_sh: str | None = None
    bashrc: str | None = None
    debris: list[str] = []
    free_bytes: int = -1  # free for the board user on the app directory's filesystem (-1: unknown, an older board)
    need_manifest: bool = False  # the board lacks ``base`` (pruned): the host asks again with the whole manifest
    NESTED = {"facts": Facts}


class PushCommit(Message):
    """Phase 2: "commit" (then the object stream, if anything is missing) or "abort". The app's env.sh is a
    file of the release (``releases/<id>/env.sh``), sent as any other.

    ``hold`` > 0 (a later rollout stage, sent while an earlier stage's health checks still run): the board
    assembles the release beside the current one, answers ``PushStaged`` and waits up to ``hold`` seconds for
    a second PushCommit, "switch" (then it goes on as a plain commit) or "abort"; an abort, a lost host or no
    word in time removes the staged release, and nothing was switched."""

    action: str = "abort"  # commit | abort; after PushStaged: switch | abort
    bashrc: str | None = None
    hold: float = 0.0


class PushStaged(Message):
    """A held commit's release is assembled (not yet under ``releases/``, not current): waiting for the go."""

    staged: bool = True
    release: str = ""
    received_objects: int = 0
    received_bytes: int = 0
    linked: int = 0


class PushDone(Message):
    ok: bool = True
    release: str = ""
    previous: str | None = None
    switched: bool = False
    received_objects: int = 0
    received_bytes: int = 0
    linked: int = 0
    pruned: list[str] = []
    bashrc_changed: bool = False
    debris_removed: list[str] = []
    aborted: bool = False
    checked: bool = False  # the release now current has passed a health check on this board (and was not just switched to)
    service: bool = False  # a service of this app is enabled on the board (the host moves it after the check)


class AppRequest(Message):
    """Operations that need only the app's name (``releases``)."""

    app: str = ""


class ReleasesReply(Message):
    current: str | None = None
    releases: list[ReleaseInfo] = []
    NESTED = {"releases": [ReleaseInfo]}


class RollbackRequest(Message):
    app: str = ""
    to: str | None = None


class RollbackReply(Message):
    ok: bool = True
    previous: str | None = None
    current: str | None = None


class VerifyRequest(Message):
    app: str = ""
    release: str | None = None


class VerifyReply(Message):
    release: str = ""
    files: int = 0
    bad: list[str] = []


class HealthRequest(Message):
    """Prove the current release works: the agent classifies the release's probe (``health/health.json``)."""

    app: str = ""
    release: str = ""  # the release the host just made current; anything else current is refused
    timeout: float = 60.0  # seconds the agent may take (start, model load, one image)
    keep: int = 5  # prune to this many releases once the check passed


class HealthReply(Message):
    """The verdict. On "failed" the board has already switched back (or removed ``current``)."""

    status: str = "skipped"  # passed | failed | skipped
    reason: str = ""  # why it was skipped
    release: str = ""
    probe: str = ""  # the probe's path in the release
    source: str = ""  # where the host took it from
    expected: list | None = None  # [index, label] the host's reference top-1; None: no reference
    got: list | None = None  # [index, label, score] the board's top-1; None: the agent classified nothing
    agent_error: str | None = None  # the agent's error line (not "error": that key ends an operation)
    seconds: float = 0.0  # the agent's wall time on the board
    current: str | None = None  # what is current afterwards
    pruned: list[str] = []


# ---------------------------------------------------------------- the service


class ServiceRequest(Message):
    """``deploy service start|stop|status`` and the push's ``switch`` (the service moves to ``release``)."""

    app: str = ""
    action: str = "status"  # start | stop | status | switch
    inbox: str = ""  # start: the folder to watch ("" = ~/HIAI_PROJECTS/<app>/inbox)
    policy: str = "move"  # start: keep | move | delete
    settle: float = 2.0  # start: seconds a file written in place must keep its size
    max_disk: int = 1 << 30  # start: bytes the service may use (journal, logs, done/)
    rotate: int = 16 << 20  # start: journal segment size
    log_max: int = 4 << 20  # start: agent.log size before rotation
    method: str = "auto"  # start: auto | systemd | cron
    release: str = ""  # switch: the release to move to
    wait: float = 30.0  # start/switch: seconds to wait for the agent to run (in the new release)


class ServiceInfo(Message):
    """Everything ``deploy service status`` shows; every figure is here for ``--json``."""

    enabled: bool = False  # installed and not stopped
    method: str = ""  # systemd | cron
    supervisor: str = "absent"  # running | backoff | crash-loop | waiting | stopped | dead | absent
    supervisor_pid: int | None = None
    agent_pid: int | None = None
    state: str = ""  # the agent's: running | idle | disk-full | starting | stopping | failed | "" (none yet)
    reason: str = ""
    release: str = ""  # the release the agent runs
    pinned: str = ""  # the release the service is to run
    current: str | None = None
    since: float | None = None  # the agent's start
    restarts: int = 0
    crashes: int = 0  # consecutive crashes
    last_exit: int | None = None
    ok: int = 0
    failed: int = 0
    waiting: int = 0
    ips: float = 0.0
    last_error: str = ""
    disk_used: int = 0
    max_disk: int = 0
    seq: int = 0  # the journal's last sequence number
    acked: int = 0  # the host's last acknowledged one
    inbox: str = ""
    policy: str = ""
    watch: str = ""  # inotify | poll
    updated: float | None = None  # when the agent last wrote its figures
    note: str = ""  # what the host should say (e.g. linger off)


class CollectRequest(Message):
    app: str = ""
    after: int = 0  # the host's last sequence number: records after it are sent


class CollectHead(Message):
    """Precedes ``bytes`` bytes of journal lines, records ``first`` .. ``last`` (none when last < first)."""

    first: int = 0
    last: int = 0
    bytes: int = 0
    oldest: int = 0  # the oldest record the board still has (> after + 1: older ones were acked and removed)


class CollectAck(Message):
    seq: int = 0


class CollectDone(Message):
    acked: int = 0
    removed: list[str] = []  # journal segments removed (every record in them acknowledged)


class LogsRequest(Message):
    app: str = ""
    lines: int = 50
    follow: bool = False


class LogsHead(Message):
    """Precedes the log's last lines (raw), then, with follow, what is appended until the channel closes."""

    path: str = ""
    size: int = 0


# ---------------------------------------------------------------- runs


class RunRequest(Message):
    """Start (or resume) a run; with ``upload`` a tar stream of images follows this line."""

    app: str = ""
    run_id: str = ""
    resume: bool = False
    mode: str = "run"
    overrides: dict[str, object] = {}
    upload: bool = False
    follow: bool = True


class RunStarted(Message):
    helper: str = "started"
    run_id: str = ""
    pid: int = 0
    release: str = ""


class AttachRequest(Message):
    app: str = ""
    run_id: str = ""
    offset: int = 0


class Attached(Message):
    helper: str = "attached"
    run_id: str = ""
    pid: int = 0
    running: bool = False


class FollowEnd(Message):
    """The last line of a followed run: after it the channel closes."""

    helper: str = "exit"
    ended: bool = False
    code: int | None = None
    offset: int = 0


class StopRequest(Message):
    app: str = ""
    run_id: str = ""


class StopReply(Message):
    ok: bool = True
    stopped: bool = False
    pid: int | None = None


class PullRequest(Message):
    app: str = ""
    run_id: str | None = None
    exclude: list[str] = []


class PullHead(Message):
    """Precedes the tar stream of the run directory."""

    run_id: str = ""
    files: int = 0
    bytes: int = 0


class RunInfo(Message):
    id: str = ""
    status: str | None = None
    summary: dict | None = None
    mtime: float = 0.0


class StatusRequest(Message):
    app: str = ""
    runs: int = 5
    marker_begin: str = ""


class StatusReply(Message):
    facts: Facts = None
    app_dir: str = ""
    current: str | None = None
    current_ok: bool = False
    releases: list[ReleaseInfo] = []
    env_sh: bool = False
    bashrc_blocks: int = 0
    runs: list[RunInfo] = []
    service: ServiceInfo | None = None  # None: no service was ever started for the app
    NESTED = {"facts": Facts, "releases": [ReleaseInfo], "runs": [RunInfo], "service": ServiceInfo}


# ---------------------------------------------------------------- the operations

#: op name -> (request class, first reply class)
OPERATIONS = {
    "facts": (FactsRequest, Facts),
    "push": (PushRequest, PushState),
    "releases": (AppRequest, ReleasesReply),
    "rollback": (RollbackRequest, RollbackReply),
    "verify": (VerifyRequest, VerifyReply),
    "run": (RunRequest, RunStarted),
    "attach": (AttachRequest, Attached),
    "stop": (StopRequest, StopReply),
    "pull": (PullRequest, PullHead),
    "status": (StatusRequest, StatusReply),
    "health": (HealthRequest, HealthReply),
    "service": (ServiceRequest, ServiceInfo),
    "collect": (CollectRequest, CollectHead),
    "logs": (LogsRequest, LogsHead),
}
