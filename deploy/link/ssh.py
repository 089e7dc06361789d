"""The only place that opens SSH connections to boards, directly or through jump hosts.

Security by default, on the board AND on every jump host in front of it:

* Host keys are verified against the project's ``.deploy/known_hosts`` and the user's
  ``~/.ssh/known_hosts``. An unknown key is refused unless the caller passes
  ``accept_new=True`` (CLI: ``--accept-new-host-key``) or a ``confirm`` callback says yes
  (``deploy trust``), which records it in the project file; a key that differs from a
  recorded one is always refused. Fabric builds every gateway hop with paramiko's
  ``AutoAddPolicy``; here each hop is an ``SSHClient`` of our own with our policy.
* Every remote command is built from ``shlex.quote``-d words; nothing user-supplied is
  pasted into a shell line unquoted.

Routes follow OpenSSH: ``~/.ssh/config`` (then ``/etc/ssh/ssh_config``) gives HostName, User,
Port, IdentityFile, ConnectTimeout, HostKeyAlias and ProxyJump (``a,b``: a first; each hop
resolved through the same files) or ProxyCommand; the inventory's ``user:``/``port:``/``key:``
win over them, and its ``jump:`` replaces the route. A hop is a ``direct-tcpip`` channel on
the previous hop's transport; ConnectTimeout bounds every step of it (pyinfra #971 hung on that).

Speed: paramiko sets no socket options, so small request/response exchanges stall on
Nagle + delayed ACK; we hand it a socket with ``TCP_NODELAY`` (on the first hop: the rest ride
on its channels) and keep one connection per board for a whole operation. The channel window is
raised so pulls are not window-bound, on jump channels too.

Every command sources the app's ``env.sh`` itself: a non-interactive ``bash -c`` never
reaches exports placed after the ``case $- in *i*`` guard of a stock ``~/.bashrc``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import io
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConnectError, DeployError, HostKeyError, InventoryError
from ..inventory import Jump
from ..targets import pythons_for


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

    def _parse_global_request(self, m):
        """Answer the server's post-auth global request (OpenSSH: ``hostkeys-00@openssh.com``) with an
        SSH ignore packet at once.

        sshd sets no ``TCP_NODELAY`` on a session without a pty, so Nagle holds its next small write
        (the reply to our first channel open) until that request is ACKed, and our kernel delays the
        ACK: 40 ms on the first command of every connection, once more per jump host. The ignore
        packet carries the ACK; through a jump host the hop's sshd writes it on to the board, so it
        acknowledges there too, which no socket option on our side could.
        """
        super()._parse_global_request(m)
        if not self.server_mode and self.is_authenticated():
            ignore = paramiko.Message()
            ignore.add_byte(paramiko.common.cMSG_IGNORE)
            ignore.add_string(b"")
            self._send_message(ignore)


class _QuickAckSocket:
    """A TCP socket that ACKs every segment at once (Linux ``TCP_QUICKACK``, re-armed before each read:
    the kernel drops it by itself).

    sshd writes with Nagle on (no pty, no ``TCP_NODELAY``), so after one small write it holds the
    next until we ACK, and a delayed ACK costs 40 ms: through a jump host on most exchanges (its
    sshd forwards the board's replies in several small writes), directly on the first channel.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def recv(self, n: int) -> bytes:
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return self._sock.recv(n)

    def __getattr__(self, name):
        return getattr(self._sock, name)


@dataclass(frozen=True)
class Endpoint:
    """Where a board (or a jump host) is, how to log in, and the route there; built by ``endpoint_for``."""

    name: str
    host: str
    port: int
    user: str
    key: Path | None
    known_hosts: Path
    pythons: tuple[str, ...] = ("python3",)  # interpreter candidates, first found on the board wins
    only_key: bool = False  # sandbox boards: use exactly this key, never the agent or ~/.ssh keys
    sandbox: bool = False
    jump: Endpoint | None = None  # reach host:port through this SSH host (ProxyJump, inventory jump:)
    proxy_command: str | None = None  # or through this command's stdin/stdout (ProxyCommand, tokens expanded)
    timeout: float | None = None  # ConnectTimeout from ssh_config; None: the Connection's
    host_key_alias: str | None = None  # HostKeyAlias: the name known_hosts uses instead of host/port
    board: bool = True  # an inventory board (deploy trust can install a key on it), not just an SSH host

    @property
    def host_id(self) -> str:
        """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise (or HostKeyAlias)."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def route(self) -> str:
        """How this endpoint is reached, for people: ``board2 via board1 via lab-pc``."""
        via = self.jump.route if self.jump else (f"ProxyCommand {self.proxy_command}" if self.proxy_command else "")
        return f"{self.name} via {via}" if via else self.name


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# confirm(label, host_id, key type, fingerprint) -> trust this unknown host key?
Confirm = Callable[[str, str, str, str], bool]


class _VerifyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown key: refuse, or record it in the project known_hosts when the user said so (flag or prompt).

    One instance per hop, so the refusal names the hop (``board2: jump host board1``), not only the board.
    """

    def __init__(self, endpoint: Endpoint, accept_new: bool, label: str = "", confirm: Confirm | None = None):
        self.endpoint = endpoint
        self.accept_new = accept_new
        self.label = label or endpoint.name
        self.confirm = confirm
        self.accepted: str | None = None

    def missing_host_key(self, client, hostname, key):
        ep = self.endpoint
        fp = fingerprint(key)
        if not (self.accept_new or (self.confirm and self.confirm(self.label, ep.host_id, key.get_name(), fp))):
            raise HostKeyError(
                f"{self.label} ({ep.host_id}): unknown host key {key.get_name()} {fp}; "
                "check it, then re-run with --accept-new-host-key to trust it"
            )
        ep.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(ep.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.accepted = fp


class Connection:
    """One SSH connection to one board, reused for every command of an operation.

    Through jump hosts it is a chain of SSH connections, each verified like the board's; ``close``
    ends them all. ``auth`` (a paramiko ``AuthStrategy``) replaces key authentication on the board
    itself (``deploy trust``: its key, then a password); ``accepted`` lists the host keys recorded.
    """

    def __init__(self, endpoint: Endpoint, *, accept_new: bool = False, timeout: float = CONNECT_TIMEOUT,
                 confirm: Confirm | None = None, auth=None):
        self.endpoint = endpoint
        self.accept_new = accept_new
        self.timeout = timeout
        self.confirm = confirm
        self.auth = auth
        self.client: paramiko.SSHClient | None = None
        self.accepted: list[tuple[str, str]] = []  # (who, fingerprint) of host keys recorded by this connection
        self._hops: list[paramiko.SSHClient] = []  # jump-host clients, outermost first
        self._opening: threading.Thread | None = None
        self._open_error: BaseException | None = None
        self.on_open: Callable[[], None] | None = None  # called once the connection is up (warm.py: keep it warm)

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
        try:
            self.client = self._login(self.endpoint, self.endpoint.name, self.auth)
        except BaseException:
            self._close_clients()
            raise
        if self.on_open is not None:
            self.on_open()

    def _login(self, ep: Endpoint, label: str, auth=None) -> paramiko.SSHClient:
        """An authenticated client for ``ep`` (its route opened first), verified with our policy."""
        client = paramiko.SSHClient()
        if not ep.sandbox:
            try:
                client.load_system_host_keys()
            except (OSError, paramiko.SSHException):
                pass
        if ep.known_hosts.exists():
            try:
                client.load_host_keys(str(ep.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"{ep.known_hosts}: cannot read known_hosts: {exc}") from None
        policy = _VerifyPolicy(ep, self.accept_new, label, self.confirm)
        client.set_missing_host_key_policy(policy)
        sock = self._dial(ep, label)
        try:
            self._handshake(client, ep, label, sock, auth)
        finally:
            if policy.accepted:
                self.accepted.append((label, policy.accepted))
        transport = client.get_transport()
        transport.default_window_size = WINDOW
        transport.set_keepalive(15)
        return client

    def _dial(self, ep: Endpoint, label: str):
        """The byte stream to ``ep``'s sshd: a channel through its jump host, a ProxyCommand, or TCP."""
        timeout = ep.timeout or self.timeout
        if ep.jump is not None:
            hop = self._login(ep.jump, f"{label}: jump host {ep.jump.name}")
            self._hops.append(hop)
            try:
                return hop.get_transport().open_channel("direct-tcpip", (ep.host, ep.port), ("", 0),
                                                        window_size=WINDOW, timeout=timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ConnectError(f"{label}: jump host {ep.jump.name} cannot reach {ep.host}:{ep.port}: "
                                   f"{_reason(exc)}") from None
        if ep.proxy_command:
            try:
                sock = paramiko.ProxyCommand(ep.proxy_command)
            except (paramiko.SSHException, OSError, ValueError) as exc:
                raise ConnectError(f"{label}: ProxyCommand {ep.proxy_command!r} failed: {_reason(exc)}") from None
            sock.settimeout(timeout)
            return sock
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
        except OSError as exc:
            hint = f" (sandbox board: is it up? deploy sandbox up {ep.name})" if ep.sandbox else ""
            raise ConnectError(f"{label}: cannot reach {ep.host}:{ep.port}: {exc.strerror or exc}{hint}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _QuickAckSocket(sock) if hasattr(socket, "TCP_QUICKACK") else sock

    def _handshake(self, client: paramiko.SSHClient, ep: Endpoint, label: str, sock, auth) -> None:
        """Key exchange, host-key check and authentication over ``sock``; failures as one-line errors."""
        timeout = ep.timeout or self.timeout
        # with a sock given, connect() uses hostname/port only to name the host key (HostKeyAlias: port 22)
        name, port = (ep.host_key_alias, 22) if ep.host_key_alias else (ep.host, ep.port)
        try:
            client.connect(name, port=port, username=ep.user, key_filename=str(ep.key) if ep.key else None,
                           look_for_keys=not ep.only_key, allow_agent=not ep.only_key, sock=sock, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, transport_factory=_Transport,
                           auth_strategy=auth)
        except DeployError:  # our host-key policy said no, or an auth strategy explained its refusal
            sock.close()
            raise
        except paramiko.BadHostKeyException as exc:
            sock.close()
            raise HostKeyError(
                f"{label} ({ep.host_id}): host key {fingerprint(exc.key)} does NOT match the one in known_hosts "
                f"({fingerprint(exc.expected_key)}); refusing to connect. If the board was reinstalled, remove "
                f"the old key with: ssh-keygen -R '{ep.host_id}' -f {ep.known_hosts}"
            ) from None
        except paramiko.AuthenticationException:
            sock.close()
            how = f"key {ep.key}" if ep.key else "your SSH keys/agent"
            fix = f"deploy trust {ep.name}" if ep.board and not ep.sandbox else f"ssh-copy-id {ep.user}@{ep.host}"
            raise ConnectError(f"{label}: {ep.user}@{ep.host_id} refused {how} (install your key with: {fix})") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            sock.close()
            via = f" via ProxyCommand {ep.proxy_command!r}" if ep.proxy_command else ""
            raise ConnectError(f"{label}: SSH to {ep.host_id}{via} failed: {_reason(exc)}") from None

    def _close_clients(self) -> None:
        """The board's client first, then its jump hosts from the innermost out."""
        for client in [self.client, *reversed(self._hops)]:
            if client is not None:
                client.close()
        self.client = None
        self._hops = []

    def close(self) -> None:
        if self._opening is not None:
            self._opening.join()
            self._opening = None
        self._close_clients()

    def channel(self, command: str) -> paramiko.Channel:
        """A session channel running ``command`` (opening the connection first if needed)."""
        self._wait_open()
        if self.client is None:
            self.open()
        chan = self.client.get_transport().open_session(window_size=WINDOW, timeout=self.timeout)
        chan.exec_command(command)
        return chan


def _reason(exc: BaseException) -> str:
    """An exception as a few words: paramiko's ChannelException carries the server's reason text."""
    text = getattr(exc, "text", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


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


MAX_HOPS = 8  # a longer ProxyJump chain is a loop in ssh_config (OpenSSH would spawn ssh processes forever)


def _user_config_files() -> list[Path]:
    """OpenSSH's order: the user's file, then the system's; for each setting the first value found wins."""
    return [Path.home() / ".ssh" / "config", Path("/etc/ssh/ssh_config")]


class _GivenFirst(paramiko.SSHConfig):
    """ssh_config with values found before any file is read, as ``ssh -l USER -p PORT`` gives them: they win
    ("the first value obtained is used"), ``Match user`` sees them, and tokens (%r, %p) expand to them.

    paramiko's lookup starts each pass from an empty ``SSHConfigDict``; this one starts from ``given``."""

    def __init__(self, given: dict[str, str]):
        super().__init__()
        self.given = given

    def _lookup(self, hostname, options=None, canonical=False, final=False):
        if options is None:
            options = paramiko.SSHConfigDict(self.given)
        return super()._lookup(hostname, options, canonical, final)


class _Resolver:
    """Turns inventory boards and jump specs into Endpoints: sandbox ssh_config, ~/.ssh/config, jump:."""

    def __init__(self, inv):
        self.inv = inv
        self.known_hosts = inv.state_dir / "known_hosts"
        self._texts: list[tuple[Path, str]] | None = None

    def board(self, board, via: tuple[str, ...] = ()) -> Endpoint:
        """``board``'s endpoint; ``via``: the boards whose route leads here (a loop check, as at load)."""
        if board.name in via:
            raise InventoryError(f"{self.inv.path}: jump hosts loop back to {board.name} ({' -> '.join([*via, board.name])})")
        own_route = board.jump is None  # an inventory jump: (or jump: none) replaces ssh_config's route
        if board.sandbox:
            ep = self._sandbox(board)
        else:
            ep = self.host(board.host, name=board.name, user=board.user, port=board.port if board.port != 22 else None,
                           key=board.key, route=own_route)
        ep = replace(ep, pythons=pythons_for(board))
        if not own_route:
            jump = None if board.jump == "none" else self.jump(board.jump, (*via, board.name))
            ep = replace(ep, jump=jump, proxy_command=None)
        return ep

    def jump(self, spec: str, via: tuple[str, ...]) -> Endpoint:
        """A jump host: another board of the inventory by name, else ``[user@]host[:port]``."""
        if spec in self.inv.boards:
            try:
                return self.board(self.inv.boards[spec], via)
            except (ConnectError, InventoryError) as exc:  # e.g. a sandbox jump board that is not up
                inner = str(exc).removeprefix(f"{spec}: ")  # its own jump host: board3: jump host board2: jump host board1
                raise type(exc)(f"{via[-1]}: jump host {spec}: {inner}") from None
        hop = Jump.parse(spec)
        if hop is None:
            raise InventoryError(f"{self.inv.path}: jump: not a board nor [user@]host[:port]: {spec!r}")
        return self.host(hop.host, name=spec, user=hop.user, port=hop.port, board=False, seen=via)

    def _sandbox(self, board) -> Endpoint:
        """A sandbox board from ``.deploy/sandbox/ssh_config``, which ``deploy sandbox up`` writes (so the core
        never imports the sandbox tooling)."""
        cfg = _ssh_config(self.inv.state_dir / "sandbox" / "ssh_config", board.name)
        if not cfg.get("port"):
            raise ConnectError(f"sandbox board {board.name} is not running (unreachable): deploy sandbox up {board.name}")
        return Endpoint(board.name, cfg["hostname"], int(cfg["port"]), cfg["user"], Path(cfg["identityfile"][0]),
                        self.known_hosts, only_key=True, sandbox=True)

    def host(self, alias: str, *, name: str, user: str | None = None, port: int | None = None,
             key: Path | None = None, route: bool = True, board: bool = True, seen: tuple[str, ...] = ()) -> Endpoint:
        """``alias`` as OpenSSH would reach it: the given user/port first (like ``ssh -l/-p``), then
        ~/.ssh/config and /etc/ssh/ssh_config; with ``route``, their ProxyJump or ProxyCommand too."""
        cfg = self._lookup(alias, user, port)
        keys = [Path(k).expanduser() for k in cfg.get("identityfile", [])]
        ep = Endpoint(
            name, cfg["hostname"], int(cfg.get("port", 22)), cfg.get("user") or getpass.getuser(),
            key or next((k for k in keys if k.exists()), None), self.known_hosts,
            timeout=float(cfg["connecttimeout"]) if cfg.get("connecttimeout") else None,
            host_key_alias=cfg.get("hostkeyalias"), board=board,
        )  # fmt: skip
        jumps = cfg.get("proxyjump", "none") if route else "none"
        command = cfg.get("proxycommand", "none") if route else "none"
        if jumps.lower() != "none":
            return replace(ep, jump=self._proxy_jump(alias, jumps, (*seen, alias)))
        if command.lower() != "none":
            return replace(ep, proxy_command=command)
        return ep

    def _proxy_jump(self, alias: str, jumps: str, seen: tuple[str, ...]) -> Endpoint | None:
        """ProxyJump ``a,b``: a first (by its own config, its own route included), then b through a.

        A hop naming the host being resolved is skipped, as Fabric does: ``Host *`` + ``ProxyJump
        bastion`` would otherwise route the bastion through itself. Any longer loop is an error.
        """
        hop: Endpoint | None = None
        for spec in [s.strip() for s in jumps.split(",") if s.strip()]:
            parsed = Jump.parse(spec.removeprefix("ssh://"))
            if parsed is None:
                raise InventoryError(f"{self._where()}: Host {alias}: ProxyJump: not [user@]host[:port]: {spec!r}")
            if parsed.host == alias:
                return None
            if parsed.host in seen or len(seen) > MAX_HOPS:
                raise InventoryError(f"{self._where()}: ProxyJump loops: {' -> '.join([*seen, parsed.host])}")
            ep = self.host(parsed.host, name=spec, user=parsed.user, port=parsed.port, route=hop is None,
                           board=False, seen=seen)
            hop = ep if hop is None else replace(ep, jump=hop)
        return hop

    def _lookup(self, alias: str, user: str | None, port: int | None) -> dict:
        """ssh_config's settings for ``alias``, with ``user``/``port`` given first so that they win and
        ProxyCommand's %r/%p tokens expand to them. They are given as values (``_GivenFirst``), never written
        into config text, so no inventory value can add a line to the configuration."""
        cfg = _GivenFirst({k: str(v) for k, v in (("user", user), ("port", port)) if v})
        for path, text in self._files():
            try:
                cfg.parse(io.StringIO(text))
            except (paramiko.SSHException, ValueError) as exc:
                raise InventoryError(f"{path}: cannot parse: {exc}") from None
        try:
            return cfg.lookup(alias)
        except (paramiko.SSHException, ValueError, OSError) as exc:
            raise InventoryError(f"{self._where()}: Host {alias}: {exc}") from None

    def _files(self) -> list[tuple[Path, str]]:
        if self._texts is None:
            self._texts = []
            for path in _user_config_files():
                try:
                    self._texts.append((path, path.read_text(encoding="utf-8", errors="replace")))
                except OSError:
                    continue
        return self._texts

    def _where(self) -> str:
        return " or ".join(str(p) for p, _ in self._files()) or "ssh_config"


def endpoint_for(inv, board) -> Endpoint:
    """How to reach ``board``: where its sshd is, who to log in as, with which key, and through what.

    Sandbox boards are found through ``.deploy/sandbox/ssh_config``; other boards through the
    inventory and ``~/.ssh/config`` (paramiko only parses ssh_config, it never applies it, so
    HostName, User, Port, IdentityFile, ConnectTimeout, HostKeyAlias, ProxyJump and ProxyCommand
    are applied here). Inventory values win over ssh_config; ``jump:`` (another board, itself
    possibly a sandbox board or behind its own jump, or ``[user@]host[:port]``) replaces its route.
    """
    return _Resolver(inv).board(board)
