"""The managed ~/.bashrc block and env.sh: idempotent, before the guard, user bytes untouched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy.release import envblock
from deploy.targets import PROFILES

STOCK = (Path(__file__).resolve().parents[1] / "deploy" / "data" / "bashrc").read_text()


def test_block_goes_before_the_guard_and_is_idempotent():
    once = envblock.apply_block(STOCK, "classify")
    assert once.index(">>> atlas-deploy classify >>>") < once.index("case $- in")
    assert once.index(">>> atlas-deploy classify >>>") < once.index("# If not running interactively")
    assert envblock.apply_block(once, "classify") == once
    assert envblock.remove_block(once, "classify") == STOCK


@pytest.mark.parametrize(
    "guard",
    ['[ -z "$PS1" ] && return\n', "[[ $- != *i* ]] && return\n", 'if [ -z "$PS1" ]; then\n  return\nfi\n'],
)
def test_other_guard_forms(guard):
    text = "# mine\nexport A=1\n\n" + guard + "alias x=y\n"
    out = envblock.apply_block(text, "app")
    assert out.index(">>> atlas-deploy app") < out.index(guard.splitlines()[0])
    assert envblock.remove_block(out, "app") == text


def test_no_guard_appends_and_keeps_bytes():
    text = "export A='x y'\nalias l=ls"  # no trailing newline
    out = envblock.apply_block(text, "app")
    assert out.startswith(text) and envblock.has_single_block(out, "app")
    assert envblock.apply_block(out, "app") == out
    assert envblock.apply_block(None, "app") == envblock.block("app")


def test_duplicated_blocks_collapse_to_one_and_two_apps_coexist():
    doubled = envblock.block("app") + STOCK + envblock.block("app")
    out = envblock.apply_block(doubled, "app")
    assert out.count(">>> atlas-deploy app >>>") == 1
    both = envblock.apply_block(out, "other")
    assert envblock.has_single_block(both, "app") and envblock.has_single_block(both, "other")
    assert both.index(">>> atlas-deploy other") < both.index("case $- in")


def test_block_really_runs_in_a_non_interactive_bash(tmp_path):
    home = tmp_path
    app = home / "HIAI_PROJECTS" / "demo"
    app.mkdir(parents=True)
    (app / "env.sh").write_text(envblock.env_sh("demo", PROFILES["atlas200dk"], {"GREETING": "it's $me"}))
    (home / ".bashrc").write_text(envblock.apply_block(STOCK + "\nexport LATE=1\n", "demo"))
    # what sshd does for `ssh board CMD`: bash -c, non-interactive, sourcing ~/.bashrc
    r = subprocess.run(["bash", "-c", '. ~/.bashrc; echo "$HIAI_APP|$GREETING|${LATE:-unset}|$PYTHONPATH"'],
                       env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    app_s, greeting, late, pypath = r.stdout.strip().split("|")
    assert app_s == "demo" and greeting == "it's $me"
    assert late == "unset"  # the stock guard still returns early: the vendor's append-at-end never applies
    assert pypath.startswith(f"{home}/HIAI_PROJECTS/demo/current/site:")


def test_env_sh_quotes_and_redacts():
    text = envblock.env_sh("a", PROFILES["x86_64-cpu"], {"API_TOKEN": "s3cr'et", "X": "$(rm -rf /)"})
    assert "export X='$(rm -rf /)'" in text
    assert "s3cr" not in envblock.redact(text, {"API_TOKEN": "s3cr'et", "X": "$(rm -rf /)"})
    assert "CANN" not in text  # the CPU target sources no Ascend environment
    assert "set_env.sh" in envblock.env_sh("a", PROFILES["atlas200dk"], {})
