#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the lab and the tests need (idempotent).
# Real programs, not stand-ins: OpenSSH sshd, fish, sudo, rsync, Nix, iproute2, and Debian's
# chromium for the JupyterLab browser test (driven by the playwright package), with a CJK font
# so the handbook's Chinese headings render there and in the screenshots: fonts-wqy-zenhei
# (7.5 MB download, 16 MB installed; fonts-noto-cjk is 57 MB / 91 MB: `apt-cache show`).
set -euo pipefail

if [[ "$(uname -s)" != Linux ]]; then
  echo "install-system-deps: not Linux ($(uname -s)); nothing to install here"
  exit 0
fi
packages=(python3-venv openssh-server openssh-client fish sudo rsync nix-bin iproute2 procps util-linux make git chromium libatomic1 fonts-wqy-zenhei)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-system-deps: apt-get not found; install these yourself: ${missing[*]}" >&2
  exit 2
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-system-deps: run as root (or install sudo)" >&2; exit 2; }
  SUDO=(sudo)
fi
echo "install-system-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
