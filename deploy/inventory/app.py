"""``app:`` of the inventory: the built-in classifier's settings, or the user's own app (a tree, its command,
its requirements, its C/C++ build), as typed, frozen values checked where they are parsed."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .doc import PATH_RE, Doc, path_value

# patterns end in \Z, not $ (which matches before a final newline too): a value is exactly what its grammar says
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# env keys that change how the board runs code (shell, loader: LD_* too, Python's imports): only with app.env_unsafe
UNSAFE_ENV = frozenset({"PATH", "BASH_ENV", "ENV", "IFS", "CDPATH", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND",
                        "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT",
                        "PYTHONWARNINGS", "GCONV_PATH"})


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


DEFAULT_EXCLUDES = (".git/**", "**/.git/**", "**/__pycache__/**", "build/**")


PLACEHOLDERS = ("images", "model")


@dataclass(frozen=True)
class Build:
    """``app.build``: a C/C++ app built on the host for each board's target with CMake (seed 000)."""

    cmake: str  # the folder with CMakeLists.txt, relative to source
    artifacts: tuple[str, ...]  # what the build leaves in the tree (relative to source), checked
    dir: str = "build/intermediates/host"  # the build folder, relative to source (Huawei's samples' layout)


@dataclass(frozen=True)
class OwnApp:
    """The user's own app (``app.command`` set): a tree shipped with its layout kept, and what runs it.

    Paths inside the tree are '/'-separated and relative: ``workdir`` to ``source``, ``outputs`` to
    ``workdir`` (it may climb out of it, ``../out``, but never out of the tree)."""

    source: Path
    command: str
    workdir: str = "."
    outputs: str | None = None
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDES
    requirements: Path | None = None
    follow_links: bool = False  # symlinks inside the tree are shipped as their targets' content
    health_command: str | None = None  # app.health.command: run after the switch (roll back on failure)
    health_expect: str | None = None  # app.health.expect: a regex its output must match
    build: Build | None = None  # app.build: built on the host per target (C/C++ apps)

    @property
    def outputs_in_tree(self) -> str | None:
        """``outputs`` as a path from the tree's root (``src`` + ``../out`` = ``out``)."""
        if self.outputs is None:
            return None
        return posixpath.normpath(posixpath.join(self.workdir, self.outputs))


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
    own: OwnApp | None = None  # the user's own app (app.command); None: the built-in agent classifies

    @property
    def kind(self) -> str:
        """``command`` for the user's own app, ``agent`` for the built-in classifier."""
        return "command" if self.own is not None else "agent"


_OWN_KEYS = {"source", "include", "exclude", "workdir", "command", "outputs", "requirements", "follow_links", "build"}


_APP_KEYS = {"name", "models", "labels", "images", "preprocess", "topk", "batch", "keep_releases", "env",
             "backend_options", "health", "service", "env_unsafe"} | _OWN_KEYS


# app.backend_options (the acl backend's; seed 000's async sample: callback interval, in-flight buffers)
_ACL_OPTIONS = {"async": (bool, None), "callback_interval": (int, (1, 10000)), "buffers": (int, (1, 64)),
                "device": (int, (0, 63))}


def parse_app(doc: Doc, node: yaml.Node, base: Path) -> App:
    m = doc.mapping(node, "app")
    doc.check_keys(m, _APP_KEYS, "app")
    if "name" not in m:
        raise doc.fail(node, "app.name", "required field is missing")
    name = doc.string(m["name"][1], "app.name", NAME_RE, "use letters, digits, '.', '_' and '-'")
    if "models" not in m and "command" not in m:
        raise doc.fail(node, "app.models", "required field is missing (e.g. models: {onnx: models/net.onnx}), "
                       "unless the app is your own (app.command)")
    models = _models(doc, m["models"][1], base) if "models" in m else {}
    own = _own(doc, node, m, base, models) if "command" in m else None
    if own is None and [k for k in _OWN_KEYS if k in m]:
        k = next(k for k in _OWN_KEYS if k in m)
        raise doc.fail(m[k][0], f"app.{k}", "belongs to your own app: set app.command too")
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
        labels=path_value(doc, m["labels"][1], "app.labels", base) if "labels" in m else None,
        images=path_value(doc, m["images"][1], "app.images", base) if "images" in m else None,
        preprocess=preprocess,
        topk=doc.integer(m["topk"][1], "app.topk", 1, 1000) if "topk" in m else 5,
        batch=doc.integer(m["batch"][1], "app.batch", 1, 1024) if "batch" in m else 1,
        keep_releases=doc.integer(m["keep_releases"][1], "app.keep_releases", 1, 100) if "keep_releases" in m else 5,
        env=env,
        env_unsafe=env_unsafe,
        backend_options=_backend_options(doc, m["backend_options"][1]) if "backend_options" in m else {},
        **(_health(doc, m["health"][1], base) if "health" in m else {}),
        **({"service": _service(doc, m["service"][1])} if "service" in m else {}),
        own=own,
    )


def _env(doc: Doc, node: yaml.Node, unsafe_ok: bool) -> dict[str, str]:
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


def _models(doc: Doc, node: yaml.Node, base: Path) -> dict[str, Path]:
    models = {}
    for kind, (knode, vnode) in doc.mapping(node, "app.models").items():
        if kind not in BACKENDS:
            raise doc.fail(knode, f"app.models.{kind}", f"model kind must be one of {', '.join(BACKENDS)}")
        models[kind] = path_value(doc, vnode, f"app.models.{kind}", base)
    if not models:
        raise doc.fail(node, "app.models", "name at least one model")
    return models


def _own(doc: Doc, node: yaml.Node, m: dict, base: Path, models: dict) -> OwnApp:
    """The user's own app: ``source`` (a folder), ``include``/``exclude`` globs, ``workdir``, ``command``,
    ``outputs``, ``requirements``, ``follow_links``, and ``health: {command, expect}``."""
    if "source" not in m:
        raise doc.fail(node, "app.source", "required with app.command: the folder of your app's tree")
    source = path_value(doc, m["source"][1], "app.source", base)
    if not source.is_dir():
        raise doc.fail(m["source"][1], "app.source", f"not a folder: {source}")
    workdir = _tree_path(doc, m["workdir"][1], "app.workdir", None) if "workdir" in m else "."
    if not (source / workdir).is_dir() and "build" not in m:  # a build may make it (out/)
        raise doc.fail(m["workdir"][1], "app.workdir", f"not a folder of app.source: {workdir}")
    outputs = None
    if "outputs" in m:
        outputs = doc.string(m["outputs"][1], "app.outputs")
        _tree_path(doc, m["outputs"][1], "app.outputs", posixpath.join(workdir, outputs))
    command = doc.string(m["command"][1], "app.command")
    _check_command(doc, m["command"][1], "app.command", command, models)
    health = _own_health(doc, m, models)
    return OwnApp(
        source=source, command=command, workdir=workdir, outputs=outputs,
        include=_globs(doc, m["include"][1], "app.include") if "include" in m else ("**",),
        exclude=DEFAULT_EXCLUDES + (_globs(doc, m["exclude"][1], "app.exclude") if "exclude" in m else ()),
        requirements=_requirements(doc, m["requirements"][1], source) if "requirements" in m else None,
        follow_links=doc.boolean(m["follow_links"][1], "app.follow_links") if "follow_links" in m else False,
        build=_build(doc, m["build"][1], source) if "build" in m else None,
        **health,
    )  # fmt: skip


def _build(doc: Doc, node: yaml.Node, source: Path) -> Build:
    """app.build: ``{cmake: src, artifacts: [out/main], dir: build/intermediates/host}``."""
    bm = doc.mapping(node, "app.build")
    doc.check_keys(bm, {"cmake", "artifacts", "dir"}, "app.build")
    if "cmake" not in bm:
        raise doc.fail(node, "app.build.cmake", "required: the folder of the app's CMakeLists.txt (relative to source)")
    cmake = _tree_path(doc, bm["cmake"][1], "app.build.cmake", None)
    if not (source / cmake / "CMakeLists.txt").is_file():
        raise doc.fail(bm["cmake"][1], "app.build.cmake", f"no CMakeLists.txt in {cmake} of app.source")
    if "artifacts" not in bm:
        raise doc.fail(node, "app.build.artifacts", "required: what the build leaves in the tree (out/main)")
    artifacts = tuple(_tree_path(doc, n, f"app.build.artifacts[{i}]", None)
                      for i, n in enumerate(_list(doc, bm["artifacts"][1], "app.build.artifacts")))
    out = {"dir": _tree_path(doc, bm["dir"][1], "app.build.dir", None)} if "dir" in bm else {}
    return Build(cmake=cmake, artifacts=artifacts, **out)


def _list(doc: Doc, node: yaml.Node, where: str) -> list[yaml.Node]:
    if isinstance(node, yaml.ScalarNode):
        return [node]
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise doc.fail(node, where, "must be a path or a list of paths")
    return list(node.value)


def _tree_path(doc: Doc, node: yaml.Node, where: str, path: str | None) -> str:
    """A '/'-separated path inside the app's tree, normalised; one line when it is absolute or leaves it."""
    value = doc.string(node, where) if path is None else path
    norm = posixpath.normpath(value.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise doc.fail(node, where, f"must stay inside app.source, not {doc.string(node, where)!r}")
    return norm


def _check_command(doc: Doc, node: yaml.Node, where: str, command: str, models: dict) -> None:
    """Placeholders are {images} and {model} (``{{``/``}}`` for a brace); {model} needs app.models."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(command) if f is not None]
    except ValueError as exc:
        raise doc.fail(node, where, f"{exc} (write {{{{ and }}}} for a literal brace)") from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise doc.fail(node, where, f"unknown placeholder {{{f}}} (known: {{images}}, {{model}})")
    if "model" in fields and not models:
        raise doc.fail(node, where, "{model} needs app.models (the model variant each board runs)")


def _globs(doc: Doc, node: yaml.Node, where: str) -> tuple[str, ...]:
    if isinstance(node, yaml.ScalarNode):
        return (doc.string(node, where),)
    if not isinstance(node, yaml.SequenceNode):
        raise doc.fail(node, where, "must be a glob or a list of globs (python/common/**, **/*.py)")
    out = []
    for i, item in enumerate(node.value):
        glob = doc.string(item, f"{where}[{i}]")
        if glob.startswith("/") or ".." in glob.split("/"):
            raise doc.fail(item, f"{where}[{i}]", f"a glob is relative to app.source: {glob!r}")
        out.append(glob)
    return tuple(out)


def _requirements(doc: Doc, node: yaml.Node, source: Path) -> Path:
    rel = _tree_path(doc, node, "app.requirements", None)
    path = source / rel
    if not path.is_file():
        raise doc.fail(node, "app.requirements", f"not a file of app.source: {rel}")
    return path


def _own_health(doc: Doc, m: dict, models: dict) -> dict[str, Any]:
    """app.health.command / .expect (own apps): the command's output must match the regex."""
    if "health" not in m:
        return {}
    hm = doc.mapping(m["health"][1], "app.health")
    out: dict[str, Any] = {}
    if "command" in hm:
        out["health_command"] = doc.string(hm["command"][1], "app.health.command")
        _check_command(doc, hm["command"][1], "app.health.command", out["health_command"], models)
    if "expect" in hm:
        if "command" not in hm:
            raise doc.fail(hm["expect"][0], "app.health.expect", "goes with app.health.command")
        out["health_expect"] = doc.string(hm["expect"][1], "app.health.expect")
        try:
            re.compile(out["health_expect"])
        except re.error as exc:
            raise doc.fail(hm["expect"][1], "app.health.expect", f"not a regular expression: {exc}") from None
    return out


def _service(doc: Doc, node: yaml.Node) -> Service:
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


def _health(doc: Doc, node: yaml.Node, base: Path) -> dict[str, Any]:
    """app.health: ``{probe: images/cat.jpg, timeout: 60}`` (both optional) as App fields."""
    hm = doc.mapping(node, "app.health")
    doc.check_keys(hm, {"probe", "timeout", "command", "expect"}, "app.health")
    out: dict[str, Any] = {}
    if "probe" in hm:
        out["probe"] = path_value(doc, hm["probe"][1], "app.health.probe", base)
    if "timeout" in hm:
        out["health_timeout"] = doc.integer(hm["timeout"][1], "app.health.timeout", 1, 3600)
    return out


def _backend_options(doc: Doc, node: yaml.Node) -> dict[str, Any]:
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
