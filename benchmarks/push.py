"""Push speed: ``deploy push`` vs ``scp -r`` and ``rsync -a`` of the same tree to the same board, same run.

    python benchmarks/push.py [--json] [--repeat 3] [--files 1000] [--rtt-ms 2] [--keep-tmp]

Starts its own sandbox board (a real OpenSSH sshd on 127.0.0.1) in a throwaway project and
stops exactly that board at the end (``deploy sandbox down --purge``, in a ``finally``).

What is measured (every wall time is the minimum over ``--repeat`` interleaved rounds, the order of
the methods rotated each round; all samples are in ``samples``; ratios compare figures of this one run):

* ``first_push_s``   ``python -m deploy push board1 --json`` as a subprocess, onto a board that has
                     nothing of the app (a fresh app name per round): Python start-up, inventory,
                     bundle (stat + cached sha256), SSH connect, plan, transfer of every object,
                     board-side verify/assemble/switch. Excluded: the one-time wheel download and
                     the first hashing of the wheel tree (a ``--dry-run`` push warms both first; the
                     cold-hash cost is reported apart as ``first_push_cold_hash_s``).
  ``first_push_api_s``  the same through the Python API in-process (``ssh.Connection`` + ``push.push``):
                     no interpreter start-up; ``api_phases_s`` splits it into connect/plan/transfer/commit.
* ``scp_r_s``, ``rsync_s``   ``scp -r -q`` / ``rsync -a`` of the same release tree (materialised locally
                     from the bundle's entries) into a fresh directory on the same board; each includes
                     its own ssh start-up and connection, as the tool's figure does.
* ``small_files_*``  1000 files of 4 KiB (random, 10 dirs x 100) pushed as the app's ``images``
                     into a board that already has the rest of the release (only those files travel),
                     vs ``scp -r`` / ``rsync -a`` of the same tree. New content each round, so the push
                     also hashes the new files, as a user's push would.
* ``redeploy_*``     a second push with nothing changed (payload must be 0) vs re-running ``rsync -a``
                     of the unchanged tree (quick check: nothing sent).
* ``one_change_*``   one demo photo re-encoded, then pushed: the payload the tool counted
                     (``PushResult.payload_bytes``: file content sent) vs that file's size.
* ``cli_startup_s``  ``{"help", "status", "imports"}``: the median wall time (over several interleaved runs)
                     of ``python -m deploy --help``, of ``python -m deploy status board1`` (against this
                     run's sandbox board, the app pushed) and of bare ``import deploy.cli, deploy.ops.push,
                     deploy.link.ssh``, each as a subprocess: what every CLI figure pays before its work.
* ``cpu_s``          CPU seconds per method (medians), split into host (this process and its children:
                     the CLI, scp, rsync, ssh) and board (the sandbox sshd's sessions and everything they
                     run, sampled from /proc every 20 ms). The machine is shared, so wall times are noisy;
                     CPU seconds are steadier, and the board's share is what a slow ARM board will feel.
* ``rtt``            (``--rtt-ms N``, default 2; 0 turns it off) the small-files and redeploy comparisons
                     again through a local TCP relay (``deploy.testing.relay``, its own process) that
                     delays each direction by N/2 ms, as a LAN or USB link to a real board would: loopback
                     has no latency, which is where per-file round trips (scp's SFTP open/write/close per
                     file) cost nothing.

* ``link``           (``--mbit N``, default 100; 0 skips it) through the relay limited to N Mbit/s each way
                     with ``--rtt-ms`` (a lab LAN or the DK's USB link): the first push of the demo
                     (a fresh app each round: everything travels, compressed where the stream measured that
                     it pays) vs ``rsync -a`` and ``rsync -az`` of the same tree into a fresh directory;
                     1000 new 4 KiB files vs ``rsync -a``; a no-change redeploy vs ``rsync -a``. Bytes on
                     the wire per method come from the relay's counters.
* ``first_push_bytes``  what the demo's first push put on that link (the object stream, compressed where it
                     paid), beside ``first_push_content_bytes`` (the release's content) and
                     ``baseline_first_push_bytes`` (153.5 MB: the release before the slim site and
                     compression); ``first_push_bytes_aarch64``: the same release for the emulated aarch64
                     board's target (aarch64, Python 3.9), as the stream would carry it on a slow link
                     (every object that compresses, compressed; computed on the host, no board needed).

Human-readable progress goes to stderr; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy import inventory as inventory_mod  # noqa: E402
from deploy.link import ssh as ssh_mod  # noqa: E402
from deploy.ops import push as push_mod  # noqa: E402
from deploy.release.hashcache import HashCache  # noqa: E402
from deploy.testing import DEMO, CommandFailed, Project, build_demo, demo_built, rounded, ssh_argv  # noqa: E402
from deploy.testing import relay as relay_mod  # noqa: E402

BOARD = "board1"
KEEP_RELEASES = 3
STARTUP_RUNS = 7  # per command, for cli_startup_s

BASELINE_FIRST_PUSH_BYTES = 153_500_000  # issue 13: the demo's first push before the slim site and compression

TARGETS = {
    "first_push_bytes<=0.5*baseline": lambda r: r.get("first_push_bytes_over_baseline", 9) <= 0.5,
    "link_first_over_rsync<=0.5": lambda r: r.get("link_first_over_rsync", 9) <= 0.5,
    "link_small_files_over_rsync<=1.0": lambda r: r.get("link_small_files_over_rsync", 9) <= 1.0,
    "link_redeploy_over_rsync<=1.0": lambda r: r.get("link_redeploy_over_rsync", 9) <= 1.0,
    "first_over_scp<=1.0": lambda r: r["first_over_scp"] <= 1.0,
    "small_files_speedup_vs_scp>=5": lambda r: r["small_files_speedup_vs_scp"] >= 5,
    "redeploy_payload_bytes==0": lambda r: r["redeploy_payload_bytes"] == 0,
    "redeploy_s<=0.5": lambda r: r["redeploy_s"] <= 0.5,
    "redeploy_over_rsync<=1.0": lambda r: r["redeploy_over_rsync"] <= 1.0,
    "one_change_payload_bytes<=one_change_file_bytes+65536":
        lambda r: r["one_change_payload_bytes"] <= r["one_change_file_bytes"] + 65536,
    "cli_startup_s.help<=0.12": lambda r: r["cli_startup_s"]["help"] <= 0.12,
    "cli_startup_s.status<=0.12": lambda r: r["cli_startup_s"]["status"] <= 0.12,
    # issue 20: an own app's unchanged push sends nothing and costs no more than the built-in app's (noise: 10%)
    "own_redeploy_payload_bytes==0": lambda r: r["own_redeploy_payload_bytes"] == 0,
    "own_redeploy_over_redeploy<=1.1": lambda r: r["own_redeploy_over_redeploy"] <= 1.1,
    "run_tree_s<=0.2 (2000 files)": lambda r: r["run_tree_s"] <= 0.2,
    "run_tree_disk_bytes<=1MB": lambda r: r["run_tree_disk_bytes"] <= 1 << 20,
    # issue 24: faster than what users type today (health check included; the *_without_health figures beside)
    "link_first_over_rsync_z<=0.8": lambda r: r.get("link_first_over_rsync_z", 9) <= 0.8,
    "link_small_files_over_rsync<=0.8": lambda r: r.get("link_small_files_over_rsync", 9) <= 0.8,
    "link_redeploy_over_rsync<=0.5": lambda r: r.get("link_redeploy_over_rsync", 9) <= 0.5,
    "redeploy_over_rsync<=0.5": lambda r: r["redeploy_over_rsync"] <= 0.5,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def host_cpu() -> float:
    """CPU seconds of this process plus its waited-for children (the CLI, scp, rsync and their ssh)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class BoardCPU:
    """CPU seconds of everything under the sandbox's sshd listener, sampled from /proc.

    Each process's own utime+stime is read every ``interval``; a process is counted up to its
    last sample (at most ``interval`` of CPU lost per process). Sessions of other clients of the
    same board would be counted too: the benchmark runs one thing at a time.
    """

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, listener: int, interval: float = 0.02):
        self.listener = listener
        self.interval = interval
        self.seen: dict[tuple[int, str], int] = {}
        self.base: dict[tuple[int, str], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _descendants(self) -> list[int]:
        out, todo = [], [self.listener]
        while todo:
            pid = todo.pop()
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        kids = [int(x) for x in f.read().split()]
                    out += kids
                    todo += kids
            except OSError:
                pass
        return out

    def sample(self) -> None:
        for pid in self._descendants():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            key = (pid, fields[19])  # pid + start time: a reused pid is another process
            self.seen[key] = max(self.seen.get(key, 0), int(fields[11]) + int(fields[12]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> BoardCPU:
        self.sample()
        self.base = dict(self.seen)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(v - self.base.get(k, 0) for k, v in self.seen.items()) / self.TICK


class Bench:
    def __init__(self, root: Path, repeat: int, n_files: int, rtt_ms: float, mbit: float = 100.0):
        self.root = root
        self.mbit = mbit
        self.repeat = repeat
        self.n_files = n_files
        self.rtt_ms = rtt_ms
        # every demo photo in images/, board1 a sandbox board; "lagged" (board1 behind the relay) is added later
        self.project = Project(root, DEMO, app="warm", photos=None, env={"CLASSIFY_MODE": "bench"})
        self.inventory = self.project.inventory
        self.images = self.project.images
        self.samples: dict[str, list[float]] = {}
        self.facts: dict = {}
        self.sandbox: dict | None = None  # board1's `sandbox status` row, read once it is up
        self.relay: relay_mod.RelayProcess | None = None

    # ------------------------------------------------------------ plumbing

    def configure(self, app: str, images: Path | None = None) -> None:
        self.project.configure(keep=KEEP_RELEASES, app=app, images=images)

    def deploy(self, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        """``deploy ARGS`` as a subprocess (raises CommandFailed); its wall time and result."""
        t0 = time.perf_counter()
        r = self.project.deploy(*args)
        return time.perf_counter() - t0, r

    @contextmanager
    def cpu(self, key: str):
        """Record host and board CPU seconds of what runs inside the block under ``key``."""
        h0 = host_cpu()
        with BoardCPU(self.sandbox["pid"]) as board:
            yield
        self.record(f"cpu_host:{key}", host_cpu() - h0)
        self.record(f"cpu_board:{key}", board.seconds)

    def cli_push(self, key: str | None = None, board: str = BOARD) -> tuple[float, dict]:
        if key is None:
            _, r = self.deploy("push", board, "--json")
            return _, json.loads(r.stdout)["boards"][0]
        with self.cpu(key):
            dt, r = self.deploy("push", board, "--json")
        self.record(key, dt)
        row = json.loads(r.stdout)["boards"][0]
        health = row.get("health") or {}
        spent = health.get("seconds", 0.0) if health.get("ran") else 0.0
        self.record(f"health:{key}", spent)  # the health check's share, reported apart (rsync/scp do none)
        self.record(f"{key}:without_health", dt - spent)
        return dt, row

    def api_push(self, key: str) -> push_mod.PushResult:
        """In-process: load the inventory, open a fresh connection, push, close. Records a phase breakdown too."""
        marks: dict[str, float] = {}

        def on_plan(_plan):
            marks["plan"] = time.perf_counter()

        def on_bytes(_n):
            marks["last_byte"] = time.perf_counter()

        with self.cpu(key):
            t0 = time.perf_counter()
            inv = inventory_mod.load(self.inventory)
            board = inv.boards[BOARD]
            conn = ssh_mod.Connection(ssh_mod.endpoint_for(inv, board))
            conn.open()
            t_conn = time.perf_counter()
            try:
                res = push_mod.push(inv, board, conn, on_plan=on_plan, on_bytes=on_bytes)
                t_done = time.perf_counter()
                tr = conn.client.get_transport()
                mac = "<implicit>" if "-gcm@" in tr.local_cipher else tr.local_mac
                self.facts.setdefault("paramiko_cipher", f"{tr.local_cipher} MAC: {mac}")
            finally:
                conn.close()
            t1 = time.perf_counter()
        plan = marks.get("plan", t_done)
        last = marks.get("last_byte", plan)
        self.record(key, t1 - t0)
        phases = {
            "connect_s": t_conn - t0,  # inventory load + TCP + kex + auth
            "plan_s": plan - t_conn,  # bundle (stat/hash) + helper start + manifest + plan reply
            "transfer_s": last - plan,  # tar stream of missing objects, until the last byte is handed to paramiko
            "commit_s": t_done - last,  # board: rest of the stream, verify, assemble, switch, reply
        }
        for k, v in phases.items():
            self.record(f"phase:{key}:{k}", v)
        return res

    def ssh_parts(self, port: int | None = None) -> tuple[list[str], str]:
        """OpenSSH client options and ``user@host`` for board1 (or the relay's ``port``), for ssh/scp/rsync."""
        words = ssh_argv(self.sandbox, port)
        return words[1:-1], words[-1]

    def ssh(self, command: str) -> None:
        opts, dest = self.ssh_parts()
        subprocess.run(["ssh", *opts, dest, command], check=True, capture_output=True)

    def scp(self, key: str, src: Path, remote: str, port: int | None = None) -> float:
        opts, dest = self.ssh_parts(port)
        opts = ["-P" if w == "-p" else w for w in opts]
        return self._timed_command(key, ["scp", "-r", "-q", *opts, str(src), f"{dest}:{remote}"])

    def rsync(self, key: str, src: Path, remote: str, port: int | None = None, *flags: str) -> float:
        """``rsync -a [FLAGS]`` of ``src`` into ``remote`` on board1 (or through the relay's ``port``)."""
        opts, dest = self.ssh_parts(port)
        return self._timed_command(key, ["rsync", "-a", *flags, "-e", shlex.join(["ssh", *opts]), f"{src}/",
                                         f"{dest}:{remote}/"])

    def _timed_command(self, key: str, argv: list[str]) -> float:
        """Wall time (recorded under ``key``, with host and board CPU) of one baseline command."""
        with self.cpu(key):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            dt = time.perf_counter() - t0
        self.record(key, dt)
        return dt

    @property
    def home(self) -> Path:
        return Path(self.sandbox["home"])

    def forget(self, *rel: str) -> None:
        """Remove board directories between measurements (untimed) and flush dirty pages so each starts alike."""
        for r in rel:
            shutil.rmtree(self.home / r, ignore_errors=True)
        os.sync()

    def record(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def best(self, key: str) -> float:
        return min(self.samples[key])

    def most(self, key: str) -> int:
        return int(max(self.samples[key]))

    def median(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def last(self, key: str) -> float:
        return self.samples[key][-1]

    # ------------------------------------------------------------ stages

    def setup(self) -> None:
        self.configure("warm")
        log(f"project {self.root}: starting sandbox board {BOARD}")
        self.project.up(BOARD)
        self.sandbox = self.project.status(BOARD)
        # warm the wheel cache (pip, once per machine) and the board-facts cache
        self.deploy("push", BOARD, "--dry-run", "--json")
        self.ssh(f"mkdir -p {shlex.quote(str(self.home / 'bench'))}")
        self.facts["openssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
        opts, dest = self.ssh_parts()
        v = subprocess.run(["ssh", "-v", *opts, dest, "true"], capture_output=True, text=True).stderr
        self.facts["openssh_cipher"] = " / ".join(
            ln.split("cipher: ", 1)[1].split(" compression")[0] for ln in v.splitlines() if "kex: client->server cipher" in ln
        )

    def materialise(self, app: str, dest: Path) -> tuple[int, int]:
        """The release tree exactly as pushed (paths, bytes, modes), as a local directory for scp/rsync."""
        self.configure(app)
        inv = inventory_mod.load(self.inventory)
        board = inv.boards[BOARD]
        with ssh_mod.Connection(ssh_mod.endpoint_for(inv, board)) as conn:
            b = push_mod.build_for(inv, board, conn, HashCache(inv.state_dir / "hashcache.json"))
        for e in b.entries:
            out = dest / e.path
            out.parent.mkdir(parents=True, exist_ok=True)
            if e.data is not None:
                out.write_bytes(e.data)
            else:
                shutil.copyfile(e.src, out)
            os.chmod(out, e.mode)
        return len(b.entries), b.total_bytes

    def cli_startup(self) -> None:
        """Wall time of CLI commands that do (almost) nothing: ``deploy --help``, ``deploy status board1``
        (one SSH round trip to a board with the app on it), and the bare imports of the push path."""
        self.configure("startup")
        self.cli_push()
        commands = {
            "help": [sys.executable, "-m", "deploy", "--help"],
            "status": self.project.argv("status", BOARD),  # on the warm connection the last command left
            "status_no_persist": self.project.argv("status", BOARD, "--no-persist"),  # its own handshake, as before
            "imports": [sys.executable, "-c", "import deploy.cli, deploy.ops.push, deploy.link.ssh"],
        }
        for i in range(STARTUP_RUNS):
            names = list(commands)
            k = i % len(names)
            for name in names[k:] + names[:k]:  # interleaved, order rotated
                t0 = time.perf_counter()
                subprocess.run(commands[name], check=True, capture_output=True, cwd=self.root, env=self.project.environ)
                self.record(f"cli_startup:{name}", time.perf_counter() - t0)
        log("cli start-up (median of {}): {}".format(STARTUP_RUNS, ", ".join(
            f"{k} {self.median(f'cli_startup:{k}'):.3f} s" for k in commands)))
        self.forget("HIAI_PROJECTS/startup")

    def first_and_redeploy(self) -> None:
        tree = self.root / "tree"
        # cold hashing, once: what the very first push on a machine pays on top (wheels already downloaded)
        (self.root / ".deploy" / "hashcache.json").unlink(missing_ok=True)
        self.configure("coldhash")
        dt, _ = self.cli_push()
        self.facts["first_push_cold_hash_s"] = dt
        self.forget("HIAI_PROJECTS/coldhash")
        self.facts["bundle_files"], self.facts["bundle_bytes"] = self.materialise("tree", tree)
        log(f"demo bundle: {self.facts['bundle_files']} files, {self.facts['bundle_bytes'] / 1e6:.1f} MB; "
            f"first push with a cold hash cache {dt:.2f} s")
        methods = ["cli", "api", "scp", "rsync"]
        for i in range(self.repeat):
            for m in methods[i % 4:] + methods[: i % 4]:  # rotated so drift favours no method
                if m == "cli":
                    self.configure(f"first{i}c")
                    _, res = self.cli_push("first_push_s")
                    assert res["plan"]["send_files"] > 300 and res["payload_bytes"] > 50e6, res
                    self.record("first_payload_bytes", res["payload_bytes"])
                    os.sync()
                    _, res = self.cli_push("redeploy_s")
                    self.record("redeploy_payload_bytes", res["payload_bytes"])
                    self.forget(f"HIAI_PROJECTS/first{i}c")
                elif m == "api":
                    self.configure(f"first{i}a")
                    res = self.api_push("first_push_api_s")
                    assert res.payload_bytes > 100e6, res
                    os.sync()
                    res = self.api_push("redeploy_api_s")
                    self.record("redeploy_payload_bytes", res.payload_bytes)
                    self.forget(f"HIAI_PROJECTS/first{i}a")
                elif m == "scp":
                    self.scp("scp_r_s", tree, str(self.home / "bench" / f"scp{i}"))
                    self.forget(f"bench/scp{i}")
                else:
                    remote = str(self.home / "bench" / f"rsync{i}")
                    self.rsync("rsync_s", tree, remote)
                    os.sync()
                    self.rsync("redeploy_rsync_s", tree, remote)
                    self.forget(f"bench/rsync{i}")
            g = self.last
            log(f"round {i + 1}/{self.repeat}: first push cli {g('first_push_s'):.2f} s, api {g('first_push_api_s'):.2f} s, "
                f"scp -r {g('scp_r_s'):.2f} s, rsync {g('rsync_s'):.2f} s | redeploy cli {g('redeploy_s'):.2f} s, "
                f"api {g('redeploy_api_s'):.2f} s, rsync {g('redeploy_rsync_s'):.2f} s")

    def small_tree(self, path: Path) -> Path:
        per_dir = 100
        for k in range(self.n_files):
            d = path / f"d{k // per_dir:02d}"
            if k % per_dir == 0:
                d.mkdir(parents=True)
            (d / f"f{k % per_dir:03d}.bin").write_bytes(os.urandom(4096))
        return path

    def small_files(self) -> None:
        self.configure("small")
        self.cli_push()  # the rest of the release is on the board; only the small files travel below
        methods = ["cli", "api", "scp", "rsync"]
        for i in range(self.repeat):
            for m in methods[i % 4:] + methods[: i % 4]:
                tree = self.small_tree(self.root / "small" / f"{m}{i}")  # new content: all of it must travel
                os.sync()
                if m == "cli":
                    self.configure("small", tree)
                    _, res = self.cli_push("small_files_push_s")
                    assert res["objects"] == self.n_files and res["payload_bytes"] == self.n_files * 4096, res
                elif m == "api":
                    self.configure("small", tree)
                    res = self.api_push("small_files_push_api_s")
                    assert res.objects == self.n_files, res
                elif m == "scp":
                    self.scp("small_files_scp_s", tree, str(self.home / "bench" / f"small-scp{i}"))
                    self.forget(f"bench/small-scp{i}")
                else:
                    self.rsync("small_files_rsync_s", tree, str(self.home / "bench" / f"small-rsync{i}"))
                    self.forget(f"bench/small-rsync{i}")
            g = self.last
            log(f"small files round {i + 1}/{self.repeat}: push cli {g('small_files_push_s'):.2f} s, "
                f"api {g('small_files_push_api_s'):.2f} s, scp -r {g('small_files_scp_s'):.2f} s, "
                f"rsync {g('small_files_rsync_s'):.2f} s")
        self.forget("HIAI_PROJECTS/small")

    def one_change(self) -> None:
        from PIL import Image

        self.configure("onechange")
        self.cli_push()
        photo = self.images / "coffee.jpg"
        for i in range(self.repeat):
            with Image.open(DEMO / "images" / "coffee.jpg") as im:
                im.convert("RGB").save(photo, quality=70 + i)  # a real edit: same name, new content
            size = photo.stat().st_size
            _, res = self.cli_push("one_change_s")
            self.record("one_change_payload_bytes", res["payload_bytes"])
            self.record("one_change_file_bytes", size)
            self.record("one_change_objects", res["objects"])
        log(f"one change: payload {res['payload_bytes']} B for a {size} B file, objects {res['objects']}, "
            f"linked {res['linked']}, {self.last('one_change_s'):.2f} s")
        shutil.copy2(DEMO / "images" / "coffee.jpg", photo)
        self.forget("HIAI_PROJECTS/onechange")

    def own_app(self, files: int = 2000) -> None:
        """An own app (issue 20): a tree of ``files`` files shipped with its layout, redeployed with nothing
        changed (against the built-in app's no-change push in this run), and run: what the run's working tree
        costs on the board (``run_tree_s``, and the disk its folders and links take)."""
        src = self.root / "ownapp"
        for k in range(files):
            d = src / "lib" / f"pkg{k // 100:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"mod{k % 100:03d}.py").write_text(f"VALUE = {k}\n" + "# padding\n" * 20)
        (src / "src").mkdir()
        (src / "src" / "main.py").write_text("import os\nos.makedirs('../out', exist_ok=True)\n"
                                             "open('../out/done.txt', 'w').write('ok')\nprint('[1/1] done')\n")
        self.project.app_extra = {"source": str(src), "workdir": "src", "command": "python3 main.py",
                                  "outputs": "../out"}
        try:
            self.configure("own")
            _, res = self.cli_push()
            assert res["switched"] and res["plan"]["files"] > files, res
            for _ in range(self.repeat):
                _, res = self.cli_push("own_redeploy_s")
                self.record("own_redeploy_payload_bytes", res["payload_bytes"])
            trees, disk = [], []
            for i in range(self.repeat):
                _, r = self.deploy("run", BOARD, "--run-id", f"own{i}", "--json")
                row = json.loads(r.stdout)["boards"][0]
                assert row["ok"], row
                trees.append(row["run_tree_s"])
                tree = self.home / "HIAI_PROJECTS" / "own" / "runs" / f"own{i}" / "tree"
                disk.append(sum(p.lstat().st_blocks * 512 for p in [tree, *tree.rglob("*")] if p.is_dir()))
            self.samples["run_tree_s"] = trees
            self.samples["run_tree_disk_bytes"] = [float(d) for d in disk]
            log(f"own app ({files} files): no-change push {self.best('own_redeploy_s'):.2f} s, "
                f"{self.most('own_redeploy_payload_bytes')} B sent; run tree {min(trees) * 1000:.0f} ms, "
                f"{max(disk) / 1e3:.0f} kB of folders (files are hard links)")
        finally:
            self.project.app_extra = {}
            self.forget("HIAI_PROJECTS/own")

    def teardown(self) -> bool:
        """``deploy sandbox down --purge``: stops the sshd this project started (by its recorded PID), removes
        the board's home and user. True when nothing of it is left running."""
        try:
            if self.project.down():
                return True
        except CommandFailed as exc:
            log(f"warning: {exc}")
        log(f"warning: sandbox sshd still running; project kept at {self.root} "
            f"(stop it with: deploy -i {self.inventory} sandbox down --purge)")
        return False

    def start_relay(self) -> int:
        """The relay as its own process (its CPU in neither figure), and board ``lagged`` in the inventory."""
        self.relay = relay_mod.spawn(self.sandbox["port"], rtt_ms=self.rtt_ms)
        self.project.boards["lagged"] = self.project.relay_board(self.relay.port, BOARD)
        return self.relay.port

    def stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.stop()  # the relay process this benchmark started, by its own handle
            self.relay = None
        self.project.boards.pop("lagged", None)

    def with_latency(self) -> None:
        """Small files and redeploy again, every byte delayed by RTT/2 each way (a LAN/USB link, not loopback)."""
        port = self.start_relay()
        tree = self.root / "tree"
        self.configure("rtt")
        self.deploy("push", "lagged", "--dry-run", "--json")  # board facts for the new board name
        self.cli_push(board="lagged")
        methods = ["cli", "scp", "rsync"]
        for i in range(self.repeat):
            for m in methods[i % 3:] + methods[: i % 3]:
                tree_small = self.small_tree(self.root / "small-rtt" / f"{m}{i}")
                os.sync()
                if m == "cli":
                    self.configure("rtt", tree_small)
                    _, res = self.cli_push("rtt:small_files_push_s", board="lagged")
                    assert self.n_files <= res["objects"] <= self.n_files + 2, res  # + app.json when it changed
                    self.configure("rtt", tree_small)
                    _, res = self.cli_push("rtt:redeploy_s", board="lagged")
                    assert res["payload_bytes"] == 0, res
                elif m == "scp":
                    self.scp("rtt:small_files_scp_s", tree_small, str(self.home / "bench" / f"rtt-scp{i}"), port)
                    self.forget(f"bench/rtt-scp{i}")
                else:
                    self.rsync("rtt:small_files_rsync_s", tree_small, str(self.home / "bench" / f"rtt-rsync{i}"), port)
                    self.forget(f"bench/rtt-rsync{i}")
            if i == 0:  # rsync re-run of the demo tree through the relay: the redeploy baseline
                remote = str(self.home / "bench" / "rtt-tree")
                self.rsync("rtt:rsync_fill_s", tree, remote)  # filled over loopback, not the relay
            self.rsync("rtt:redeploy_rsync_s", tree, str(self.home / "bench" / "rtt-tree"), port)
            g = self.last
            log(f"rtt {self.rtt_ms:g} ms round {i + 1}/{self.repeat}: small files push {g('rtt:small_files_push_s'):.2f} s, "
                f"scp -r {g('rtt:small_files_scp_s'):.2f} s, rsync {g('rtt:small_files_rsync_s'):.2f} s | "
                f"redeploy push {g('rtt:redeploy_s'):.2f} s, rsync {g('rtt:redeploy_rsync_s'):.2f} s")
        self.forget("HIAI_PROJECTS/rtt", "bench/rtt-tree")
        self.stop_relay()

    def with_link(self) -> None:
        """First push, small files and redeploy through a bandwidth-limited link, against rsync -a / -az."""
        self.relay = relay_mod.spawn(self.sandbox["port"], rtt_ms=self.rtt_ms, mbit=self.mbit,
                                     stats=self.root / "link-stats.json")
        port = self.relay.port
        self.project.boards["linked"] = self.project.relay_board(port, BOARD)
        tree = self.root / "tree"
        self.configure("link0")
        self.deploy("push", "linked", "--dry-run", "--json")  # board facts for the new board name
        wire: dict[str, list[int]] = {}

        def on_wire(key: str, run) -> None:
            before = self.relay.stats(settle=0.3)["up"]
            run()
            wire.setdefault(key, []).append(self.relay.stats(settle=0.3)["up"] - before)

        methods = ["cli", "rsync", "rsync_z"]
        for i in range(self.repeat):
            for m in methods[i % 3:] + methods[: i % 3]:
                if m == "cli":
                    self.configure(f"link{i}")
                    res: dict = {}
                    on_wire("first_push", lambda res=res: res.update(self.cli_push("link:first_push_s", board="linked")[1]))
                    self.facts.setdefault("link_first_push", []).append(
                        {k: res[k] for k in ("payload_bytes", "wire_bytes", "compressed_objects", "compress_levels",
                                              "link_bytes_per_s")})
                    self.forget(f"HIAI_PROJECTS/link{i}")
                elif m == "rsync":
                    on_wire("rsync", lambda i=i: self.rsync("link:rsync_s", tree, str(self.home / "bench" / f"l{i}"), port))
                    self.forget(f"bench/l{i}")
                else:
                    on_wire("rsync_z", lambda i=i: self.rsync("link:rsync_z_s", tree, str(self.home / "bench" / f"lz{i}"),
                                                               port, "-z"))
                    self.forget(f"bench/lz{i}")
            g = self.last
            log(f"link {self.mbit:g} Mbit/s round {i + 1}/{self.repeat}: first push {g('link:first_push_s'):.2f} s "
                f"({wire['first_push'][-1] / 1e6:.1f} MB), rsync -a {g('link:rsync_s'):.2f} s "
                f"({wire['rsync'][-1] / 1e6:.1f} MB), rsync -az {g('link:rsync_z_s'):.2f} s ({wire['rsync_z'][-1] / 1e6:.1f} MB)")
        self.configure("link0")
        self.cli_push(board="linked")  # the app on the board: small files and redeploy go on top
        for i in range(self.repeat):
            for m in (["cli", "rsync"] if i % 2 == 0 else ["rsync", "cli"]):
                tree_small = self.small_tree(self.root / "small-link" / f"{m}{i}")
                if m == "cli":
                    self.configure("link0", tree_small)
                    _, res = self.cli_push("link:small_files_push_s", board="linked")
                    assert self.n_files <= res["objects"] <= self.n_files + 2, res  # + app.json when it changed
                    _, res = self.cli_push("link:redeploy_s", board="linked")
                    assert res["payload_bytes"] == 0, res
                else:
                    dest = str(self.home / "bench" / f"ls{i}")
                    self.rsync("link:small_files_rsync_s", tree_small, dest, port)
                    self.rsync("link:redeploy_rsync_s", tree_small, dest, port)
                    self.forget(f"bench/ls{i}")
        self.forget("HIAI_PROJECTS/link0")
        self.facts["link_wire_bytes"] = {k: min(v) for k, v in wire.items()}
        self.stop_relay()
        self.project.boards.pop("linked", None)

    def aarch64_bytes(self) -> dict:
        """The demo release for the emulated aarch64 board's target, and its object stream compressed."""
        from deploy.inventory import Board
        from deploy.link import objstream

        self.configure("aarch64")  # the demo app: its photos, not the small-files tree
        inv = inventory_mod.load(self.inventory)
        board = Board(name="arm", host="127.0.0.1", target="aarch64-cpu")
        b = push_mod.build_for(inv, board, None, HashCache(inv.state_dir / "hashcache.json"))
        unique = {e.sha256: e for e in b.entries}

        class Count:
            n = 0

            def write(self, data) -> int:
                self.n += len(data)
                return len(data)

        sink = Count()
        stats = objstream.write(sink, list(unique.values()), objstream.Policy("on", level=objstream.TIGHT),
                                packed=objstream.Packed())
        return {"content_bytes": stats.content, "stream_bytes": sink.n, "files": len(b.entries),
                "compressed_objects": stats.compressed}

    # ------------------------------------------------------------ report

    def result(self) -> dict:
        r = self._headline()
        if "rtt:small_files_push_s" in self.samples:
            r["rtt"] = self._rtt()
        if "link:first_push_s" in self.samples:
            r["link"] = self._link()
            r.update({k: r["link"][k] for k in ("first_push_bytes", "first_push_content_bytes", "link_first_over_rsync",
                                                 "link_first_over_rsync_z", "link_first_over_rsync_without_health",
                                                 "link_first_over_rsync_z_without_health", "link_small_files_over_rsync",
                                                 "link_redeploy_over_rsync")})
            r["baseline_first_push_bytes"] = BASELINE_FIRST_PUSH_BYTES
            r["first_push_bytes_over_baseline"] = r["first_push_bytes"] / BASELINE_FIRST_PUSH_BYTES
        if "aarch64" in self.facts:
            r["first_push_bytes_aarch64"] = self.facts["aarch64"]["stream_bytes"]
            r["aarch64_release"] = self.facts["aarch64"]
        r["targets"] = {name: bool(check(r)) for name, check in TARGETS.items()}
        r["cpu_s"] = self._cpu()
        r["api_phases_s"] = self._phases()
        r["statistic"] = (f"wall times: min over {self.repeat} interleaved rounds (order rotated per round); "
                          f"cli_startup_s: median of {STARTUP_RUNS}; cpu_s and api_phases_s: medians; ratios within this run")
        r["included"] = INCLUDED
        r["machine"] = self._machine()
        r["samples"] = {k: [round(x, 4) for x in v] for k, v in self.samples.items()
                        if not k.startswith(("cpu_", "phase:"))}
        return rounded(r)

    def _headline(self) -> dict:
        """The flat figures: first push, small files, redeploy, one change, CLI start-up, sizes."""
        b, most = self.best, self.most
        return {
            "first_push_s": b("first_push_s"),
            "first_push_api_s": b("first_push_api_s"),
            "first_push_cold_hash_s": self.facts["first_push_cold_hash_s"],
            "scp_r_s": b("scp_r_s"),
            "rsync_s": b("rsync_s"),
            "first_over_scp": b("first_push_s") / b("scp_r_s"),
            "first_api_over_scp": b("first_push_api_s") / b("scp_r_s"),
            "first_over_rsync": b("first_push_s") / b("rsync_s"),
            "first_payload_bytes": most("first_payload_bytes"),
            "health_s": self.median("health:first_push_s"),
            "first_push_without_health_s": b("first_push_s:without_health"),
            "first_over_rsync_without_health": b("first_push_s:without_health") / b("rsync_s"),
            "first_over_scp_without_health": b("first_push_s:without_health") / b("scp_r_s"),
            "small_files_push_s": b("small_files_push_s"),
            "small_files_push_api_s": b("small_files_push_api_s"),
            "small_files_scp_s": b("small_files_scp_s"),
            "small_files_rsync_s": b("small_files_rsync_s"),
            "small_files_speedup_vs_scp": b("small_files_scp_s") / b("small_files_push_s"),
            "small_files_api_speedup_vs_scp": b("small_files_scp_s") / b("small_files_push_api_s"),
            "small_files_speedup_vs_rsync": b("small_files_rsync_s") / b("small_files_push_s"),
            "redeploy_s": b("redeploy_s"),
            "redeploy_api_s": b("redeploy_api_s"),
            "redeploy_payload_bytes": most("redeploy_payload_bytes"),
            "redeploy_rsync_s": b("redeploy_rsync_s"),
            "redeploy_over_rsync": b("redeploy_s") / b("redeploy_rsync_s"),
            "redeploy_api_over_rsync": b("redeploy_api_s") / b("redeploy_rsync_s"),
            "one_change_payload_bytes": most("one_change_payload_bytes"),
            "one_change_file_bytes": most("one_change_file_bytes"),
            "one_change_s": b("one_change_s"),
            "cli_startup_s": {k.split(":", 1)[1]: self.median(k) for k in self.samples if k.startswith("cli_startup:")},
            "bundle_files": self.facts["bundle_files"],
            "bundle_bytes": self.facts["bundle_bytes"],
            "small_files": self.n_files,
            "small_file_bytes": 4096,
            "own_redeploy_s": b("own_redeploy_s"),
            "own_redeploy_payload_bytes": most("own_redeploy_payload_bytes"),
            "own_redeploy_over_redeploy": b("own_redeploy_s") / b("redeploy_s"),
            "run_tree_s": b("run_tree_s"),
            "run_tree_disk_bytes": most("run_tree_disk_bytes"),
        }

    def _rtt(self) -> dict:
        b = self.best
        return {
            "rtt_ms": self.rtt_ms,
            "small_files_push_s": b("rtt:small_files_push_s"),
            "small_files_scp_s": b("rtt:small_files_scp_s"),
            "small_files_rsync_s": b("rtt:small_files_rsync_s"),
            "small_files_speedup_vs_scp": b("rtt:small_files_scp_s") / b("rtt:small_files_push_s"),
            "small_files_speedup_vs_rsync": b("rtt:small_files_rsync_s") / b("rtt:small_files_push_s"),
            "redeploy_s": b("rtt:redeploy_s"),
            "redeploy_rsync_s": b("rtt:redeploy_rsync_s"),
            "redeploy_over_rsync": b("rtt:redeploy_s") / b("rtt:redeploy_rsync_s"),
        }

    def _link(self) -> dict:
        b = self.best
        firsts = self.facts["link_first_push"]
        w = self.facts["link_wire_bytes"]
        return {
            "mbit": self.mbit,
            "rtt_ms": self.rtt_ms,
            "first_push_s": b("link:first_push_s"),
            "rsync_s": b("link:rsync_s"),
            "rsync_z_s": b("link:rsync_z_s"),
            "link_first_over_rsync": b("link:first_push_s") / b("link:rsync_s"),
            "link_first_over_rsync_z": b("link:first_push_s") / b("link:rsync_z_s"),
            "health_s": self.median("health:link:first_push_s"),
            "first_push_without_health_s": b("link:first_push_s:without_health"),
            "link_first_over_rsync_without_health": b("link:first_push_s:without_health") / b("link:rsync_s"),
            "link_first_over_rsync_z_without_health": b("link:first_push_s:without_health") / b("link:rsync_z_s"),
            "first_push_bytes": min(f["wire_bytes"] for f in firsts),
            "first_push_content_bytes": firsts[0]["payload_bytes"],
            "first_push_compressed_objects": firsts[0]["compressed_objects"],
            "first_push_compress_levels": firsts[-1].get("compress_levels"),
            "link_bytes_per_s_measured": [f["link_bytes_per_s"] for f in firsts],
            "wire_bytes": w,
            "small_files_push_s": b("link:small_files_push_s"),
            "small_files_rsync_s": b("link:small_files_rsync_s"),
            "link_small_files_over_rsync": b("link:small_files_push_s") / b("link:small_files_rsync_s"),
            "redeploy_s": b("link:redeploy_s"),
            "redeploy_rsync_s": b("link:redeploy_rsync_s"),
            "link_redeploy_over_rsync": b("link:redeploy_s") / b("link:redeploy_rsync_s"),
        }

    def _cpu(self) -> dict:
        """Host and board CPU seconds per method (medians)."""
        out = {}
        for k in self.samples:
            if k.startswith("cpu_host:") and "rsync_fill" not in k:
                method = k.split(":", 1)[1]
                out[method.removesuffix("_s")] = {
                    "host": round(self.median(k), 3),
                    "board": round(self.median("cpu_board:" + method), 3),
                }
        return out

    def _phases(self) -> dict:
        """The in-process pushes split into connect / plan / transfer / commit (medians)."""
        out: dict[str, dict] = {}
        for k in self.samples:
            if k.startswith("phase:"):
                _, key, phase = k.split(":")
                out.setdefault(key.removesuffix("_s"), {})[phase] = round(self.median(k), 4)
        return out

    def _machine(self) -> dict:
        return {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
            "paramiko": __import__("paramiko").__version__,
            **{k: self.facts[k] for k in ("openssh", "openssh_cipher", "paramiko_cipher") if k in self.facts},
        }


# What each figure includes (in the JSON as "included").
INCLUDED = {
    "first_push_s, redeploy_s, small_files_push_s, one_change_s": "`python -m deploy push board1 --json` "
    "subprocess end to end (interpreter start-up, inventory, bundle with warm hash cache, SSH connect, plan, "
    "transfer, board verify+assemble+switch); wheel cache and board facts warmed by a --dry-run push first",
    "*_api_s": "in-process: inventory load + new ssh.Connection + push.push + close (no interpreter start-up)",
    "first_push_cold_hash_s": "one first push with an empty hash cache (hashes the whole bundle once)",
    "health_s": "the health check's share of a CLI first push (its row's health.seconds, median); "
    "*_without_health: the push's wall time minus it, what compares with rsync/scp, which check nothing; "
    "first_over_rsync, first_over_scp, link_first_over_rsync(_z): with the health check (the push as a user types it)",
    "scp_r_s, small_files_scp_s": "`scp -r -q` into a fresh directory, its own ssh start-up and connection included",
    "rsync_s, small_files_rsync_s": "`rsync -a` into a fresh directory; redeploy_rsync_s: the same again, nothing changed",
    "small_files_push_s": "1000 new files (new content each round) hashed and sent; the rest of the release "
    "is already on the board (hard-linked)",
    "cli_startup_s": "subprocess wall time, median: help = `python -m deploy --help`; status = `python -m deploy "
    "status board1` against this run's sandbox board with the app pushed, on the warm connection the previous command "
    "left (one board op included); status_no_persist = the same with its own SSH connect (--no-persist); "
    "imports = `python -c 'import deploy.cli, deploy.ops.push, deploy.link.ssh'`",
    "cpu_s": "host: this process + children (CLI/scp/rsync/ssh), including the /proc sampler's ~1-2% of a "
    "core; board: processes under the sandbox sshd (sshd sessions, the helper / sftp / rsync server)",
    "rtt": "through a local relay (deploy.testing.relay, its own process) adding rtt_ms round-trip latency (no "
    "bandwidth limit); CLI push to an inventory board pointing at the relay, scp/rsync with -P/-p to the relay",
}


def table(r: dict) -> str:
    rows = [
        ("first push (demo bundle)", r["first_push_s"], r["first_push_api_s"], r["scp_r_s"], r["rsync_s"],
         f"push/scp {r['first_over_scp']:.2f}"),
        (f"{r['small_files']} x 4 KiB files", r["small_files_push_s"], r["small_files_push_api_s"], r["small_files_scp_s"],
         r["small_files_rsync_s"], f"scp/push {r['small_files_speedup_vs_scp']:.2f}x"),
        ("redeploy, nothing changed", r["redeploy_s"], r["redeploy_api_s"], None, r["redeploy_rsync_s"],
         f"push/rsync {r['redeploy_over_rsync']:.2f}"),
    ]
    if "rtt" in r:
        t = r["rtt"]
        rows += [
            (f"  same, RTT {t['rtt_ms']:g} ms: small files", t["small_files_push_s"], None, t["small_files_scp_s"],
             t["small_files_rsync_s"], f"scp/push {t['small_files_speedup_vs_scp']:.2f}x"),
            (f"  RTT {t['rtt_ms']:g} ms: redeploy", t["redeploy_s"], None, None, t["redeploy_rsync_s"],
             f"push/rsync {t['redeploy_over_rsync']:.2f}"),
        ]
    lines = [f"{'':32} {'push cli':>9} {'push api':>9} {'scp -r':>9} {'rsync -a':>9}  ratio"]
    for name, *vals, ratio in rows:
        cells = " ".join(f"{v:9.3f}" if v is not None else f"{'-':>9}" for v in vals)
        lines.append(f"{name:32} {cells}  {ratio}")
    if "link" in r:
        k = r["link"]
        lines.append(f"link {k['mbit']:g} Mbit/s, RTT {k['rtt_ms']:g} ms: first push {k['first_push_s']:.2f} s vs rsync -a "
                     f"{k['rsync_s']:.2f} s ({k['link_first_over_rsync']:.2f}), rsync -az {k['rsync_z_s']:.2f} s "
                     f"({k['link_first_over_rsync_z']:.2f}); small files {k['link_small_files_over_rsync']:.2f}; "
                     f"redeploy {k['link_redeploy_over_rsync']:.2f}; wire MB " +
                     ", ".join(f"{m} {v / 1e6:.1f}" for m, v in k["wire_bytes"].items()))
        lines.append(f"first push bytes {r['first_push_bytes'] / 1e6:.1f} MB on the link "
                     f"({r['first_push_bytes_over_baseline']:.2f} of {BASELINE_FIRST_PUSH_BYTES / 1e6:.1f} MB); "
                     f"content {r['first_push_content_bytes'] / 1e6:.1f} MB")
    if "first_push_bytes_aarch64" in r:
        lines.append(f"aarch64 release {r['aarch64_release']['content_bytes'] / 1e6:.1f} MB, "
                     f"stream {r['first_push_bytes_aarch64'] / 1e6:.1f} MB")
    lines.append(f"one change: payload {r['one_change_payload_bytes']} B for a {r['one_change_file_bytes']} B file; "
                 f"redeploy payload {r['redeploy_payload_bytes']} B")
    lines.append("cpu seconds (host / board): " + ", ".join(
        f"{k} {v['host']:.2f}/{v['board']:.2f}" for k, v in r["cpu_s"].items() if not k.startswith("rtt:")))
    lines.append("cli start-up: " + ", ".join(f"{k} {v:.3f} s" for k, v in r["cli_startup_s"].items()))
    lines.append(f"seconds; {r['statistic']}")
    for name, ok in r["targets"].items():
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds per measurement (default 3)")
    ap.add_argument("--files", type=int, default=1000, help="small files of 4 KiB (default 1000)")
    ap.add_argument("--rtt-ms", type=float, default=2.0, help="also measure through a relay with this RTT (0: skip)")
    ap.add_argument("--mbit", type=float, default=100.0,
                    help="also measure through a relay limited to this many Mbit/s (with --rtt-ms; 0: skip)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the throwaway project (the board is stopped anyway)")
    args = ap.parse_args()
    if not demo_built(DEMO):
        log("building the demo model and photos once (deploy model demo)")
        build_demo(DEMO)
    for tool in ("ssh", "scp", "rsync"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: the baselines need OpenSSH's ssh/scp and rsync")
    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="push-bench-"))
    bench = Bench(root, max(1, args.repeat), args.files, args.rtt_ms, args.mbit)
    try:
        bench.setup()
        bench.cli_startup()
        bench.first_and_redeploy()
        bench.small_files()
        bench.one_change()
        bench.own_app()
        if args.rtt_ms > 0:
            bench.with_latency()
        if args.mbit > 0:
            bench.with_link()
        bench.facts["aarch64"] = bench.aarch64_bytes()
        result = bench.result()
    finally:
        bench.stop_relay()
        if bench.teardown() and not args.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    log(f"done in {result['wall_s']} s")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
