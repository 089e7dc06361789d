"""The only place that opens SSH connections to boards.

Security by default:

* Host keys are verified against the project's ``.deploy/known_hosts`` and the user's
  ``~/.ssh/known_hosts``. An unknown key is refused unless the caller passes
  ``accept_new=True`` (CLI: ``--accept-new-host-key``), which records it in the project
  file; a key that differs from a recorded one is always refused. (Fabric hard-codes
  paramiko's AutoAddPolicy; we do not.)
* Every remote command is built from ``shlex.quote``-d words; nothing user-supplied is
  pasted into a shell line unquoted.

Speed: paramiko sets no socket options, so small request/response exchanges stall on
Nagle + delayed ACK; we hand it a socket with ``TCP_NODELAY`` and keep one connection per
board for a whole operation. The channel window is raised so pulls are not window-bound.

Every command sources the app's ``env.sh`` itself: a non-interactive ``bash -c`` never
reaches exports placed after the ``case $- in *i*`` guard of a stock ``~/.bashrc``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shlex
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ConnectError, HostKeyError
from .remote import env_prefix


class _LazyInvoke:
    """Stands in for ``invoke`` inside paramiko.config until ssh_config's ``Match exec`` really needs it."""

    def __getattr__(self, name):
        import invoke

        return getattr(invoke, name)


def _import_paramiko():
    """paramiko.config imports ``invoke`` (only used for ssh_config ``Match exec``) at import time: ~40 ms
    of every command. Import paramiko with invoke hidden, then hand paramiko.config a lazy stand-in."""
    hidden = "invoke" not in sys.modules
    if hidden:
        sys.modules["invoke"] = None  # makes `import invoke` fail fast inside paramiko.config
    try:
        import paramiko
        import paramiko.config
    finally:
        if hidden and sys.modules.get("invoke", 0) is None:
            del sys.modules["invoke"]
    if paramiko.config.invoke is None:
        paramiko.config.invoke = _LazyInvoke()
    return paramiko


paramiko = _import_paramiko()
# paramiko logs a lost handshake (e.g. "Error reading SSH protocol banner") with a traceback from its
# transport thread; with no handler configured Python prints that to stderr above our one-line error
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT = 10.0
WINDOW = 16 * 1024 * 1024


class _Transport(paramiko.Transport):
    """AES-GCM first: one AES-NI pass per packet instead of AES-CTR plus a separate HMAC-SHA256.

    Every other cipher stays offered, so a server without GCM still connects.
    """

    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") + tuple(
        c for c in paramiko.Transport._preferred_ciphers if "-gcm@" not in c
    )


@dataclass(frozen=True)
class Endpoint:
    """Where a board is and how to log in; built by ``boards.endpoint`` from the inventory."""

    name: str
    host: str
    port: int
    user: str
    key: Path | None
    known_hosts: Path
    pythons: tuple[str, ...] = ("python3",)  # interpreter candidates, first found on the board wins
    only_key: bool = False  # sandbox boards: use exactly this key, never the agent or ~/.ssh keys
    sandbox: bool = False

    @property
    def host_id(self) -> str:
        """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _VerifyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown key: refuse, or record it in the project known_hosts when the user said so."""

    def __init__(self, endpoint: Endpoint, accept_new: bool):
        self.endpoint = endpoint
        self.accept_new = accept_new
        self.accepted: str | None = None

    def missing_host_key(self, client, hostname, key):
        ep = self.endpoint
        if not self.accept_new:
            raise HostKeyError(
                f"{ep.name} ({ep.host_id}): unknown host key {key.get_name()} {fingerprint(key)}; "
                "check it, then re-run with --accept-new-host-key to trust it"
            )
        ep.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(ep.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.accepted = fingerprint(key)


class Connection:
    """One SSH connection to one board, reused for every command of an operation."""

    def __init__(self, endpoint: Endpoint, *, accept_new: bool = False, timeout: float = CONNECT_TIMEOUT):
        self.endpoint = endpoint
        self.accept_new = accept_new
        self.timeout = timeout
        self.client: paramiko.SSHClient | None = None
        self._opening: threading.Thread | None = None
        self._open_error: BaseException | None = None

    def start(self) -> None:
        """Open in the background (TCP, key exchange, host-key check, auth) while the caller plans;
        the first ``channel()`` waits for it and raises whatever opening raised."""

        def opener():
            try:
                self.open()
            except BaseException as exc:  # handed to the caller's thread in _wait_open
                self._open_error = exc

        self._opening = threading.Thread(target=opener, name=f"ssh-open-{self.endpoint.name}", daemon=True)
        self._opening.start()

    def _wait_open(self) -> None:
        if self._opening is not None:
            self._opening.join()
            self._opening = None
        if self._open_error is not None:
            exc, self._open_error = self._open_error, None
            raise exc

    def __enter__(self) -> Connection:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        ep = self.endpoint
        client = paramiko.SSHClient()
        if not ep.only_key:
            try:
                client.load_system_host_keys()
            except (OSError, paramiko.SSHException):
                pass
        if ep.known_hosts.exists():
            try:
                client.load_host_keys(str(ep.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"{ep.known_hosts}: cannot read known_hosts: {exc}") from None
        policy = _VerifyPolicy(ep, self.accept_new)
        client.set_missing_host_key_policy(policy)
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=self.timeout)
        except OSError as exc:
            hint = f" (sandbox board: is it up? deploy sandbox up {ep.name})" if ep.sandbox else ""
            raise ConnectError(f"{ep.name}: cannot reach {ep.host}:{ep.port}: {exc.strerror or exc}{hint}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(
                ep.host,
                port=ep.port,
                username=ep.user,
                key_filename=str(ep.key) if ep.key else None,
                look_for_keys=not ep.only_key,
                allow_agent=not ep.only_key,
                sock=sock,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                transport_factory=_Transport,
            )
        except HostKeyError:
            sock.close()
            raise
        except paramiko.BadHostKeyException as exc:
            sock.close()
            raise HostKeyError(
                f"{ep.name} ({ep.host_id}): host key {fingerprint(exc.key)} does NOT match the one in known_hosts "
                f"({fingerprint(exc.expected_key)}); refusing to connect. If the board was reinstalled, remove "
                f"the old key with: ssh-keygen -R '{ep.host_id}' -f {ep.known_hosts}"
            ) from None
        except paramiko.AuthenticationException:
            sock.close()
            how = f"key {ep.key}" if ep.key else "your SSH keys/agent"
            raise ConnectError(f"{ep.name}: {ep.user}@{ep.host_id} refused {how} (install it with ssh-copy-id)") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            sock.close()
            raise ConnectError(f"{ep.name}: SSH to {ep.host_id} failed: {exc}") from None
        transport = client.get_transport()
        transport.default_window_size = WINDOW
        transport.set_keepalive(15)
        self.client = client

    def close(self) -> None:
        if self._opening is not None:
            self._opening.join()
            self._opening = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def channel(self, command: str) -> paramiko.Channel:
        """A session channel running ``command`` (opening the connection first if needed)."""
        self._wait_open()
        if self.client is None:
            self.open()
        chan = self.client.get_transport().open_session(window_size=WINDOW)
        chan.exec_command(command)
        return chan


def user_command(app: str, argv: list[str]) -> str:
    """``deploy exec``: run argv in the current release directory with env.sh sourced."""
    cur = f'"$HOME"/HIAI_PROJECTS/{shlex.quote(app)}/current'
    words = " ".join(shlex.quote(a) for a in argv)
    return env_prefix(app) + f"{{ cd {cur} 2>/dev/null || true; }} && {words}"


def _ssh_config(path: Path, name: str) -> dict:
    """``name``'s settings in an OpenSSH config file ({} when the file or the entry is missing)."""
    if not path.exists():
        return {}
    try:
        cfg = paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.SSHException, ValueError):
        return {}
    if name not in cfg.get_hostnames():
        return {}
    return cfg.lookup(name)


def _pythons(board) -> tuple[str, ...]:
    """The interpreter to run board code with: the inventory's ``python:``, else the target's candidates."""
    from .targets import get as get_target

    return (board.python,) if board.python else get_target(board.target).pythons


def endpoint_for(inv, board) -> Endpoint:
    """How to reach ``board``: the project's sandbox ssh_config for sandbox boards, else inventory + ``~/.ssh/config``.

    Sandbox boards are found through ``.deploy/sandbox/ssh_config``, which ``deploy sandbox up``
    writes, so the core never imports the sandbox tooling. paramiko only parses ssh_config (it
    never applies it), so HostName, User, Port and IdentityFile are applied here; inventory
    values win over ssh_config.
    """
    kh = inv.state_dir / "known_hosts"
    if board.sandbox:
        cfg = _ssh_config(inv.state_dir / "sandbox" / "ssh_config", board.name)
        if not cfg.get("port"):
            raise ConnectError(f"sandbox board {board.name} is not running (unreachable): deploy sandbox up {board.name}")
        return Endpoint(board.name, cfg["hostname"], int(cfg["port"]), cfg["user"], Path(cfg["identityfile"][0]), kh,
                        pythons=_pythons(board), only_key=True, sandbox=True)
    host, user, port, key = board.host, board.user, board.port, board.key
    cfg = _ssh_config(Path.home() / ".ssh" / "config", board.host)
    host = cfg.get("hostname", host)
    user = user or cfg.get("user")
    if board.port == 22 and "port" in cfg:
        port = int(cfg["port"])
    if key is None and cfg.get("identityfile"):
        key = Path(cfg["identityfile"][0]).expanduser()
    import getpass

    return Endpoint(board.name, host, port, user or getpass.getuser(), key, kh, pythons=_pythons(board))
