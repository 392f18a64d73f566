#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine: installs dependencies, builds,
# creates a home (private SoftHSM2 token + SQLite registry) with a root and an intermediate CA
# whose keys are made in the token, issues a first lot of device certificates, and prints where
# everything is. PINs are generated into files (never on the command line).
# Then the fleet: the root is proven to the registry, an enrollment group trusts it, fleetsign's
# broker (Debian's mosquitto + fleetsign's plugin) starts on FLEETSIGN_DEMO_PORT (default 8883),
# the lot runs as 1,000 simulated devices (fleetsign-device), and a direct method reaches one.
# The broker and the devices keep running; the script prints how to stop them.
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

# The fleet: proof of possession for the root, a group that trusts it, the broker, the devices.
port="${FLEETSIGN_DEMO_PORT:-8883}"
"$fs" "${home[@]}" ca verification-cert --ca root --code QUICKSTART --out "$dir/pop.pem" "${pins[@]}" >/dev/null
"$fs" "${home[@]}" ca verify root --code QUICKSTART --cert "$dir/pop.pem" >/dev/null
"$fs" "${home[@]}" enrollment group create fleet --ca root >/dev/null
"$fs" "${home[@]}" broker init --port "$port" --host localhost --host 127.0.0.1 "${pins[@]}"
"$fs" "${home[@]}" broker start
"$repo/build/device/fleetsign-device" --broker "localhost:$port" --trust "$dir/home/broker/ca.pem" \
  --dir "$dir/lot-0001" --state "$dir/device-flash" --log "$dir/devices.log" >/dev/null 2>&1 &
echo $! > "$dir/devices.pid"
for _ in $(seq 1 120); do
  n=$("$fs" "${home[@]}" device list --connected --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
  [[ $n -ge 1000 ]] && break
  sleep 1
done
echo "$n of 1000 devices connected"
"$fs" "${home[@]}" method invoke sensor-000042 getCertificate

echo
echo "fleetsign demo ready:"
echo "  home (token, registry, policy)  $dir/home"
echo "  PIN files                       $dir/user.pin, $dir/so.pin"
echo "  root CA certificate             $dir/root.pem"
echo "  device certificates + manifest  $dir/lot-0001/"
echo "  try: $fs --home $dir/home batch list"
echo "       openssl verify -x509_strict -purpose sslclient -CAfile $dir/root.pem -untrusted $dir/factory-1_chain.pem $dir/lot-0001/sensor-000001_cert.pem"
echo "  fleet: broker on localhost:$port, 1,000 devices running (log $dir/devices.log)"
echo "       $fs --home $dir/home method invoke sensor-000007 ping --payload '{\"hello\":1}'"
echo "       $fs --home $dir/home twin show sensor-000007"
echo "       $fs --home $dir/home device list --connected"
echo "  roll the fleet onto new certificates (new keys on the devices, signed in the token):"
echo "       $fs --home $dir/home rollover start --group fleet --expiring-within 400d --pin-file $dir/user.pin"
echo "  stop: kill \$(cat $dir/devices.pid); $fs --home $dir/home broker stop"
