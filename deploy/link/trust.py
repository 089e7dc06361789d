"""``deploy trust BOARD``: install your SSH public key on a board that so far takes only a password.

A fresh Atlas 200 DK logs in ``HwHiAiUser`` with its factory password and has no
``authorized_keys``. This does what ``ssh-copy-id`` does, in-process and through the board's jump
hosts, over one connection verified like any other: an unknown host key is shown (type and SHA256
fingerprint) and must be confirmed before any password is asked for or sent; a changed one is
refused. The key is tried first (already installed: no password is asked); then the password, asked
once and only then. It lives in a local variable for the one ``auth_password`` call: never written
to a file, a log, argv or the environment.

The key goes in as ``ssh-copy-id`` puts it: ``~/.ssh`` 700, ``authorized_keys`` 600 (sshd's
StrictModes refuses looser ones), appended on a line of its own, only if not there yet; then a
key-only login proves it works.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import io
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConnectError, DeployError, RemoteError
from .remote import REPLY_TIMEOUT, Call, exit_status, stderr_tail
from .ssh import Connection, Endpoint, endpoint_for, paramiko

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")  # ~/.ssh/<name>.pub, the first that exists

# $1: the key's base64 blob (what "already there" is judged by), $2: the whole authorized_keys line
INSTALL = r"""umask 077
mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh" || exit 1
f="$HOME/.ssh/authorized_keys"
touch "$f" && chmod 600 "$f" || exit 1
if grep -qF "$1" "$f"; then echo present; exit 0; fi
if [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ]; then echo >> "$f"; fi
printf '%s\n' "$2" >> "$f" || exit 1
if command -v restorecon >/dev/null 2>&1; then restorecon -F "$HOME/.ssh" "$f" >/dev/null 2>&1; fi
echo added"""


@dataclass(frozen=True)
class PublicKey:
    path: Path
    line: str  # "type base64 comment", as it goes into authorized_keys
    blob: str  # the base64 part
    kind: str
    fingerprint: str

    @property
    def private(self) -> Path | None:
        """The private half next to it, if this machine has it (then a key login can be tried)."""
        p = self.path.with_suffix("") if self.path.suffix == ".pub" else None
        return p if p is not None and p.is_file() else None


@dataclass(frozen=True)
class Trusted:
    board: str
    login: str  # user@host as known_hosts names it
    key: PublicKey
    added: bool  # False: it was there already
    asked_password: bool
    host_keys: tuple[tuple[str, str], ...]  # (who, fingerprint) of host keys recorded on the way
    verified: bool  # a key-only login worked afterwards (False: the private key is not on this machine)

    def to_json(self) -> dict:
        return {"ok": True, "login": self.login, "key": str(self.key.path), "fingerprint": self.key.fingerprint,
                "added": self.added, "asked_password": self.asked_password, "verified": self.verified,
                "host_keys_recorded": [{"host": who, "fingerprint": fp} for who, fp in self.host_keys]}


def public_key(ep: Endpoint, explicit: str | None = None) -> PublicKey:
    """The key to install: ``explicit`` (a .pub, or a private key with its .pub beside it), else the
    board's own key (inventory ``key:`` or ssh_config IdentityFile), else ``~/.ssh/id_{ed25519,ecdsa,rsa}.pub``."""
    if explicit:
        p = Path(explicit).expanduser()
        candidates = [p if p.suffix == ".pub" else Path(f"{p}.pub")]
    elif ep.key:
        candidates = [Path(f"{ep.key}.pub")]
    else:
        candidates = [Path.home() / ".ssh" / f"{name}.pub" for name in DEFAULT_KEYS]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise DeployError(f"no public key to install ({', '.join(map(str, candidates))}): create one with "
                          "ssh-keygen -t ed25519, or name one with --key")
    return _read_public_key(path)


def _read_public_key(path: Path) -> PublicKey:
    try:
        words = path.read_text(encoding="utf-8").split()
        kind, blob = words[0], words[1]
        raw = base64.b64decode(blob, validate=True)
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        raise DeployError(f"{path}: not an OpenSSH public key (type base64 [comment])") from None
    fp = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return PublicKey(path, " ".join(words[:3]), blob, kind, fp)


class _KeyThenPassword(paramiko.auth_strategy.AuthStrategy):
    """The key first (if its private half is here), then the password, asked for only then."""

    def __init__(self, ep: Endpoint, key: PublicKey, password: Callable[[str], str]):
        super().__init__(ssh_config=None)
        self.ep, self.key, self.password = ep, key, password
        self.asked = False

    def get_sources(self):
        try:
            pkey = paramiko.PKey.from_path(self.key.private) if self.key.private else None
        except (paramiko.SSHException, OSError, ValueError):  # e.g. a passphrase: the password still works
            pkey = None
        if pkey is not None:
            yield paramiko.auth_strategy.InMemoryPrivateKey(self.ep.user, pkey)
        yield paramiko.auth_strategy.Password(self.ep.user, self._ask)

    def _ask(self) -> str:
        self.asked = True
        return self.password(f"{self.ep.user}@{self.ep.host_id}")

    def authenticate(self, transport):
        try:
            return super().authenticate(transport)
        except paramiko.auth_strategy.AuthFailure as exc:
            login = f"{self.ep.name}: {self.ep.user}@{self.ep.host_id}"
            kinds = [r.result for r in exc.result if isinstance(r.result, paramiko.BadAuthenticationType)]
            if kinds:
                allowed = ", ".join(kinds[0].allowed_types)
                raise ConnectError(f"{login} takes no password (it allows: {allowed}); install the key from the "
                                   "board's console") from None
            raise ConnectError(f"{login} refused the password") from None


def trust(inv, board, *, password: Callable[[str], str], key: str | None = None, accept_new: bool = False,
          confirm=None) -> Trusted:
    """Install ``key`` (see ``public_key``) in ``board``'s ``~/.ssh/authorized_keys``; ``password(login)`` is
    called at most once, after the host key was verified or confirmed (``accept_new``/``confirm`` as in
    ``ssh.Connection``) and only if the key does not already log in."""
    ep = endpoint_for(inv, board)
    pub = public_key(ep, key)
    auth = _KeyThenPassword(ep, pub, password)
    conn = Connection(ep, accept_new=accept_new, confirm=confirm, auth=auth)
    with conn:
        added = _install(conn, pub)
    verified = pub.private is not None and _key_login(ep, pub.private)
    return Trusted(board.name, f"{ep.user}@{ep.host_id}", pub, added, auth.asked, tuple(conn.accepted), verified)


def _install(conn: Connection, pub: PublicKey) -> bool:
    """Append the key to authorized_keys unless it is there; True if it was added."""
    chan = conn.channel(f"sh -c {shlex.quote(INSTALL)} deploy-trust {shlex.quote(pub.blob)} {shlex.quote(pub.line)}")
    chan.shutdown_write()
    call = Call(chan, conn.endpoint.name, "trust")  # its output bounded in size and time, as any reply
    lines = [call.readline(limit=4096) for _ in range(64)]
    out = b"".join(lines).decode("utf-8", "replace").split()
    err = stderr_tail(chan, 4096).decode("utf-8", "replace").strip()
    if exit_status(chan, REPLY_TIMEOUT) != 0 or not out or out[-1] not in ("added", "present"):
        ep = conn.endpoint
        raise RemoteError(f"{ep.name}: cannot write ~/.ssh/authorized_keys: {' '.join(err.split())[:200] or 'no reason given'}")
    return out[-1] == "added"


def _key_login(ep: Endpoint, private: Path) -> bool:
    """A login with exactly that key (no agent, no other keys), so sshd accepted what was written."""
    try:
        with Connection(replace(ep, key=private, only_key=True)) as conn:
            chan = conn.channel("true")
            if chan.recv_exit_status() == 0:
                return True
    except ConnectError as exc:
        raise ConnectError(f"{exc} after the key was installed: is the board's home group- or world-writable "
                           "(sshd StrictModes)?") from None
    raise RemoteError(f"{ep.name}: a login with the installed key could not run a command")


# ---------------------------------------------------------------- asking the person


def password_prompt(from_stdin: bool) -> Callable[[str], str]:
    """The password source: the first line of stdin (scripts), else getpass on the terminal."""

    def ask(login: str) -> str:
        if from_stdin:
            line = sys.stdin.readline()
            if not line:
                raise DeployError("--password-stdin: no password on standard input")
            return line.rstrip("\r\n")
        return getpass.getpass(f"{login}'s password: ")

    return ask


def tty_confirm(label: str, host_id: str, kind: str, fingerprint: str) -> bool:
    """Show an unknown host key and ask on the terminal (not stdin: it may carry the password).
    No terminal: False, so the key is refused with the hint to check it and pass --accept-new-host-key."""
    try:  # as getpass opens it: open("/dev/tty", "r+") fails, a terminal cannot seek
        tty = io.TextIOWrapper(io.FileIO(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY), "w+"))
    except OSError:
        return False
    with tty:
        tty.write(f"{label} ({host_id}) has host key {kind} {fingerprint}, not known here.\n"
                  "Compare it with the board's own (on its console: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub).\n"
                  "Trust it and record it in .deploy/known_hosts? [y/N] ")
        tty.flush()
        return tty.readline().strip().lower() in ("y", "yes")
