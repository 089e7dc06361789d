"""Fleet push: ``deploy push all`` on eight boards behind shaped links vs one board, Ansible and pyinfra, same run.

    python benchmarks/fleet.py [--json] [--repeat 3] [--boards 8] [--mbit 50] [--rtt-ms 2]
                               [--tools ansible,pyinfra] [--no-install] [--slow-s 60] [--tiny] [--keep-tmp]

Starts ``--boards`` sandbox boards (real OpenSSH sshd processes on 127.0.0.1) in a throwaway project
(``deploy sandbox up``), and in front of each one a relay of its own (``deploy.testing.relay``, one
process per board) that shapes that board's link: ``--mbit`` each way, shared by every connection to
the board, and ``--rtt-ms`` of round-trip time. Every tool reaches every board only through its
relay, with the host key checked against the project's ``.deploy/known_hosts`` (the relay's port is
recorded there as well: ``Project.relay_board``) and the sandbox client key. At the end it stops
exactly what it started: the relays by their PIDs, the boards with ``deploy sandbox down --purge``.
Ansible and pyinfra come from the benchmark's own venv (``~/.cache/atlas-deploy/bench-tools``, pip-installed
there on first use unless ``--no-install``; pyinfra pins paramiko < 5, so not into this environment) or PATH.

**The link.** 50 Mbit/s and 2 ms by default, so the link and not this 2-core machine's CPU bounds the
push, as on a lab network: the run first pushes the release to all boards straight to their sshd (no
relay, no limit) and reports what the machine can push in all (``machine_limit.mb_s``, ~107 MB/s here)
against what the links carry in all (8 x 50 Mbit/s = 50 MB/s, ``links_share`` ~0.47). At 100 Mbit/s the
eight links would ask for ~100 MB/s, about all the CPU can give, and the fleet figure would measure the
CPU. The relays' own CPU is reported (``cpu.*.relays_cpu_s``).

Figures (every wall time is the best of ``--repeat`` rounds; in each round every method runs once,
the order rotated round by round so drift favours none; ratios compare figures of this one run):

* ``single_first_s``   ``python -m deploy push link1 --no-health-check --json`` onto a board without
                       the app (a fresh app name per round), as a subprocess; ``single_redeploy_s``
                       the same again, nothing changed.
* ``fleet_first_s``    ``python -m deploy push all --no-health-check --json`` onto all boards at once
                       (default ``--forks 8``); ``fleet_redeploy_s`` the same again (0 payload bytes).
  ``fleet_over_single`` = fleet_first_s / single_first_s (target <= 1.5).
* ``health_check_s``   the health check's own cost on the fleet: ``deploy push all --json`` right after
                       the no-change redeploy (nothing to send; the unchecked current release is checked
                       on every board) minus ``fleet_redeploy_s``; ``health_check_board_s`` the median
                       board's own check (its row's ``health.seconds``).
* ``fleet_first_checked_s``  ``deploy push all --json`` onto a fresh app: the first push as a user types it,
                       health check included. ``canary_first_s``: ``deploy push all --canary 1 --json`` onto a
                       fresh app, the other boards transferring while the canary checks (their switch waits for
                       its pass); ``canary_first_no_overlap_s`` the same with ``--no-overlap`` (the old order:
                       the next stage starts after the canary's check); ``canary_overlapped_boards``: boards whose
                       transfer began before the canary's check ended (from the rows' ``timeline``).
* ``ansible_*_s``      ``ansible-playbook`` (forks 8) with one ``ansible.posix.synchronize`` task: the
                       staged release into a fresh directory per round on every board, then the same
                       again, unchanged (redeploy).
* ``pyinfra_*_s``      ``pyinfra --parallel 8`` running one ``files.sync`` of the same tree, likewise.
  ``first_over_ansible`` etc. = our fleet figure / theirs (targets <= 1.0 first push, <= 0.5 redeploy),
  **without** the health check (the tools check nothing; also as ``first_over_<tool>_without_health``);
  ``first_checked_over_<tool>`` and ``canary_first_over_<tool>`` **with** it.
  A tool whose first round (first push + redeploy) takes longer than ``--slow-s`` is not repeated
  (``measured_once``; pyinfra takes ~300 s here): ``runs`` gives the sample count of every figure.

The staged tree is the release our push sends, materialised locally from the bundle's entries (the
app code, app.json, the model, labels, images, health probe and the ``site/`` wheel tree): the same
paths, bytes and modes. In round 1 every method's copy on board1 is compared with it (``checks``).
``wire_bytes`` is what crossed the relays per push (all boards, SSH framing and any compression
included), from the relays' own counters; ``payload_bytes`` what our push counted as file content.

Diagnostics for a missed target (``misses``): ``cpu`` is the machine's busy share over each figure's
best run (from /proc/stat: 1.0 = both cores busy throughout; other sessions' load included) and the
relays' CPU seconds; ``link_use`` is how much of each board's link a first push used (bytes up per board
/ (wall time x rate)).

Human-readable progress goes to stderr; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy import inventory as inventory_mod  # noqa: E402
from deploy.link import ssh as ssh_mod  # noqa: E402
from deploy.ops import push as push_mod  # noqa: E402
from deploy.release import wheelhouse  # noqa: E402
from deploy.release.hashcache import HashCache  # noqa: E402
from deploy.targets import PROFILES  # noqa: E402
from deploy.testing import (  # noqa: E402
    DEMO,
    SANDBOX_BOARD,
    CommandFailed,
    Project,
    build_demo,
    demo_built,
    rounded,
    ssh_argv,
)
from deploy.testing import relay as relay_mod  # noqa: E402

STAGED_APP = "classify-staged"  # the app name in the staged tree's app.json (ours: a fresh name per round)
TOOLS_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atlas-deploy" / "bench-tools"
TOOL_PACKAGES = {"ansible": "ansible", "pyinfra": "pyinfra"}  # tool -> PyPI package
TOOL_BINARY = {"ansible": "ansible-playbook", "pyinfra": "pyinfra"}

TARGETS = {
    "fleet_over_single<=1.5": ("fleet_over_single", 1.5),
    "first_over_ansible<=1.0": ("first_over_ansible", 1.0),
    "redeploy_over_ansible<=0.5": ("redeploy_over_ansible", 0.5),
    "first_over_pyinfra<=1.0": ("first_over_pyinfra", 1.0),
    "redeploy_over_pyinfra<=0.5": ("redeploy_over_pyinfra", 0.5),
    # issue 24: compression once per fleet, the level from the link, warm connections
    "fleet_over_single<=1.3": ("fleet_over_single", 1.3),
    "first_over_ansible<=0.7": ("first_over_ansible", 0.7),
}

# Ansible's own default ssh_args are "-C -o ControlMaster=auto -o ControlPersist=60s"; -C is left out:
# synchronize already has rsync compress (its default), and compressing twice only costs CPU.
ANSIBLE_SSH_ARGS = "-o ControlMaster=auto -o ControlPersist=60s"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    total = sum(v[:8])  # guest time is already in user
    return total - idle, total


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except OSError:
        return "?"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "?"


class Fleet:
    def __init__(self, root: Path, args: argparse.Namespace):
        self.root = root
        self.n = args.boards
        self.repeat = max(1, args.repeat)
        self.mbit = args.mbit
        self.mbit_down = args.mbit_down or args.mbit
        self.rtt_ms = args.rtt_ms
        self.buffer_ms = args.buffer_ms
        self.tiny = args.tiny
        self.health = not (args.no_health_check_figure or args.tiny)  # a tiny site/ has no numpy for the agent
        self.tools: dict[str, Path] = {}  # tool -> its binary
        self.wanted_tools = [t for t in args.tools.split(",") if t.strip()] if args.tools else []
        self.install = not args.no_install
        self.slow_s = args.slow_s
        self.slow: dict[str, float] = {}  # tool -> seconds of its first round, when over slow_s
        self.samples: dict[str, list[float]] = {}
        self.diag: dict[str, list[dict]] = {}  # key -> per-sample {busy, relay_cpu, wire}
        self.facts: dict = {"skipped": {}, "checks": {}}
        self.relays: list[relay_mod.RelayProcess] = []
        self.sandbox_rows: dict[str, dict] = {}
        self.names = [f"board{i + 1}" for i in range(self.n)]
        self.links = [f"link{i + 1}" for i in range(self.n)]
        env = {"CLASSIFY_MODE": "bench"}
        photos = ("coffee.jpg",) if self.tiny else None
        self.project = Project(root, DEMO, app=STAGED_APP, photos=photos, env=env,
                               boards={name: dict(SANDBOX_BOARD) for name in self.names})
        self.sandbox_boards = dict(self.project.boards)
        if self.tiny:
            self._tiny_wheels()

    # ------------------------------------------------------------ plumbing

    def _tiny_wheels(self) -> None:
        """A wheel cache whose site/ tree is three small files, for every CPython a board may have (--tiny: a
        small release, so the test is quick; the agent then imports the board's own packages, if any)."""
        cache = self.root / "wheels"
        target = PROFILES[SANDBOX_BOARD["target"]]
        for minor in range(7, 16):
            site = wheelhouse.site_dir(target, f"3.{minor}", cache)
            (site / "tiny").mkdir(parents=True, exist_ok=True)
            for k in range(3):
                (site / "tiny" / f"f{k}.py").write_text(f"# tiny site file {k}\n")
            site.with_name(site.name + ".json").write_text(json.dumps({"python": f"3.{minor}", "wheels": []}))
        self.project.environ["DEPLOY_WHEEL_CACHE"] = str(cache)
        os.environ["DEPLOY_WHEEL_CACHE"] = str(cache)  # for the in-process bundle (materialise)

    def use(self, boards: str, app: str) -> None:
        """Rewrite the inventory: the sandbox boards themselves ("sandbox") or the relayed links ("links")."""
        self.project.boards = self.sandbox_boards if boards == "sandbox" else self.link_boards
        self.project.configure(keep=3, app=app)

    def record(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def best(self, key: str) -> float | None:
        return min(self.samples[key]) if self.samples.get(key) else None

    def wire(self) -> dict[str, int]:
        up = down = 0
        for r in self.relays:
            s = r.stats()
            up, down = up + s["up"], down + s["down"]
        return {"up": up, "down": down}

    def timed(self, key: str, argv: list[str], *, cwd: Path | None = None, env: dict | None = None
              ) -> subprocess.CompletedProcess:
        """Run ``argv`` to completion (raises CommandFailed), recording its wall time under ``key`` with the
        machine's busy share, the relays' CPU seconds and the bytes that crossed the relays."""
        w0 = self.wire()
        r0 = sum(proc_cpu(r.pid) for r in self.relays)
        b0, t0j = cpu_jiffies()
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=1800)
        dt = time.perf_counter() - t0
        b1, t1j = cpu_jiffies()
        if r.returncode != 0:
            raise CommandFailed(f"{key}: {shlex.join(argv)} exited {r.returncode}\nstdout: {r.stdout[-3000:]}\n"
                                f"stderr: {r.stderr[-3000:]}")
        w1 = self.wire()
        self.record(key, dt)
        self.diag.setdefault(key, []).append({
            "s": dt,
            "busy": (b1 - b0) / max(1, t1j - t0j),
            "relay_cpu_s": sum(proc_cpu(r.pid) for r in self.relays) - r0,
            "wire_up": w1["up"] - w0["up"],
            "wire_down": w1["down"] - w0["down"],
        })
        return r

    def deploy(self, key: str, *args: str) -> list[dict]:
        r = self.timed(key, self.project.argv(*args), cwd=self.root, env=self.project.environ)
        return json.loads(r.stdout)["boards"]

    def forget(self, rel: str, boards: list[str] | None = None) -> None:
        """Remove a directory from boards' homes (untimed), then flush dirty pages so each run starts alike."""
        for name in boards or self.names:
            shutil.rmtree(Path(self.sandbox_rows[name]["home"]) / rel, ignore_errors=True)
        os.sync()

    # ------------------------------------------------------------ set-up

    def find_tools(self) -> None:
        """Each wanted tool from the benchmark's venv or PATH; missing ones pip-installed into the venv
        (unless --no-install, then skipped)."""
        def where(tool: str) -> Path | None:
            venv_bin = TOOLS_VENV / "bin" / TOOL_BINARY[tool]
            if venv_bin.is_file():
                return venv_bin
            found = shutil.which(TOOL_BINARY[tool])
            return Path(found) if found else None

        missing = [t for t in self.wanted_tools if where(t) is None]
        if missing and self.install:
            log(f"installing {', '.join(TOOL_PACKAGES[t] for t in missing)} into {TOOLS_VENV} (pip, once)")
            if not (TOOLS_VENV / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True)
            subprocess.run([str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", *(TOOL_PACKAGES[t] for t in missing)], check=True)
        for t in self.wanted_tools:
            path = where(t)
            if path is None:
                self.facts["skipped"][t] = "not installed (--no-install)"
                log(f"skipping {t}: {TOOL_BINARY[t]} not found")
            else:
                self.tools[t] = path
        if "ansible" in self.tools:
            b = self.tools["ansible"].parent
            self.facts["ansible"] = tool_version([str(b / "ansible"), "--version"])
            py = b / "python"
            self.facts["ansible_package"] = tool_version([str(py if py.exists() else sys.executable), "-c",
                                                          "import importlib.metadata as m; print(m.version('ansible'))"])
            self.facts["ansible_posix"] = tool_version([str(b / "ansible-galaxy"), "collection", "list",
                                                        "ansible.posix", "--format", "json"])
            try:
                cols = json.loads(self.facts["ansible_posix"]) if self.facts["ansible_posix"].startswith("{") else {}
            except ValueError:
                cols = {}
            self.facts["ansible_posix"] = next((v["ansible.posix"]["version"] for v in cols.values()
                                                if "ansible.posix" in v), self.facts["ansible_posix"])
        if "pyinfra" in self.tools:
            self.facts["pyinfra"] = tool_version([str(self.tools["pyinfra"]), "--version"])
            b = self.tools["pyinfra"].parent
            py = b / "python"
            self.facts["pyinfra_paramiko"] = tool_version([str(py if py.exists() else sys.executable), "-c",
                                                           "import paramiko; print(paramiko.__version__)"])
        self.facts["rsync"] = tool_version(["rsync", "--version"])
        self.facts["openssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()

    def setup(self) -> None:
        self.find_tools()
        log(f"project {self.root}: starting {self.n} sandbox boards")
        self.use("sandbox", STAGED_APP)
        rows = self.project.deploy_json("sandbox", "up", *self.names, timeout=600)
        self.sandbox_rows = {row["name"]: row for row in rows}
        self.link_boards = {}
        for name, link in zip(self.names, self.links, strict=True):
            relay = relay_mod.spawn(self.sandbox_rows[name]["port"], rtt_ms=self.rtt_ms, mbit=self.mbit,
                                    mbit_down=self.mbit_down, buffer_ms=self.buffer_ms,
                                    stats=self.root / f"relay-{link}.json")
            self.relays.append(relay)
            self.link_boards[link] = self.project.relay_board(relay.port, name)
        for name in self.names:  # the tools' destination parent, owned by the board's user (rsync makes one level)
            subprocess.run([*ssh_argv(self.sandbox_rows[name]), "mkdir -p bench"], check=True, capture_output=True)
        self.known_hosts = Path(self.sandbox_rows[self.names[0]]["known_hosts"])
        self.key = self.link_boards[self.links[0]]["key"]
        self.use("links", STAGED_APP)
        # warm what a user's machine has warm: the wheel cache, the hash cache, each board's facts
        self.project.deploy("push", "all", "--dry-run", "--json", timeout=900)
        self.stage()

    def stage(self) -> None:
        """The release tree exactly as our push sends it (paths, bytes, modes), as a local directory: what
        Ansible and pyinfra push."""
        tree = self.root / "release"
        inv = inventory_mod.load(self.project.inventory)
        board = inv.boards[self.links[0]]
        with ssh_mod.Connection(ssh_mod.endpoint_for(inv, board)) as conn:
            b = push_mod.build_for(inv, board, conn, HashCache(inv.state_dir / "hashcache.json"))
        tops: dict[str, list[int]] = {}
        for e in b.entries:
            out = tree / e.path
            out.parent.mkdir(parents=True, exist_ok=True)
            if e.data is not None:
                out.write_bytes(e.data)
            else:
                shutil.copyfile(e.src, out)
            os.chmod(out, e.mode)
            top = tops.setdefault(e.path.split("/", 1)[0] if "/" in e.path else "(top-level files)", [0, 0])
            top[0] += 1
            top[1] += e.size
        self.tree = tree
        self.facts["release"] = {"files": len(b.entries), "bytes": b.total_bytes,
                                 "by_top_dir": {k: {"files": v[0], "bytes": v[1]} for k, v in sorted(tops.items())}}
        log(f"release: {len(b.entries)} files, {b.total_bytes / 1e6:.1f} MB; staged at {tree}")
        if self.tiny and b.total_bytes > 50e6:
            raise SystemExit(f"--tiny: the release is {b.total_bytes / 1e6:.0f} MB; the tiny wheel cache was not used")
        self.write_ansible()
        self.write_pyinfra()

    def write_ansible(self) -> None:
        d = self.root / "ansible"
        d.mkdir(exist_ok=True)
        (d / "ansible.cfg").write_text(
            "[defaults]\n"
            "inventory = hosts.ini\n"
            "forks = 8\n"
            "host_key_checking = True\n"
            "retry_files_enabled = False\n"
            "interpreter_python = auto_silent\n"
            f"local_tmp = {d / 'tmp'}\n"
            "[ssh_connection]\n"
            f"ssh_args = {ANSIBLE_SSH_ARGS}\n"
            f"control_path_dir = {d / 'cp'}\n"
        )
        common = f"-o UserKnownHostsFile={self.known_hosts} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes"
        lines = ["[boards]"]
        for name, link in zip(self.names, self.links, strict=True):
            lb = self.link_boards[link]
            lines.append(f"{link} ansible_host={lb['host']} ansible_port={lb['port']} ansible_user={lb['user']} "
                         f"ansible_ssh_private_key_file={lb['key']} board_home={self.sandbox_rows[name]['home']}")
        lines += ["", "[boards:vars]", f"ansible_ssh_common_args='{common}'", ""]
        (d / "hosts.ini").write_text("\n".join(lines))
        (d / "push.yml").write_text(
            "- hosts: boards\n"
            "  gather_facts: false\n"
            "  tasks:\n"
            "    - name: release\n"
            "      ansible.posix.synchronize:\n"
            f"        src: {self.tree}/\n"
            "        dest: \"{{ board_home }}/bench/{{ dest }}/\"\n"
            "        verify_host: true\n"
            "        use_ssh_args: true\n"
        )
        self.ansible_dir = d

    def write_pyinfra(self) -> None:
        d = self.root / "pyinfra"
        d.mkdir(exist_ok=True)
        hosts = []
        for name, link in zip(self.names, self.links, strict=True):
            lb = self.link_boards[link]
            hosts.append((link, {
                "ssh_hostname": lb["host"], "ssh_port": lb["port"], "ssh_user": lb["user"], "ssh_key": lb["key"],
                "ssh_known_hosts_file": str(self.known_hosts), "ssh_strict_host_key_checking": "yes",
                "board_home": self.sandbox_rows[name]["home"],
            }))
        (d / "inventory.py").write_text(f"boards = {hosts!r}\n")
        (d / "push.py").write_text(
            "import os\n"
            "from pyinfra import host\n"
            "from pyinfra.operations import files\n\n"
            f"files.sync(name='release', src={str(self.tree)!r},\n"
            "           dest=host.data.board_home + '/bench/' + os.environ['BENCH_DEST'])\n"
        )
        self.pyinfra_dir = d

    # ------------------------------------------------------------ methods

    def run_single(self, i: int) -> None:
        app = f"classify-single{i}"
        self.use("links", app)
        rows = self.deploy("single_first_s", "push", self.links[0], "--no-health-check", "--json")
        assert rows[0]["ok"] and rows[0]["payload_bytes"] > 0, rows
        self.record("single_first_payload_bytes", rows[0]["payload_bytes"])
        os.sync()
        rows = self.deploy("single_redeploy_s", "push", self.links[0], "--no-health-check", "--json")
        assert rows[0]["ok"] and rows[0]["payload_bytes"] == 0, rows
        self.forget(f"HIAI_PROJECTS/{app}", self.names[:1])

    def run_fleet(self, i: int) -> None:
        app = f"classify-fleet{i}"
        self.use("links", app)
        rows = self.deploy("fleet_first_s", "push", "all", "--no-health-check", "--json")
        assert len(rows) == self.n and all(r["ok"] for r in rows), rows
        home = Path(self.sandbox_rows[self.names[0]]["home"])
        self.check_tree("deploy", home / "HIAI_PROJECTS" / app / "releases" / rows[0]["release"], ("MANIFEST.json",),
                        {"app.json": (json.dumps(app), json.dumps(STAGED_APP)), "env.sh": (app, STAGED_APP)})
        self.record("fleet_first_payload_bytes", sum(r["payload_bytes"] for r in rows))
        os.sync()
        rows = self.deploy("fleet_redeploy_s", "push", "all", "--no-health-check", "--json")
        assert all(r["ok"] and r["payload_bytes"] == 0 for r in rows), rows
        self.record("fleet_redeploy_payload_bytes", sum(r["payload_bytes"] for r in rows))
        if self.health:
            rows = self.deploy("fleet_redeploy_checked_s", "push", "all", "--json")
            assert all(r["ok"] and r["payload_bytes"] == 0 for r in rows), rows
            self.facts.setdefault("health_rows", rows[0].get("health"))
            statuses = [(r.get("health") or {}).get("status") for r in rows]
            if any(s != "passed" for s in statuses):
                raise CommandFailed(f"health check did not pass on every board: {statuses}")
            for r in rows:
                secs = (r.get("health") or {}).get("seconds")
                if secs is not None:
                    self.record("health_board_s", secs)
        self.forget(f"HIAI_PROJECTS/{app}")
        if self.health:
            self.run_checked_firsts(i)

    def run_checked_firsts(self, i: int) -> None:
        """First pushes as a user types them (health check included): all at once, then ``--canary 1`` with
        the next stage's transfers overlapping the canary's check, then ``--canary 1 --no-overlap``."""
        for key, flags in (("fleet_first_checked_s", ()), ("canary_first_s", ("--canary", "1")),
                           ("canary_first_no_overlap_s", ("--canary", "1", "--no-overlap"))):
            app = f"classify-{key.removesuffix('_s').replace('_', '-')}{i}"
            self.use("links", app)
            rows = self.deploy(key, "push", "all", *flags, "--json")
            assert len(rows) == self.n and all(r["ok"] and r["health"]["status"] == "passed" for r in rows), rows
            if key == "canary_first_s":  # later-stage boards whose release was staged while the canary checked
                canary_checked = rows[0]["timeline"]["checked"]
                self.record("canary_overlapped_boards", sum(1 for r in rows[1:] if r["timeline"]["sent"] < canary_checked))
                self.record("canary_gate_s", max(r["gate_s"] for r in rows[1:]) if rows[1:] else 0.0)
            self.forget(f"HIAI_PROJECTS/{app}")

    def run_ansible(self, i: int) -> None:
        dest = f"ansible{i}"
        argv = [str(self.tools["ansible"]), "push.yml", "-e", f"dest={dest}"]
        env = {**os.environ, "ANSIBLE_CONFIG": str(self.ansible_dir / "ansible.cfg"),
               "ANSIBLE_HOME": str(self.ansible_dir / "home"), "ANSIBLE_NOCOLOR": "1"}
        r = self.timed("ansible_first_s", argv, cwd=self.ansible_dir, env=env)
        self.facts.setdefault("ansible_recap_first", r.stdout.strip().splitlines()[-self.n:])
        self.check_tree("ansible", Path(self.sandbox_rows[self.names[0]]["home"]) / "bench" / dest)
        os.sync()
        r = self.timed("ansible_redeploy_s", argv, cwd=self.ansible_dir, env=env)
        self.facts.setdefault("ansible_recap_redeploy", r.stdout.strip().splitlines()[-self.n:])
        self.forget(f"bench/{dest}")

    def run_pyinfra(self, i: int) -> None:
        dest = f"pyinfra{i}"
        argv = [str(self.tools["pyinfra"]), "-y", "--parallel", "8", "inventory.py", "push.py"]
        env = {**os.environ, "BENCH_DEST": dest, "PYINFRA_PROGRESS": "off", "TERM": "dumb"}
        r = self.timed("pyinfra_first_s", argv, cwd=self.pyinfra_dir, env=env)
        self.facts.setdefault("pyinfra_out_first", r.stdout.strip().splitlines()[-12:])
        self.check_tree("pyinfra", Path(self.sandbox_rows[self.names[0]]["home"]) / "bench" / dest)
        os.sync()
        r = self.timed("pyinfra_redeploy_s", argv, cwd=self.pyinfra_dir, env=env)
        self.facts.setdefault("pyinfra_out_redeploy", r.stdout.strip().splitlines()[-12:])
        self.forget(f"bench/{dest}")

    def check_tree(self, who: str, there: Path, board_adds: tuple[str, ...] = (),
                   renamed: dict[str, tuple[str, str]] | None = None) -> None:
        """Once per method (round 1, untimed): what it left on board1 is the staged tree, byte for byte and mode for mode."""
        if f"{who}_tree" in self.facts["checks"]:
            return
        diff = compare_trees(self.tree, there, board_adds, renamed)
        same = "identical to the staged release (paths, bytes, modes)"
        if renamed:
            same += "; " + ", ".join(f"{k} but for the app name ({a} for {b}: a fresh app per round)"
                                     for k, (a, b) in renamed.items())
        if board_adds:
            same += f"; plus what the board writes itself: {', '.join(board_adds)}"
        self.facts["checks"][f"{who}_tree"] = diff or same
        if diff:
            log(f"warning: {who}'s copy on {self.names[0]} differs from the staged release: {diff}")

    def probe(self) -> None:
        """Once, untimed for the figures: the same fleet push straight to the boards' sshd (no relay, no link
        limit), so the machine's CPU alone bounds it: how many MB/s this machine can push in all, against
        what the shaped links ask for."""
        self.use("sandbox", "probe")
        self.project.deploy("push", "all", "--dry-run", "--json", timeout=900)  # facts for the board names
        rows = self.deploy("probe_unshaped_fleet_first_s", "push", "all", "--no-health-check", "--json")
        assert all(r["ok"] for r in rows), rows
        self.forget("HIAI_PROJECTS/probe")
        self.use("links", STAGED_APP)

    def rounds(self) -> None:
        methods = ["single", "fleet", *self.tools]
        run = {"single": self.run_single, "fleet": self.run_fleet, "ansible": self.run_ansible,
               "pyinfra": self.run_pyinfra}
        for i in range(self.repeat):
            k = i % len(methods)
            for m in methods[k:] + methods[:k]:  # rotated so drift favours no method
                if m in self.slow:
                    continue
                t0 = time.perf_counter()
                run[m](i)
                if m in self.tools and time.perf_counter() - t0 > self.slow_s:
                    self.slow[m] = time.perf_counter() - t0
                    log(f"{m} took {self.slow[m]:.0f} s (> --slow-s {self.slow_s:g}): measured once, not repeated")
            last = {key: v[-1] for key, v in self.samples.items() if key.endswith("_s") and not key.startswith("probe_")}
            log(f"round {i + 1}/{self.repeat}: " + ", ".join(f"{key.removesuffix('_s')} {v:.2f}" for key, v in last.items())
                + f" s (load {os.getloadavg()[0]:.2f})")

    # ------------------------------------------------------------ report

    def checked_firsts(self) -> dict:
        """The first pushes with their health check, and the staged rollout with and without the overlap."""
        b = self.best
        r = {k: b(k) for k in ("fleet_first_checked_s", "canary_first_s", "canary_first_no_overlap_s")}
        if r["canary_first_s"] and r["canary_first_no_overlap_s"]:
            r["canary_overlap_saves_s"] = r["canary_first_no_overlap_s"] - r["canary_first_s"]
            r["canary_over_no_overlap"] = r["canary_first_s"] / r["canary_first_no_overlap_s"]
            r["canary_over_fleet_first_checked"] = r["canary_first_s"] / r["fleet_first_checked_s"]
        r["canary_overlapped_boards"] = min(self.samples.get("canary_overlapped_boards", [0]))
        r["canary_gate_s"] = b("canary_gate_s")
        return r

    def tool_ratios(self, tool: str, r: dict) -> dict:
        """Our first push and redeploy over ``tool``'s: without the health check (``first_over_<tool>``, also as
        ``..._without_health``: the tools check nothing) and with it (``first_checked_over_<tool>``, and the
        ``--canary 1`` rollout's ``canary_first_over_<tool>``)."""
        out: dict = {f"{tool}_first_s": None, f"{tool}_redeploy_s": None, f"first_over_{tool}": None,
                     f"first_over_{tool}_without_health": None, f"first_checked_over_{tool}": None,
                     f"canary_first_over_{tool}": None, f"redeploy_over_{tool}": None}
        if tool not in self.tools:
            return out
        first, redeploy = self.best(f"{tool}_first_s"), self.best(f"{tool}_redeploy_s")
        out.update({f"{tool}_first_s": first, f"{tool}_redeploy_s": redeploy,
                    f"first_over_{tool}": r["fleet_first_s"] / first,
                    f"first_over_{tool}_without_health": r["fleet_first_s"] / first,
                    f"redeploy_over_{tool}": r["fleet_redeploy_s"] / redeploy})
        if r.get("fleet_first_checked_s"):
            out[f"first_checked_over_{tool}"] = r["fleet_first_checked_s"] / first
        if r.get("canary_first_s"):
            out[f"canary_first_over_{tool}"] = r["canary_first_s"] / first
        return out

    def best_diag(self, key: str) -> dict | None:
        """The diagnostics of the best (fastest) sample of ``key``."""
        if not self.diag.get(key):
            return None
        return min(self.diag[key], key=lambda d: d["s"])

    def result(self) -> dict:
        b = self.best
        r: dict = {
            "boards": self.n,
            "link": {
                "per_board": "one relay process per board (deploy.testing.relay); all of a board's connections "
                             "share its link",
                "mbit_up": self.mbit, "mbit_down": self.mbit_down, "rtt_ms": self.rtt_ms,
                "buffer_ms": self.buffer_ms,
                "seconds_to_carry_release": self.facts["release"]["bytes"] * 8 / (self.mbit * 1e6),
            },
            "release": self.facts["release"],
            "single_first_s": b("single_first_s"),
            "single_redeploy_s": b("single_redeploy_s"),
            "fleet_first_s": b("fleet_first_s"),
            "fleet_redeploy_s": b("fleet_redeploy_s"),
        }
        r["fleet_over_single"] = r["fleet_first_s"] / r["single_first_s"]
        r["fleet_redeploy_over_single"] = r["fleet_redeploy_s"] / r["single_redeploy_s"]
        if self.health:
            r["fleet_redeploy_checked_s"] = b("fleet_redeploy_checked_s")
            r["health_check_s"] = b("fleet_redeploy_checked_s") - b("fleet_redeploy_s")
            r["health_check_board_s"] = sorted(self.samples.get("health_board_s", []))[
                len(self.samples.get("health_board_s", [])) // 2] if self.samples.get("health_board_s") else None
            r.update(self.checked_firsts())
        else:
            r["health_check_s"] = None
        for tool in ("ansible", "pyinfra"):
            r.update(self.tool_ratios(tool, r))
        if self.samples.get("probe_unshaped_fleet_first_s"):
            t = b("probe_unshaped_fleet_first_s")
            cap = self.facts["release"]["bytes"] * self.n / t / 1e6
            demand = self.n * min(self.mbit, self.mbit_down) / 8
            r["machine_limit"] = {
                "unshaped_fleet_first_s": t,
                "mb_s": cap,
                "links_mb_s": demand,
                "links_share": demand / cap,
                "what": f"deploy push all straight to the {self.n} boards' sshd (no relay, no limit), once: the "
                        "release bytes of all boards / wall time is what this machine's CPU can push in all; "
                        "links_mb_s is what the shaped links can carry in all. links_share well below 1: the links, "
                        "not the CPU, bound the fleet push",
                "machine_busy": self.best_diag("probe_unshaped_fleet_first_s")["busy"],
            }
        r["payload_bytes"] = {
            "single_first": int(max(self.samples["single_first_payload_bytes"])),
            "fleet_first": int(max(self.samples["fleet_first_payload_bytes"])),
            "fleet_redeploy": int(max(self.samples["fleet_redeploy_payload_bytes"])),
        }
        r["wire_bytes"] = {}
        r["cpu"] = {}
        r["link_use"] = {}
        rate = self.mbit * 1e6 / 8
        for key in self.samples:
            d = self.best_diag(key)
            if d is None or key.startswith("probe_"):
                continue
            name = key.removesuffix("_s")
            r["wire_bytes"][name] = {"up": d["wire_up"], "down": d["wire_down"]}
            r["cpu"][name] = {"machine_busy": d["busy"], "relays_cpu_s": d["relay_cpu_s"]}
            if name.endswith("_first"):
                boards = 1 if name.startswith("single") else self.n
                r["link_use"][name] = d["wire_up"] / boards / (d["s"] * rate)
        r["targets"] = {}
        r["misses"] = {}
        for name, (key, limit) in TARGETS.items():
            if r.get(key) is None:
                r["targets"][name] = None
                continue
            ok = r[key] <= limit
            r["targets"][name] = ok
            if not ok:
                r["misses"][name] = self.reason(key, r)
        r["tools"] = self.tool_settings()
        r["versions"] = {k: self.facts[k] for k in ("ansible", "ansible_package", "ansible_posix", "pyinfra",
                                                    "pyinfra_paramiko", "rsync", "openssh") if k in self.facts}
        r["versions"]["python"] = platform.python_version()
        r["versions"]["paramiko"] = __import__("paramiko").__version__
        r["checks"] = self.facts["checks"]
        r["runs"] = {k: len(v) for k, v in self.samples.items() if k.endswith("_s")}
        r["measured_once"] = {t: f"its first round took {v:.0f} s (> --slow-s {self.slow_s:g}): not repeated"
                              for t, v in self.slow.items()}
        r["skipped"] = self.facts["skipped"]
        r["statistic"] = (f"wall times: best of {self.repeat} rounds, methods interleaved (order rotated per round); "
                          "wire_bytes, cpu: of the best run; ratios within this run")
        r["samples"] = {k: [round(x, 4) for x in v] for k, v in self.samples.items() if k.endswith("_s")}
        return r

    def reason(self, key: str, r: dict) -> str:
        """A measured account of a missed target: CPU, link and bytes of the two runs compared."""
        ours = "fleet_first" if key in ("fleet_over_single", "first_over_ansible", "first_over_pyinfra") else "fleet_redeploy"
        other = {"fleet_over_single": "single_first"}.get(key) or (
            f"{key.split('_over_')[1]}_{'first' if key.startswith('first') else 'redeploy'}")
        parts = []
        for name in (ours, other):
            d = self.best_diag(name + "_s")
            if d:
                parts.append(f"{name} {d['s']:.2f} s: machine {d['busy'] * 100:.0f}% busy, relays {d['relay_cpu_s']:.1f} "
                             f"CPU-s, {(d['wire_up'] + d['wire_down']) / 1e6:.1f} MB on the wires"
                             + (f", link use {r['link_use'][name] * 100:.0f}%" if name in r["link_use"] else ""))
        a, o = self.best_diag(ours + "_s"), self.best_diag(other + "_s")
        if a and o:
            wa, wo = a["wire_up"] + a["wire_down"], o["wire_up"] + o["wire_down"]
            if r["link_use"].get(ours, 0) >= 0.85:
                parts.append(f"{ours} is link-bound ({r['link_use'][ours] * 100:.0f}% of the links)")
            elif a["busy"] >= 0.9:
                parts.append(f"{ours} is CPU-bound (machine {a['busy'] * 100:.0f}% busy)")
            if other != "single_first" and wo < 0.8 * wa:
                parts.append(f"{other.split('_')[0]} put {wo / wa * 100:.0f}% of our bytes on the wire")
        return "; ".join(parts)

    def tool_settings(self) -> dict:
        out = {
            "deploy": {
                "first": "python -m deploy push all --no-health-check --json (forks 8): the release into "
                         "HIAI_PROJECTS/<app>/releases/<id>/ with current switched, a fresh app name per round",
                "single": "python -m deploy push link1 --no-health-check --json",
                "redeploy": "the same command again, nothing changed (0 payload bytes)",
                "health_check": "python -m deploy push all --json right after the no-change redeploy: checks the "
                                "unchecked current release on every board, sends nothing",
                "first_checked": "python -m deploy push all --json onto a fresh app: the first push with its health "
                                 "check (first_checked_over_<tool>: with it; first_over_<tool>: without it)",
                "canary": "python -m deploy push all --canary 1 --json onto a fresh app (canary_first_s): the other "
                          "boards transfer while the canary checks and switch once it passed; "
                          "canary_first_no_overlap_s: the same with --no-overlap (the stage waits for the check)",
                "transferred": "the objects of the release the board lacks (all on a first push) as one tar stream "
                               "per board over paramiko, AES-GCM; no compression",
            },
        }
        if "ansible" in self.tools:
            out["ansible"] = {
                "command": "ansible-playbook push.yml -e dest=ansible<round> (ANSIBLE_CONFIG: forks = 8, "
                           f"host_key_checking = True, [ssh_connection] ssh_args = {ANSIBLE_SSH_ARGS})",
                "task": "ansible.posix.synchronize src=<staged release>/ dest=<board home>/bench/ansible<round>/ "
                        "verify_host=true use_ssh_args=true (other options default: archive, compress, "
                        "delay_updates); gather_facts: false",
                "host_keys": "ansible_ssh_common_args: -o UserKnownHostsFile=.deploy/known_hosts "
                             "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes; the sandbox client key",
                "transferred": "rsync -a --compress --delay-updates of the staged release tree (every file of what "
                               "our push ships) into a fresh directory; redeploy: the same rsync again (quick check: "
                               "size + mtime, nothing sent)",
            }
        if "pyinfra" in self.tools:
            out["pyinfra"] = {
                "command": "pyinfra -y --parallel 8 inventory.py push.py",
                "task": "files.sync(src=<staged release>, dest=<board home>/bench/pyinfra<round>) with defaults",
                "host_keys": "host data ssh_known_hosts_file=.deploy/known_hosts, ssh_strict_host_key_checking=yes, "
                             "ssh_key=the sandbox client key",
                "transferred": "per file: a remote stat (and sha1sum when present), then an SFTP put and chmod when "
                               "missing or different; directories created with mkdir; redeploy: every file's sha1 "
                               "compared, nothing put",
            }
        return out

    # ------------------------------------------------------------ teardown

    def teardown(self) -> bool:
        for relay in self.relays:
            relay.stop()  # the relay process this benchmark started, by its own handle (PID)
        self.relays = []
        ok = True
        try:
            self.use("sandbox", STAGED_APP)
            ok = self.project.down(timeout=15)
        except CommandFailed as exc:
            log(f"warning: {exc}")
            ok = False
        if not ok:
            log(f"warning: sandbox sshd still running; project kept at {self.root} "
                f"(stop it with: deploy -i {self.project.inventory} sandbox down --purge)")
        return ok


def compare_trees(a: Path, b: Path, b_adds: tuple[str, ...] = (), renamed: dict[str, tuple[str, str]] | None = None
                  ) -> str:
    """'' when ``b`` has exactly ``a``'s files (and ``b_adds``) with the same bytes and permission bits (in the files of
    ``renamed``, once its text ``old`` is replaced by ``new``); else the first difference."""
    def listing(root: Path) -> dict[str, Path]:  # the bytecode a board compiles into a release is not its content
        return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    la, lb = listing(a), listing(b)
    for extra in b_adds:
        lb.pop(extra, None)
    if set(la) != set(lb):
        only_a, only_b = sorted(set(la) - set(lb)), sorted(set(lb) - set(la))
        return f"{len(only_a)} files missing (e.g. {only_a[:2]}), {len(only_b)} extra (e.g. {only_b[:2]})"
    for rel, p in la.items():
        q = lb[rel]
        if p.stat().st_mode & 0o7777 != q.stat().st_mode & 0o7777:
            return f"{rel}: mode {oct(p.stat().st_mode & 0o7777)} vs {oct(q.stat().st_mode & 0o7777)}"
        theirs = q.read_bytes()
        if rel in (renamed or {}):
            old, new = renamed[rel]
            theirs = theirs.replace(old.encode(), new.encode())
        if p.read_bytes() != theirs:
            return f"{rel}: content differs"
    return ""


def table(r: dict) -> str:
    def f(v):
        return f"{v:8.2f}" if isinstance(v, (int, float)) else f"{'-':>8}"

    ln = r["link"]
    lines = [f"{r['boards']} boards, each behind its own link: {ln['mbit_up']:g}/{ln['mbit_down']:g} Mbit/s, "
             f"RTT {ln['rtt_ms']:g} ms; release {r['release']['files']} files, {r['release']['bytes'] / 1e6:.1f} MB "
             f"({ln['seconds_to_carry_release']:.1f} s on one link)",
             f"{'':24} {'first':>8} {'redeploy':>8}",
             f"{'deploy, 1 board':24} {f(r['single_first_s'])} {f(r['single_redeploy_s'])}",
             f"{'deploy, all boards':24} {f(r['fleet_first_s'])} {f(r['fleet_redeploy_s'])}",
             f"{'ansible synchronize':24} {f(r['ansible_first_s'])} {f(r['ansible_redeploy_s'])}",
             f"{'pyinfra files.sync':24} {f(r['pyinfra_first_s'])} {f(r['pyinfra_redeploy_s'])}"]
    lines.append(f"health check (fleet): {f(r['health_check_s']).strip()} s")
    lines.append(f"{'deploy, all, checked':24} {f(r.get('fleet_first_checked_s'))}   (first push with its health check)")
    lines.append(f"{'deploy --canary 1':24} {f(r.get('canary_first_s'))}   (checked; next stage overlaps the "
                 f"canary's check; {f(r.get('canary_first_no_overlap_s')).strip()} s with --no-overlap)")
    for k in ("fleet_over_single", "first_over_ansible", "first_checked_over_ansible", "canary_first_over_ansible",
              "redeploy_over_ansible", "first_over_pyinfra", "first_checked_over_pyinfra", "redeploy_over_pyinfra",
              "canary_over_no_overlap"):
        note = {"first_over_ansible": " (without health check)", "first_over_pyinfra": " (without health check)",
                "first_checked_over_ansible": " (with health check)", "first_checked_over_pyinfra": " (with health check)",
                "canary_first_over_ansible": " (--canary 1, with health check)"}.get(k, "")
        lines.append(f"  {k} = {f(r.get(k)).strip()}{note}")
    for name, ok in r["targets"].items():
        lines.append(f"  {'PASS' if ok else ('SKIP' if ok is None else 'FAIL')}  {name}"
                     + (f": {r['misses'][name]}" if name in r["misses"] else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; every figure is the best of them (default 3)")
    ap.add_argument("--boards", type=int, default=8, help="sandbox boards (default 8)")
    ap.add_argument("--mbit", type=float, default=50.0, help="each board's link, megabits per second each way (default 50)")
    ap.add_argument("--mbit-down", type=float, default=None, help="board-to-host rate if not --mbit")
    ap.add_argument("--rtt-ms", type=float, default=2.0, help="each board's link round-trip time (default 2)")
    ap.add_argument("--buffer-ms", type=float, default=50.0, help="link time a relay buffers per connection (default 50)")
    ap.add_argument("--tools", default="ansible,pyinfra", help="comparison tools, comma-separated ('' for none)")
    ap.add_argument("--no-install", action="store_true", help="skip a missing tool instead of pip-installing it")
    ap.add_argument("--no-health-check-figure", action="store_true", help="do not measure health_check_s")
    ap.add_argument("--tiny", action="store_true", help="a tiny release (one photo, a three-file site/; no health_check_s): for tests")
    ap.add_argument("--slow-s", type=float, default=60.0,
                    help="a comparison tool whose first round (first push + redeploy) takes longer is not repeated")
    ap.add_argument("--no-probe", action="store_true", help="skip the unshaped fleet push (the machine's own limit)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the throwaway project (the boards are stopped anyway)")
    args = ap.parse_args()
    if not demo_built(DEMO):
        log("building the demo model and photos once (deploy model demo)")
        build_demo(DEMO)
    for tool in ("ssh", "rsync"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: Ansible's synchronize needs OpenSSH's ssh and rsync")
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    bench = Fleet(root, args)
    try:
        bench.setup()
        if not args.no_probe:
            bench.probe()
        bench.rounds()
        result = bench.result()
    finally:
        if bench.teardown() and not args.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)
    result["load"] = {"loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(), "cpus": os.cpu_count()}
    result["wall_s"] = time.perf_counter() - t_start
    result = rounded(result)
    log(f"done in {result['wall_s']:.0f} s")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
