"""User-facing failures. The CLI prints ``str(exc)`` as one line and exits with ``exc.exit_code``.

Every module raises its own subclass so callers (and tests) can tell failures apart;
none of them is ever shown with a traceback.
"""


class DeployError(Exception):
    """Base of every failure the user caused or must act on."""

    exit_code = 1


class InventoryError(DeployError):
    """inventory.yaml is missing or malformed; the message names file, line and field."""

    exit_code = 2


class HostKeyError(DeployError):
    """A board's host key is unknown (and not accepted) or does not match known_hosts."""

    exit_code = 3


class ConnectError(DeployError):
    """A board cannot be reached or refuses authentication."""

    exit_code = 4


class SandboxError(DeployError):
    """A sandbox board cannot be started, found or stopped."""


class BuildError(DeployError):
    """A release bundle cannot be built for a board's target (e.g. a wheel is missing)."""


class PushError(DeployError):
    """A push failed; the previous release is still current."""


class RemoteError(DeployError):
    """A command on the board failed."""


class RunError(DeployError):
    """An agent run could not be started, followed or pulled."""
