"""User-facing failures. The CLI prints ``str(exc)`` as one line and exits with ``exc.exit_code``.

Every module raises its own subclass so callers (and tests) can tell failures apart;
none of them is ever shown with a traceback. The whole tree lives here, so a module's
failures are ``DeployError``s even when it is imported on its own (the sandbox and model
tools re-export theirs under their old names). Exit code 1 unless noted::

    DeployError
    ├── InventoryError (2)
    ├── UsageError (2)
    ├── HostKeyError (3)
    ├── ConnectError (4)
    ├── SandboxError
    │   └── EmulationError
    ├── BuildError, PushError, RemoteError, RunError, ServiceError
    │                └── HealthCheckFailed
    └── ModelError
        └── ConversionError
            ├── ModelSpecError (2)
            ├── AtcNotFound (3)
            └── AtcError
"""

from __future__ import annotations

from collections.abc import Sequence


class DeployError(Exception):
    """Base of every failure the user caused or must act on."""

    exit_code = 1


class InventoryError(DeployError):
    """inventory.yaml is missing or malformed; the message names file, line and field."""

    exit_code = 2


class UsageError(DeployError):
    """A command line that cannot be carried out (a --batch 0, an empty selection); nothing was touched."""

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


class RolloutHeld(PushError):
    """A later rollout stage's push was not switched because an earlier stage failed (its release, staged
    beside the current one, was removed on the board): the previous release is still current."""


class HealthCheckFailed(PushError):
    """A pushed release failed its health check on a board, which has switched back by itself; ``result``
    is the verdict (a ``deploy.ops.health.HealthResult``) when the board gave one."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class RemoteError(DeployError):
    """A command on the board failed."""


class RunError(DeployError):
    """An agent run could not be started, followed or pulled."""


class ServiceError(DeployError):
    """The agent's service could not be started, stopped, moved or collected from (``deploy service``, ``collect``)."""


class EmulationError(SandboxError):
    """The emulated aarch64 runtime (qemu-user rootfs) cannot be set up or used; the message is one line."""


class ModelError(DeployError):
    """A model cannot be exported or the demo cannot be built; the message is one line."""


class ConversionError(ModelError):
    """A model cannot be converted to an ``.om`` with ``atc``; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ModelSpecError(ConversionError):
    """The model spec cannot become a valid atc command (bad extension, missing weight, bad shape...)."""

    exit_code = 2


class AtcNotFound(ConversionError):
    """``atc`` is not on PATH. Carries the command so the caller can print it for a CANN machine.

    Exit code 3, not 0: no ``.om`` was produced, so it must not look like success to a script.
    """

    exit_code = 3

    def __init__(self, command: str):
        super().__init__(
            "atc is not on PATH: converting needs the CANN toolkit "
            "(source ~/Ascend/ascend-toolkit/set_env.sh); the command was not run"
        )
        self.command = command


class AtcError(ConversionError):
    """``atc`` ran and failed (or claimed success without writing the .om). ``tail`` holds its last lines."""

    exit_code = 1

    def __init__(self, message: str, tail: Sequence[str] = ()):
        super().__init__(message)
        self.tail = list(tail)


class MagicMindSdkMissing(ConversionError):
    """No MagicMind SDK here to build a model for a Cambricon target. Carries the build command (seed 003's
    gen_model.py line) so the caller can print it. Exit code 3: nothing was built."""

    exit_code = 3

    def __init__(self, command: str):
        super().__init__("no MagicMind SDK on this machine: the build command was not run")
        self.command = command


class MagicMindBuildError(ConversionError):
    """The (simulated) MagicMind build failed or wrote nothing; the message has the builder's reason."""

    exit_code = 1
