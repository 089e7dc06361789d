"""Sandbox boards: real OpenSSH ``sshd`` processes on loopback that stand in for Atlas boards.

Like SQLite for a database app, a sandbox board is the embedded default: the README demo
and the tests run against it. Each board gets

* its own ``sshd`` (Debian's ``openssh-server``) on 127.0.0.1, started with ``-D`` so the
  PID we record is the listener itself, and stopped by exactly that PID;
* its own host key, recorded in the project's ``.deploy/known_hosts`` (so connections to it
  are verified like any other board's);
* its own home directory holding a stock Ubuntu ``~/.bashrc`` **with** the
  ``case $- in *i*) ;; *) return;; esac`` guard, so the non-interactive-ssh pitfall of real
  boards is reproduced, not hidden.

Run as root (CI, containers), each board is its own Unix user (``hiai-<project>-<board>``)
whose passwd home is the board's home: ``bash -c`` over ssh behaves exactly as on a board.
Run as an ordinary user, sshd can only log that user in, so the board's home is given with
``SetEnv HOME=`` (the shell's working directory is still the real home; our commands use
``$HOME`` and never rely on it). An ``arch: aarch64`` board runs its sshd and Python inside
a Debian arm64 rootfs through qemu-user (see ``emulation.py``; root only).

State lives in ``.deploy/sandbox/<board>/`` (config, host key, log, ``state.json``).
"""

from __future__ import annotations

from .boards import (
    Sandbox,
    boards,
    client_key,
    down,
    known_hosts,
    load,
    sandbox_dir,
    ssh_config_path,
    status,
    up,
)
from .host import pid_running

__all__ = ["Sandbox", "boards", "client_key", "down", "known_hosts", "load", "pid_running", "sandbox_dir",
           "ssh_config_path", "status", "up"]
