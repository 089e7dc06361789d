"""The host <-> board protocol: one request type and one reply type per board operation.

Shared by both ends: the host imports it as ``deploy.board.protocol``, the board gets it in
the code archive (see ``boot.py``). Python 3.7 + stdlib only.

On the wire every message is one JSON object per line, its fields in declaration order
(``dataclasses.asdict``); bulk bytes (tar streams) follow a message on the same channel
where an operation says so. A failure on the board is the line ``{"error": "..."}``
instead of the expected reply, and ends the operation. The first line of every operation
is the boot line (``{"boot": "ok"}``), written by the bootstrap before the operation runs.

Messages are decoded with ``decode(cls, obj)``: unknown fields are ignored (a newer board
may say more), missing fields take their defaults (an older one may say less), and nested
messages are rebuilt from the class's ``NESTED`` map, so no dict of dicts crosses a module
boundary on the host.
"""

from dataclasses import asdict, dataclass, field, fields

VERSION = 1


class Message:
    """Base of every request and reply; ``NESTED`` maps a field to its message class ([cls] for lists)."""

    NESTED = {}  # type: Dict[str, object]

    def to_json(self):
        return asdict(self)


def decode(cls, obj):
    """``obj`` (a parsed JSON object) as an instance of message class ``cls``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, not {type(obj).__name__}")
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in obj.items():
        if key not in names:
            continue
        sub = cls.NESTED.get(key)
        if sub is not None and value is not None:
            if isinstance(sub, list):
                value = [decode(sub[0], v) for v in value]
            else:
                value = decode(sub, value)
        kwargs[key] = value
    return cls(**kwargs)


# ---------------------------------------------------------------- facts


@dataclass
class ImportProbe(Message):
    """``import acl`` with env.sh sourced: whether it worked and the last line it printed."""

    ok: bool = False
    detail: list[str] = field(default_factory=list)


@dataclass
class CommandProbe(Message):
    """A board tool such as ``npu-smi info``: whether it succeeded and the tail of its output."""

    ok: bool = False
    output: str = ""


@dataclass
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
    modules: dict[str, bool] = field(default_factory=dict)
    NESTED = {"acl": ImportProbe, "npu_smi": CommandProbe}

    @property
    def python_mm(self):
        return ".".join(self.python.split(".")[:2])


@dataclass
class FactsRequest(Message):
    probe: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- releases


@dataclass
class ReleaseInfo(Message):
    id: str = ""
    current: bool = False
    created: float | None = None


@dataclass
class PushRequest(Message):
    """Phase 1 of a push: the release's manifest rows are [path, size, sha256, mode]."""

    app: str = ""
    release: str = ""
    manifest: list[list] = field(default_factory=list)
    keep: int = 5


@dataclass
class PushState(Message):
    """The board's answer to a PushRequest: what it has, what it lacks, its env.sh and ~/.bashrc."""

    facts: Facts = field(default_factory=Facts)
    current: str | None = None
    releases: list[str] = field(default_factory=list)
    exists: bool = False
    missing: list[str] = field(default_factory=list)
    env_sh: str | None = None
    bashrc: str | None = None
    debris: list[str] = field(default_factory=list)
    NESTED = {"facts": Facts}


@dataclass
class PushCommit(Message):
    """Phase 2: "commit" (then the object stream, if anything is missing) or "abort"."""

    action: str = "abort"
    env_sh: str | None = None
    bashrc: str | None = None


@dataclass
class PushDone(Message):
    ok: bool = True
    release: str = ""
    previous: str | None = None
    switched: bool = False
    received_objects: int = 0
    received_bytes: int = 0
    linked: int = 0
    pruned: list[str] = field(default_factory=list)
    bashrc_changed: bool = False
    debris_removed: list[str] = field(default_factory=list)
    aborted: bool = False


@dataclass
class AppRequest(Message):
    """Operations that need only the app's name (``releases``)."""

    app: str = ""


@dataclass
class ReleasesReply(Message):
    current: str | None = None
    releases: list[ReleaseInfo] = field(default_factory=list)
    NESTED = {"releases": [ReleaseInfo]}


@dataclass
class RollbackRequest(Message):
    app: str = ""
    to: str | None = None


@dataclass
class RollbackReply(Message):
    ok: bool = True
    previous: str | None = None
    current: str | None = None


@dataclass
class VerifyRequest(Message):
    app: str = ""
    release: str | None = None


@dataclass
class VerifyReply(Message):
    release: str = ""
    files: int = 0
    bad: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- runs


@dataclass
class RunRequest(Message):
    """Start (or resume) a run; with ``upload`` a tar stream of images follows this line."""

    app: str = ""
    run_id: str = ""
    resume: bool = False
    mode: str = "run"
    overrides: dict[str, object] = field(default_factory=dict)
    upload: bool = False
    follow: bool = True


@dataclass
class RunStarted(Message):
    helper: str = "started"
    run_id: str = ""
    pid: int = 0
    release: str = ""


@dataclass
class AttachRequest(Message):
    app: str = ""
    run_id: str = ""
    offset: int = 0


@dataclass
class Attached(Message):
    helper: str = "attached"
    run_id: str = ""
    pid: int = 0
    running: bool = False


@dataclass
class FollowEnd(Message):
    """The last line of a followed run: after it the channel closes."""

    helper: str = "exit"
    ended: bool = False
    code: int | None = None
    offset: int = 0


@dataclass
class StopRequest(Message):
    app: str = ""
    run_id: str = ""


@dataclass
class StopReply(Message):
    ok: bool = True
    stopped: bool = False
    pid: int | None = None


@dataclass
class PullRequest(Message):
    app: str = ""
    run_id: str | None = None
    exclude: list[str] = field(default_factory=list)


@dataclass
class PullHead(Message):
    """Precedes the tar stream of the run directory."""

    run_id: str = ""
    files: int = 0
    bytes: int = 0


@dataclass
class RunInfo(Message):
    id: str = ""
    status: str | None = None
    summary: dict | None = None
    mtime: float = 0.0


@dataclass
class StatusRequest(Message):
    app: str = ""
    runs: int = 5
    marker_begin: str = ""


@dataclass
class StatusReply(Message):
    facts: Facts = field(default_factory=Facts)
    app_dir: str = ""
    current: str | None = None
    current_ok: bool = False
    releases: list[ReleaseInfo] = field(default_factory=list)
    env_sh: bool = False
    bashrc_blocks: int = 0
    runs: list[RunInfo] = field(default_factory=list)
    NESTED = {"facts": Facts, "releases": [ReleaseInfo], "runs": [RunInfo]}


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
}
