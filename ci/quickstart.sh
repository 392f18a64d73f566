#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine: installs dependencies, builds,
# creates a home (private SoftHSM2 token + SQLite registry) with a root and an intermediate CA
# whose keys are made in the token, issues a first lot of device certificates, and prints where
# everything is. PINs are generated into files (never on the command line).
#   usage: ci/quickstart.sh [DIR]   (default ./fleetsign-demo)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(realpath -m "${1:-fleetsign-demo}")"
bash "$repo/ci/install-deps.sh"
bash "$repo/ci/build.sh"
fs="$repo/build/cli/fleetsign"

if [[ -e "$dir/home/fleetsign.json" ]]; then
  echo "$dir already holds a fleetsign home; remove it or pass another directory" >&2
  exit 1
fi
mkdir -p "$dir"
umask 077
openssl rand -hex 12 > "$dir/user.pin"
openssl rand -hex 12 > "$dir/so.pin"
home=(--home "$dir/home")
pins=(--pin-file "$dir/user.pin")

"$fs" "${home[@]}" init --so-pin-file "$dir/so.pin" "${pins[@]}"
"$fs" "${home[@]}" ca create-root --name root --subject "/CN=Fleet Root CA/O=Example Fleet" "${pins[@]}" >/dev/null
"$fs" "${home[@]}" ca create-intermediate --name factory-1 --issuer root --days 3650 \
  --subject "/CN=Fleet Factory 1 CA/O=Example Fleet" "${pins[@]}" >/dev/null
"$fs" "${home[@]}" ca list
"$fs" "${home[@]}" ca export root --out "$dir/root.pem" >/dev/null
"$fs" "${home[@]}" ca export factory-1 --chain --out "$dir/factory-1_chain.pem" >/dev/null

"$fs" "${home[@]}" issue --ca factory-1 --generate 1000 --id-pattern 'sensor-{06}' \
  --lot LOT-0001 --line L1 --site demo --operator quickstart --out "$dir/lot-0001" "${pins[@]}"

echo
echo "fleetsign demo ready:"
echo "  home (token, registry, policy)  $dir/home"
echo "  PIN files                       $dir/user.pin, $dir/so.pin"
echo "  root CA certificate             $dir/root.pem"
echo "  device certificates + manifest  $dir/lot-0001/"
echo "  try: $fs --home $dir/home batch list"
echo "       openssl verify -x509_strict -purpose sslclient -CAfile $dir/root.pem -untrusted $dir/factory-1_chain.pem $dir/lot-0001/sensor-000001_cert.pem"
