#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian/Ubuntu machine; quick when it is all there already.
#   system: OpenSSH server+client (sandbox boards), rsync (benchmark baseline), qemu-user-static,
#           binfmt-support and debootstrap (the emulated aarch64 board), fonts-dejavu-core (labels),
#           chromium (the headless browser the report test loads report.html in), gcc/g++/cmake and
#           g++-aarch64-linux-gnu (C/C++ apps built on the host: natively, and cross for aarch64 boards)
#   python: this project with the models (demo: onnx, weights, photos; no torch) and dev (pytest, ruff,
#           vermin) extras. torch is the optional `torch` extra, for `deploy model export --torch` only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

pkgs=(openssh-server openssh-client rsync qemu-user-static binfmt-support debootstrap fonts-dejavu-core chromium
      gcc g++ cmake g++-aarch64-linux-gnu)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.deploy/.setup-$(sha256sum pyproject.toml | cut -c1-12)
# checked from / (the repo's own folder is on sys.path from here): an editable install of a moved or other
# checkout of this project does not count
here=$(pwd -P)
if [ ! -f "$stamp" ] || ! (cd / && $PY -c "import sys, deploy, agent, onnx, pytest
sys.exit(not deploy.__file__.startswith('$here/'))") 2>/dev/null; then
  echo "setup: installing Python packages (onnxruntime, onnx, paramiko, rich, ...; no torch)"
  # compat mode: a plain path entry in a .pth instead of an import-hook finder (~10-25 ms of every command)
  $PY -m pip install -q --disable-pip-version-check -e ".[models,dev]" --config-settings editable_mode=compat
  mkdir -p .deploy && touch "$stamp"
fi
