#!/usr/bin/env bash
# Sets up a second PKCS#11 implementation for the tests: Debian's opencryptoki with its software
# token (the "IBM SoftTok", which offers RSA but no EC). Installs the packages, starts the
# pkcsslotd daemon when it is not running, and (re)initialises the soft token as a dedicated test
# token with fixed test PINs, non-interactively. Run as root (or with sudo) on a CI machine.
#
#   bash ci/opencryptoki.sh OUT_DIR
#
# writes OUT_DIR/user-pin and OUT_DIR/env, a file of VAR=value lines for the tests:
#   FLEETSIGN_TEST_MODULE       the opencryptoki PKCS#11 module
#   FLEETSIGN_TEST_TOKEN_LABEL  the token's label (fleetsign-ci)
#   FLEETSIGN_TEST_PIN_FILE     OUT_DIR/user-pin
# Then: (set -a; . OUT_DIR/env; cd build && ctest -L opencryptoki)
#
# opencryptoki 3.8 keeps its soft token in a fixed place (/var/lib/opencryptoki/swtok): it cannot
# be moved to a temporary directory. So the script re-initialises that token only when it is
# uninitialised or already this script's test token (label fleetsign-ci); a soft token with any
# other label is someone's, and the script stops unless FLEETSIGN_OCK_FORCE=1.
set -euo pipefail

out_dir=${1:?usage: ci/opencryptoki.sh OUT_DIR}
label=fleetsign-ci
factory_so_pin=87654321 # opencryptoki's documented default SO PIN of a new soft token
so_pin=ci-so-01         # the soft token takes PINs of 4 to 8 characters
user_pin=ci-user1
module=/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# 1. Packages.
if ! dpkg-query -W -f='${Status}' opencryptoki 2>/dev/null | grep -q "install ok installed"; then
  echo "installing opencryptoki" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # The postinst may fail to start the service where there is no init system; that is fine,
  # the daemon is started below.
  $SUDO apt-get install -y -qq --no-install-recommends opencryptoki >/dev/null
fi
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
module=/usr/lib/${multiarch}/pkcs11/libopencryptoki.so
[[ -e $module ]] || { echo "opencryptoki module not found at $module" >&2; exit 1; }

# 2. The daemon, and the run/lock directories its tmpfiles.d entry would make under systemd.
$SUDO install -d -m 0770 -g pkcs11 /run/opencryptoki /var/lock/opencryptoki
for tok in swtok icsf tpm lite ccatok ep11tok; do
  $SUDO install -d -m 0770 -g pkcs11 "/var/lock/opencryptoki/$tok" "/var/lib/opencryptoki/$tok"
done
$SUDO install -d -m 0770 -g pkcs11 /var/lib/opencryptoki/swtok/TOK_OBJ
if ! pgrep -x pkcsslotd >/dev/null; then
  $SUDO pkcsslotd # daemonises itself
  sleep 1
fi

# 3. The soft token's slot and state.
soft_slot() {
  $SUDO pkcsconf -t | awk '/^Token #/ {n = $2; sub("#", "", n); sub(":", "", n)}
    /Model: IBM SoftTok/ {print n; exit}'
}
slot=$(soft_slot)
[[ -n $slot ]] || { echo "no opencryptoki soft token slot (pkcsconf -t)" >&2; exit 1; }
info=$($SUDO pkcsconf -t -c "$slot")
current_label=$(awk -F': ' '/Label:/ {sub(/ +$/, "", $2); print $2; exit}' <<<"$info")
if grep -q "TOKEN_INITIALIZED" <<<"$info"; then
  if [[ $current_label != "$label" && ${FLEETSIGN_OCK_FORCE:-0} != 1 ]]; then
    echo "opencryptoki soft token (slot $slot) is '$current_label', not this script's test token;" \
      "not re-initialising it (set FLEETSIGN_OCK_FORCE=1 to do so)" >&2
    exit 1
  fi
  # opencryptoki 3.8 cannot C_InitToken a soft token twice (the SO login fails afterwards with
  # CKR_FUNCTION_FAILED): put the test token back to its factory state instead, daemon stopped.
  daemon=$(pidof pkcsslotd || true)
  if [[ -n $daemon ]]; then
    $SUDO kill "$daemon"
    for _ in $(seq 50); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
  fi
  $SUDO rm -f /var/lib/opencryptoki/swtok/NVTOK.DAT /var/lib/opencryptoki/swtok/MK_SO \
    /var/lib/opencryptoki/swtok/MK_USER
  $SUDO find /var/lib/opencryptoki/swtok/TOK_OBJ -mindepth 1 -delete
  $SUDO pkcsslotd
  sleep 1
  slot=$(soft_slot)
fi

# 4. Initialise: label, our SO PIN instead of the factory one, the user PIN. pkcsconf's exit
# status is not reliable, so the token's flags are checked at the end.
echo "$label" | $SUDO pkcsconf -I -c "$slot" -S "$factory_so_pin" >/dev/null
$SUDO pkcsconf -P -c "$slot" -S "$factory_so_pin" -n "$so_pin" >/dev/null
$SUDO pkcsconf -u -c "$slot" -S "$so_pin" -n "$user_pin" >/dev/null
flags=$($SUDO pkcsconf -t -c "$slot" | grep "Flags:")
if ! grep -q "USER_PIN_INITIALIZED" <<<"$flags" || grep -q "TO_BE_CHANGED" <<<"$flags"; then
  echo "opencryptoki soft token not ready: $flags" >&2
  exit 1
fi

# 5. What the tests need. Test processes must be able to reach the daemon: root, or group pkcs11.
mkdir -p "$out_dir"
printf '%s\n' "$user_pin" >"$out_dir/user-pin"
cat >"$out_dir/env" <<ENV
FLEETSIGN_TEST_MODULE=$module
FLEETSIGN_TEST_TOKEN_LABEL=$label
FLEETSIGN_TEST_PIN_FILE=$out_dir/user-pin
ENV
echo "opencryptoki soft token '$label' ready in slot $slot ($module)" >&2
