"""``~/.ssh/config`` honoured as OpenSSH does: HostName, User, Port, IdentityFile, ConnectTimeout, ProxyJump,
ProxyCommand; inventory values win, ``jump:`` replaces the route. Resolution first (no network), then the
same settings against real sshd (two sandbox boards reached as plain hosts through a config file)."""

from __future__ import annotations

import socket
import textwrap
import time
from pathlib import Path

import pytest

from deploy import inventory
from deploy.errors import InventoryError
from deploy.link import ssh
from deploy.testing import SANDBOX_BOARD, Project

APP = "app:\n  name: a\n  models: {onnx: m.onnx}\n"


def resolve(tmp_path: Path, monkeypatch, config: str, boards: str, name: str) -> ssh.Endpoint:
    cfg = tmp_path / "config"
    cfg.write_text(textwrap.dedent(config))
    monkeypatch.setattr(ssh, "_user_config_files", lambda: [cfg])
    inv = inventory.parse(APP + "boards:\n" + textwrap.indent(textwrap.dedent(boards), "  "), tmp_path / "inv.yaml")
    return ssh.endpoint_for(inv, inv.boards[name])


def test_host_entries_apply_and_inventory_values_win(tmp_path, monkeypatch):
    key = tmp_path / "id_lab"
    key.write_text("")
    config = f"""
        Host dk1
          HostName 192.168.1.2
          User HwHiAiUser
          Port 2222
          IdentityFile {key}
          ConnectTimeout 3
        Host dk-*
          HostName 10.0.0.9
          User lab
        Host *
          User nobody
          Port 2200
    """
    ep = resolve(tmp_path, monkeypatch, config, "dk1: {host: dk1}\n", "dk1")
    assert (ep.host, ep.user, ep.port, ep.key, ep.timeout) == ("192.168.1.2", "HwHiAiUser", 2222, key, 3.0)
    ep = resolve(tmp_path, monkeypatch, config, "dk1: {host: dk1, user: root, port: 22022, key: k}\n", "dk1")
    assert (ep.user, ep.port, ep.key) == ("root", 22022, tmp_path / "k")
    ep = resolve(tmp_path, monkeypatch, config, "x: {host: dk-7}\n", "x")  # patterns; first value wins
    assert (ep.host, ep.user, ep.port, ep.jump, ep.timeout) == ("10.0.0.9", "lab", 2200, None, None)


def test_proxyjump_chains_like_openssh(tmp_path, monkeypatch):
    config = """
        Host dk1
          HostName 192.168.1.2
          ProxyJump pc1,me@pc2:2022
        Host pc1
          HostName 10.0.0.1
          ProxyJump gw
        Host pc2
          HostName 10.0.0.2
          ProxyJump elsewhere
    """
    ep = resolve(tmp_path, monkeypatch, config, "dk1: {host: dk1}\n", "dk1")
    # pc1 first (with its own ProxyJump gw), then pc2 through pc1 (pc2's own ProxyJump is not used)
    assert ep.route == "dk1 via me@pc2:2022 via pc1 via gw"
    pc2 = ep.jump
    assert (pc2.host, pc2.user, pc2.port, pc2.board) == ("10.0.0.2", "me", 2022, False)
    assert pc2.jump.host == "10.0.0.1" and pc2.jump.jump.host == "gw"


def test_a_bastion_behind_host_star_is_not_its_own_jump_host(tmp_path, monkeypatch):
    config = """
        Host *
          ProxyJump bastion
    """
    ep = resolve(tmp_path, monkeypatch, config, "dk1: {host: 192.168.1.2}\n", "dk1")
    assert ep.route == "dk1 via bastion" and ep.jump.jump is None


def test_a_proxyjump_loop_is_a_one_line_error(tmp_path, monkeypatch):
    config = """
        Host dk
          ProxyJump a
        Host a
          ProxyJump b
        Host b
          ProxyJump a
    """
    with pytest.raises(InventoryError, match="ProxyJump loops: dk -> a -> b -> a") as err:
        resolve(tmp_path, monkeypatch, config, "x: {host: dk}\n", "x")
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_proxycommand_tokens_use_the_inventory_user_and_port(tmp_path, monkeypatch):
    config = """
        Host dk1
          HostName 192.168.1.2
          Port 2222
          ProxyCommand ssh -W %h:%p -l %r pc
    """
    ep = resolve(tmp_path, monkeypatch, config, "dk1: {host: dk1, user: me, port: 2022}\n", "dk1")
    assert ep.proxy_command == "ssh -W 192.168.1.2:2022 -l me pc" and ep.jump is None


def test_inventory_jump_replaces_the_ssh_config_route(tmp_path, monkeypatch):
    config = """
        Host dk1
          HostName 192.168.1.2
          ProxyJump bastion
        Host pc
          HostName 10.0.0.1
          User labuser
    """
    boards = "dk1: {host: dk1, jump: 'me@pc:2022'}\ndk2: {host: dk1, jump: none}\ndk3: {host: dk1, jump: pc}\npc: {host: pc}\n"
    ep = resolve(tmp_path, monkeypatch, config, boards, "dk1")
    assert ep.route == "dk1 via me@pc:2022" and (ep.jump.host, ep.jump.user, ep.jump.port) == ("10.0.0.1", "me", 2022)
    assert resolve(tmp_path, monkeypatch, config, boards, "dk2").route == "dk2"
    ep = resolve(tmp_path, monkeypatch, config, boards, "dk3")  # a board as the jump host: its own settings
    assert ep.route == "dk3 via pc" and ep.jump.user == "labuser" and ep.jump.board


# ---------------------------------------------------------------- on real sshd


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, demo):
    """Two sandbox boards, also reachable as plain hosts b1 and b2 (b2 through b1) via a private ~/.ssh/config."""
    proj = Project(tmp_path_factory.mktemp("sshcfg"), demo, boards={"board1": dict(SANDBOX_BOARD),
                                                                     "board2": dict(SANDBOX_BOARD)})
    b1, b2 = proj.up("board1"), proj.up("board2")
    home = proj.root / "home"
    (home / ".ssh").mkdir(parents=True)
    proxy_log = proj.root / "proxy.log"
    proxy = proj.root / "proxy.sh"  # a ProxyCommand that says it ran, then is OpenSSH's own -W through b1
    proxy.write_text(f'#!/bin/sh\necho "$@" >> {proxy_log}\nexec ssh -F {home}/.ssh/config -W "$1:$2" b1\n')
    proxy.chmod(0o755)
    listener = socket.socket()  # accepts TCP (the kernel's backlog) and never says a word: a hung sshd
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    common = f"IdentityFile {b1['key']}\n  IdentitiesOnly yes\n  UserKnownHostsFile {b1['known_hosts']}\n"
    (home / ".ssh" / "config").write_text(
        f"Host b1\n  HostName 127.0.0.1\n  Port {b1['port']}\n  User {b1['user']}\n  {common}"
        f"Host b2\n  HostName 127.0.0.1\n  Port {b2['port']}\n  User {b2['user']}\n  ProxyJump b1\n  {common}"
        f"Host b2cmd\n  HostName 127.0.0.1\n  Port {b2['port']}\n  User {b2['user']}\n  ProxyCommand {proxy} %h %p\n  {common}"
        f"Host b1alias\n  HostName 127.0.0.1\n  Port {b1['port']}\n  User {b1['user']}\n  HostKeyAlias lab-dk1\n  {common}"
        f"Host hung\n  HostName 127.0.0.1\n  Port {listener.getsockname()[1]}\n  ConnectTimeout 1\n"
    )
    target = SANDBOX_BOARD["target"]
    proj.boards.update({name: {"host": alias, "target": target}
                        for name, alias in (("real1", "b1"), ("real2", "b2"), ("real3", "b2cmd"), ("hung", "hung"),
                                                          ("aliased", "b1alias"))})
    proj.configure()
    proj.environ = {**proj.environ, "HOME": str(home)}
    proj.proxy_log = proxy_log
    yield proj
    listener.close()
    assert proj.down()


def test_hostname_user_port_identityfile(hosts):
    st = hosts.deploy_json("status", "real1")["boards"][0]
    assert st["ok"] and st["facts"]["python"].startswith("3.")


def test_proxyjump_from_ssh_config(hosts, monkeypatch):
    monkeypatch.setenv("HOME", hosts.environ["HOME"])
    inv = inventory.load(hosts.inventory)
    assert ssh.endpoint_for(inv, inv.boards["real2"]).route == "real2 via b1"
    pushed = hosts.deploy_json("push", "real2")["boards"][0]
    assert pushed["ok"] and (Path(hosts.status("board2")["home"]) / "HIAI_PROJECTS/classify/current").is_symlink()


def test_proxycommand_from_ssh_config(hosts):
    port = hosts.status("board2")["port"]
    st = hosts.deploy_json("status", "real3")["boards"][0]
    assert st["ok"] and hosts.proxy_log.read_text().splitlines()[-1] == f"127.0.0.1 {port}"


def test_connect_timeout_from_ssh_config(hosts):
    started = time.monotonic()
    r = hosts.deploy("status", "hung", check=False)
    took = time.monotonic() - started
    assert r.returncode == 4 and "hung: SSH to" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert took < 6, took  # ConnectTimeout 1, not the default 10 s



def test_host_key_alias_names_the_key_in_known_hosts(hosts):
    """Two DKs behind two PCs share 192.168.1.2: HostKeyAlias keeps their keys apart."""
    kh = hosts.root / ".deploy" / "known_hosts"
    r = hosts.deploy("status", "aliased", check=False)
    assert r.returncode == 3 and "aliased (lab-dk1): unknown host key" in r.stderr, r.stderr
    hosts.deploy("status", "aliased", "--accept-new-host-key")
    assert [ln.split()[0] for ln in kh.read_text().splitlines()].count("lab-dk1") == 1
    hosts.deploy("status", "aliased")
