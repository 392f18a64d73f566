#!/usr/bin/env bash
# Installs everything fleetsign needs to build and test, from Debian's packages (run as root,
# or with sudo available). Idempotent.
set -euo pipefail
packages=(
  g++ cmake ninja-build pkg-config make
  libssl-dev openssl
  libp11-dev libp11-kit-dev softhsm2 opensc
  libtbb-dev
  libpoco-dev libsqlite3-dev
  googletest libgtest-dev
  mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev
  python3 clang-format
  clang libclang-rt-14-dev
  gnutls-bin curl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
