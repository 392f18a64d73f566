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
  postgresql-15 libpq-dev
  clang libclang-rt-14-dev
  gnutls-bin curl
  chromium libjs-chart.js
)
# The dashboard's browser test (tests/browser): Node.js and playwright-core from npm, driving
# Debian's chromium. Debian's nodejs and npm unless the machine has a Node.js already.
browser_deps() {
  if ! command -v npm >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm \
      >/dev/null
  fi
  if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
cd "$(dirname "$0")/.."
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  browser_deps
  exit 0
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
browser_deps
