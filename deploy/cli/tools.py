"""``deploy sandbox | model | trust`` and the model a sandbox board needs built before a push.

The only module of the command face that imports the tools (``deploy/sandbox``, ``deploy/models``):
a user with real boards and ready models loads none of them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DeployError
from . import ui
from .boards import inventory


def toolchain_for(inv, board, progress=None):
    """How ``board``'s C/C++ app is built here (``release/cbuild.Toolchain``). A sandbox aarch64 board: Debian's
    cross compilers against the emulated board's rootfs (its glibc and libstdc++ first: sandbox/sysroot.py); an
    x86_64 one: this host's compilers; a simulated Ascend board: the simulated AscendCL headers and stub as its
    DDK. A real board: the cross compilers and its ``ddk:`` (or ``DDK_PATH``), checked for the board's arch."""
    import platform
    import shutil

    from ..errors import BuildError
    from ..release import cbuild
    from ..targets import for_board

    target = for_board(board)
    arch = board.arch if board.sandbox else target.arch
    native = platform.machine() == arch
    cxx = "g++" if native else f"{arch}-linux-gnu-g++"
    if shutil.which(cxx) is None:
        package = "g++" if native else f"g++-{arch.replace('_', '-')}-linux-gnu"
        raise BuildError(f"{board.name}: building for {arch} needs {cxx}: apt-get install {package}")
    version = subprocess_line([cxx, "-dumpfullversion"])
    rootfs = _sysroot(board, arch, native, progress)
    toolchain_file = _toolchain_file(inv, arch, rootfs) if not native else None
    ddk = _ddk(inv, board, target, arch, rootfs)
    libs = _library_dirs(arch, rootfs, native)
    board_libs = tuple(p.name for p in (ddk / "runtime" / "lib64" / "stub").glob("*.so*")) if ddk else ()
    return cbuild.Toolchain(
        arch=arch, cmake_toolchain=toolchain_file, ddk=ddk, library_dirs=libs, board_libs=board_libs,
        identity=f"{cxx} {version} sysroot={rootfs or '-'} ddk={_ddk_identity(ddk)}",
        describe=f"{cxx} {version}" + (f" with the emulated board's rootfs {rootfs} as sysroot" if rootfs else ""),
    )  # fmt: skip


def subprocess_line(argv: list[str]) -> str:
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


def _sysroot(board, arch: str, native: bool, progress):
    """The emulated board's rootfs for a sandbox aarch64 board built from an x86_64 host, else None."""
    if native or not board.sandbox:
        return None
    from ..sandbox import emulation

    return emulation.ensure_rootfs(progress=progress)


def _toolchain_file(inv, arch: str, rootfs):
    from ..sandbox import sysroot

    dest = inv.state_dir / "toolchains" / f"{arch}-{'sandbox' if rootfs else 'cross'}.cmake"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if rootfs is not None:
        return sysroot.cmake_toolchain(rootfs, dest)
    dest.write_text(f"set(CMAKE_SYSTEM_NAME Linux)\nset(CMAKE_SYSTEM_PROCESSOR {arch})\n"
                    f"set(CMAKE_C_COMPILER {arch}-linux-gnu-gcc)\nset(CMAKE_CXX_COMPILER {arch}-linux-gnu-g++)\n")
    return dest


def _library_dirs(arch: str, rootfs, native: bool) -> tuple:
    triplet = f"{arch}-linux-gnu"
    if rootfs is not None:
        root = Path(rootfs)
    elif native:
        root = Path("/")
    else:
        return (Path(f"/usr/{triplet}/lib"),)  # a real board: the cross toolchain's idea of it
    return tuple(root / d for d in (f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib", "lib64"))


def _ddk(inv, board, target, arch: str, rootfs):
    """The DDK a board's C++ app builds against: the simulated one for a sandbox Ascend board, else
    ``boards.X.ddk`` or ``DDK_PATH`` (checked: a toolkit folder for the board's arch)."""
    import os

    from ..errors import BuildError
    from ..release.cbuild import elf_arch

    if board.sandbox and target.backend == "acl":
        from ..sandbox import capi

        built = capi.build(arch, rootfs)
        ddk = inv.state_dir / "ddk" / arch
        (ddk).mkdir(parents=True, exist_ok=True)
        link = ddk / "runtime"
        if not link.is_symlink() or link.resolve() != built.resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(built)
        return ddk
    given = board.ddk or (Path(os.environ["DDK_PATH"]).expanduser() if os.environ.get("DDK_PATH") else None)
    if given is None:
        return None
    stub = given / "runtime" / "lib64" / "stub" / "libascendcl.so"
    if not stub.is_file():
        raise BuildError(f"{board.name}: ddk {given} has no runtime/lib64/stub/libascendcl.so: not a CANN toolkit's "
                         f"{'arm64-linux' if arch == 'aarch64' else arch + '-linux'} folder")
    found = elf_arch(stub)
    if found != arch:
        raise BuildError(f"{board.name}: ddk {given} is the {found} toolkit; the board is {arch}: use the toolkit's "
                         f"{'arm64-linux' if arch == 'aarch64' else arch + '-linux'} folder")
    return given


def _ddk_identity(ddk) -> str:
    import hashlib

    if ddk is None:
        return "-"
    stub = ddk / "runtime" / "lib64" / "stub" / "libascendcl.so"
    return hashlib.sha256(stub.read_bytes()).hexdigest()[:16] if stub.is_file() else str(ddk)


def build_app(inv, board, cache, progress=None):
    """The board's build of an own app with ``app.build`` (cached), or None for other apps."""
    from ..release import cbuild

    own = inv.app.own
    if own is None or own.build is None:
        return None
    return cbuild.build(own, toolchain_for(inv, board, progress), cache, inv.state_dir, board.name, progress)


def prepare_model(inv, board) -> None:
    """Build what ``board``'s release needs that the inventory does not name: a sandbox Atlas (or MLU)
    board's simulated model of ``app.models.onnx``, built once and cached (``models/simulated.py``)."""
    from ..models.simulated import prepare_model as build
    from ..targets import for_board

    if inv.app.own is not None and not inv.app.models:
        return  # an own app without app.models ships its model in its own tree
    build(inv.app, for_board(board), board, inv.state_dir)


# ---------------------------------------------------------------- sandbox


def cmd_sandbox(args) -> int:
    from .. import sandbox

    inv = inventory(args)
    if args.action == "up":
        with ui.status("starting sandbox boards") as status:
            boxes = sandbox.up(inv, args.names or None, log=lambda line: status.update(ui.escape(line[-100:])))
        if args.json:
            ui.emit_json([b.to_json() for b in boxes])
        else:
            for b in boxes:
                ui.out().print(f"[green]up[/] {b.name}: {b.user}@{b.host}:{b.port} home {b.home} (pid {b.pid})")
        return 0
    if args.action == "reboot":
        return _sandbox_reboot(args, inv)
    if args.action == "down":
        from ..link import warm

        try:  # their warm connections first: nothing of theirs outlives the board
            warm.drop(inv.state_dir, [b.name for b in sandbox.boards(inv, args.names or None)])
        except warm.Refused:
            pass  # no usable socket folder: no master could have been started either
        boxes = sandbox.down(inv, args.names or None, purge=args.purge)
        if args.json:
            ui.emit_json([b.to_json() for b in boxes])
        else:
            for b in boxes:
                ui.out().print(f"[yellow]down[/] {b.name}" + (" (purged)" if args.purge else ""))
        return 0
    boxes = sandbox.status(inv)
    if args.json:
        ui.emit_json([b.to_json() for b in boxes])
        return 0
    t = ui.table("board", "state", "address", "user", "home", "pid")
    for b in boxes:
        t.add_row(b.name, "[green]running[/]" if b.running else "[red]stopped[/]", f"{b.host}:{b.port}", b.user, b.home,
                  str(b.pid or "-"))
    ui.out().print(t)
    for b in boxes:
        if b.running:
            ui.out().print(f"{b.name}: {b.ssh_command}")
    return 0


def _sandbox_reboot(args, inv) -> int:
    """``deploy sandbox reboot``: SIMULATED (sandbox/cron.py): the board's processes killed, @reboot lines run."""
    from .. import sandbox
    from ..errors import SandboxError
    from ..sandbox import cron

    done = []
    for board in sandbox.boards(inv, args.names or None):
        sb = sandbox.load(inv, board.name)
        if sb is None or not sb.running:
            raise SandboxError(f"{board.name}: sandbox board is not up (deploy sandbox up {board.name})")
        done.append(cron.reboot(sb))
    if args.json:
        ui.emit_json([r.to_json() for r in done])
    else:
        for r in done:
            ui.out().print(f"[yellow]rebooted (simulated)[/] {r.board}: killed {len(r.killed)} process(es), "
                           f"ran {len(r.started)} @reboot entr{'y' if len(r.started) == 1 else 'ies'}")
    return 0


# ---------------------------------------------------------------- warm connections


def cmd_connections(args) -> int:
    """``deploy connections [--close [BOARD...]]``: the project's master and its boards (``link/warm.py``)."""
    from ..link import warm

    inv = inventory(args)
    if args.close is not None:
        reply = warm.drop(inv.state_dir, [b.name for b in inv.select(",".join(args.close))] if args.close else None)
        if args.json:
            ui.emit_json({"closed": bool(reply and reply.get("ok")), **({"dropped": reply.get("dropped")} if reply else {})})
        else:
            ui.out().print("no warm connections" if reply is None else "closed")
        return 0
    found = warm.info(inv.state_dir)
    if args.json:
        ui.emit_json(found or {"pid": None, "boards": []})
        return 0
    if not found or not found.get("boards"):
        ui.out().print("no warm connections")
        return 0
    ui.out().print(f"master pid {found['pid']}, socket {ui.escape(str(found['socket']))}")
    t = ui.table("board", "route", "channels", "idle", "persist", "age")
    for b in found["boards"]:
        t.add_row(ui.escape(str(b["board"])), ui.escape(str(b["route"])), str(b["channels"]), f"{b['idle_s']:.0f}s",
                  f"{b['persist_s']}s", f"{b['age_s']:.0f}s")
    ui.out().print(t)
    return 0


# ---------------------------------------------------------------- models


def cmd_model(args) -> int:
    from .. import models

    if args.action == "demo":
        inv_path = Path(args.inventory)
        root = Path(args.dest) if args.dest else inv_path.resolve().parent / "demo"
        with ui.status("building demo model, labels and photos (cached)"):
            assets = models.build_demo(root, force=args.force, weights=Path(args.weights) if args.weights else None,
                                       torch_factory=args.torch)  # fmt: skip
        info = {k: str(v) for k, v in vars(assets).items()} if not hasattr(assets, "__dataclass_fields__") else {
            k: (str(v) if isinstance(v, Path) else v) for k, v in assets.__dict__.items()}
        if args.json:
            ui.emit_json(info)
        else:
            ui.out().print(f"demo assets in {root} ({'built' if getattr(assets, 'rebuilt', False) else 'cached'})")
        return 0
    if args.action == "export":
        res = models.export_torch(args.torch, Path(args.output), models.parse_shape(args.input_shape),
                                  weights=Path(args.weights) if args.weights else None, opset=args.opset)
        info = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}
        if args.json:
            ui.emit_json(info)
        else:
            ui.out().print(f"exported {res.path} (max |onnx - torch| = {res.max_abs_diff:.2e})")
        return 0
    if args.action == "convert":
        from ..targets import PROFILES

        if getattr(PROFILES.get(args.target), "backend", None) == "magicmind":  # a Cambricon target
            from ..models import magicmind

            return magicmind.convert(args, lambda: inventory(args).app.preprocess, ui, ui.emit_json)
        return _convert(args)
    return 2


def _aipp_choice(value: str | None):
    """``--aipp``: a preset name, ``app``, or the path of an atc AIPP config file (a Path)."""
    from ..models import atc

    if value is None or value == "app" or value in atc.AIPP_PRESETS:
        return value
    if not Path(value).is_file():
        known = ", ".join([*sorted(atc.AIPP_PRESETS), "app"])
        raise atc.ModelSpecError(f"--aipp {value}: neither a preset ({known}) nor an AIPP config file")
    return Path(value)


def _convert(args) -> int:
    """``deploy model convert``: build the atc command; run it when the CANN toolkit is here.

    Without ``atc`` on PATH the exact command is printed (and the AIPP file written next to
    the output) so it can be run on a machine with the toolkit; that exits 3, not 0. With
    ``--simulate`` the simulated atc runs that same command and writes a simulated model, which
    only sandbox boards load.
    """
    from ..models import atc

    if not args.model:
        raise DeployError("deploy model convert MODEL --target TARGET: name the model file")
    aipp = _aipp_choice(args.aipp)
    if aipp == "app":  # the inventory's own preprocessing, so the .om normalises like the CPU path
        app = inventory(args).app
        aipp = atc.aipp_from_preprocess(app.preprocess, yuv=app.backend_options.get("decode") == "dvpp")
        if aipp is None and not args.json:
            ui.err().print("no AIPP: app.preprocess does not normalise (the model does it itself)")
    progress = None if args.json else (lambda line: ui.err().print(ui.escape(line)))
    try:
        plan = atc.plan_conversion(
            args.model, args.target, weight=args.weight, input_shape=args.input_shape, aipp=aipp,
            output=args.output, fp16_inputs=tuple(args.fp16_input or ()), output_type=args.output_type,
        )  # fmt: skip
        if plan.aipp_config and not args.json:
            ui.err().print(f"AIPP config (static, {ui.escape(str(args.aipp))}): {plan.aipp_path}")
        result = atc.run_conversion(plan, progress=progress, simulate=args.simulate)
    except atc.AtcNotFound as exc:
        if args.json:
            ui.emit_json({"converted": False, "command": exc.command, "aipp": str(plan.aipp_path or "") or None})
        else:
            ui.out().print(ui.escape(exc.command), soft_wrap=True)
            ui.err().print("[yellow]not converted[/]: atc is not on PATH; run the command above where the CANN toolkit "
                      "is installed (source its set_env.sh first)")
        return exc.exit_code
    except atc.ConversionError as exc:
        ui.error_line(str(exc))
        return exc.exit_code
    if args.json:
        ui.emit_json({"converted": True, "output": str(result), "command": plan.command, "simulated": args.simulate})
    elif args.simulate:
        ui.out().print(f"converted: {ui.escape(str(result))} is a SIMULATED model: it runs only on sandbox boards "
                       "(the simulated Ascend runtime); `deploy push` refuses it for a real board", soft_wrap=True)
    else:
        ui.out().print(f"converted: {ui.escape(str(result))}")
    return 0



# ---------------------------------------------------------------- trust


def cmd_trust(args) -> int:
    """``deploy trust BOARD``: put your public key on a password-only board (``trust.py``), then say what
    was installed and which host keys were recorded. The password is asked at most once and never kept."""
    from ..errors import InventoryError
    from ..link import trust

    inv = inventory(args)
    if args.board not in inv.boards:
        inv.select(args.board)  # the usual one-line error for an unknown name
        raise InventoryError(f"{inv.path}: deploy trust takes one board, not {args.board!r}")
    board = inv.boards[args.board]
    if board.sandbox:
        ui.err().print(f"{board.name} is a sandbox board: `deploy sandbox up` installed the project's key already")
        return 0
    res = trust.trust(inv, board, password=trust.password_prompt(args.password_stdin), key=args.key,
                      accept_new=args.accept_new_host_key or args.yes, confirm=None if args.yes else trust.tty_confirm)
    if args.json:
        ui.emit_json({"board": board.name, **res.to_json()})
        return 0
    for who, fp in res.host_keys:
        ui.err().print(f"recorded host key {fp} of {ui.escape(who)} in .deploy/known_hosts")
    what = "installed" if res.added else "already there:"
    proof = "; key login verified" if res.verified else " (its private key is not here: login not tried)"
    ui.out().print(f"{board.name}: {what} {res.key.kind} {res.key.fingerprint} ({ui.escape(str(res.key.path))}) "
                   f"in {ui.escape(res.login)}:~/.ssh/authorized_keys{proof}")
    return 0
