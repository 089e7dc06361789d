"""Releases on a board (host end of ``board/releases.py``): list them, switch back, check one's files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..board import protocol
from ..inventory import Inventory
from ..link.remote import call

if TYPE_CHECKING:  # the type only: paramiko is imported when a connection is made
    from ..link.ssh import Connection


def releases(inv: Inventory, conn: Connection) -> protocol.ReleasesReply:
    return call(conn, "releases", protocol.AppRequest(app=inv.app.name))


def rollback(inv: Inventory, conn: Connection, to: str | None = None) -> protocol.RollbackReply:
    return call(conn, "rollback", protocol.RollbackRequest(app=inv.app.name, to=to), app=inv.app.name)


def verify(inv: Inventory, conn: Connection, release: str | None = None) -> protocol.VerifyReply:
    return call(conn, "verify", protocol.VerifyRequest(app=inv.app.name, release=release))
