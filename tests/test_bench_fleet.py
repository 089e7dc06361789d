"""benchmarks/fleet.py at a tiny size (2 boards, a tiny release, one round) gives every figure it promises; the
relay's link is shared by all connections through it and counts what it carried."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from deploy.testing import REPO
from deploy.testing.relay import Relay

FIGURES = {
    "boards", "link", "release", "single_first_s", "single_redeploy_s", "fleet_first_s", "fleet_redeploy_s",
    "fleet_over_single", "health_check_s", "ansible_first_s", "ansible_redeploy_s", "first_over_ansible",
    "redeploy_over_ansible", "pyinfra_first_s", "pyinfra_redeploy_s", "first_over_pyinfra", "redeploy_over_pyinfra",
    "payload_bytes", "wire_bytes", "cpu", "link_use", "targets", "misses", "tools", "versions", "skipped", "load",
    "samples",
}


def test_fleet_benchmark_tiny():
    argv = [sys.executable, str(REPO / "benchmarks" / "fleet.py"), "--json", "--tiny", "--boards", "2", "--repeat", "1",
            "--mbit", "400", "--rtt-ms", "1", "--no-install"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout)
    assert FIGURES <= set(out), FIGURES - set(out)
    assert out["boards"] == 2
    assert out["link"]["mbit_up"] == 400 and out["link"]["rtt_ms"] == 1
    assert out["release"]["files"] > 10 and out["release"]["bytes"] < 50e6  # the tiny release
    assert out["fleet_first_s"] > 0 and out["single_first_s"] > 0
    assert out["fleet_over_single"] == pytest.approx(out["fleet_first_s"] / out["single_first_s"], rel=1e-3)
    assert out["checks"]["deploy_tree"].startswith("identical"), out["checks"]
    assert out["machine_limit"]["mb_s"] > 0
    assert out["payload_bytes"]["fleet_redeploy"] == 0
    # both boards' links carried at least the release each on the first push, next to nothing on the redeploy
    assert out["wire_bytes"]["fleet_first"]["up"] >= 2 * out["payload_bytes"]["single_first"]
    assert out["wire_bytes"]["fleet_redeploy"]["up"] < 100_000
    for tool in ("ansible", "pyinfra"):
        if tool in out["skipped"]:  # not installed here: its figures are there, as null
            assert out[f"first_over_{tool}"] is None and out["targets"][f"first_over_{tool}<=1.0"] is None
        else:
            assert out[f"{tool}_first_s"] > 0 and out[f"redeploy_over_{tool}"] > 0
            assert out["checks"][f"{tool}_tree"].startswith("identical"), out["checks"]
            assert out["versions"][tool]


def _sink() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return

            def drain(c=c):
                while c.recv(1 << 16):
                    pass
                c.sendall(b"k")
                c.close()

            threading.Thread(target=drain, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _send(port: int, n: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x" * n)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b"k"


def test_relay_link_is_shared_and_counted():
    srv, port = _sink()
    try:
        with Relay(port, rtt_ms=0, mbit=40) as relay:  # 5 MB/s each way
            t0 = time.perf_counter()
            one = threading.Thread(target=_send, args=(relay.port, 500_000))
            two = threading.Thread(target=_send, args=(relay.port, 500_000))
            one.start()
            two.start()
            one.join()
            two.join()
            dt = time.perf_counter() - t0
            # 1 MB over one 5 MB/s link takes 0.2 s however many connections share it (per connection: 0.1 s)
            assert 0.18 < dt < 0.6, dt
            deadline = time.monotonic() + 2
            while relay.stats()["open"] and time.monotonic() < deadline:
                time.sleep(0.01)
            stats = relay.stats()
            assert stats["up"] == 1_000_000 and stats["down"] == 2
            assert stats["connections"] == 2 and stats["open"] == 0
    finally:
        srv.close()
