#!/usr/bin/env bash
# Re-makes the checked-in seed corpora of tests/fuzz/corpus/<target>/ (except the regress-* files,
# the reproducers of fixed findings, which are kept as they are):
#   - the CSR fixtures of tests/data/make_csrs.sh, as PEM and as DER;
#   - seeds that need a signature by the targets' deterministic keys, written by the targets
#     themselves (FLEETSIGN_FUZZ_SEEDS_OUT): fuzz_chain's leaves, fuzz_ecdsa_diff's signatures;
#   - the policy files of tests/policy;
#   - hand-made edge cases (empty, truncated, long lengths, indefinite length, huge tag numbers,
#     nested PEM headers, hostile ID patterns, topics and payloads).
#   usage: tests/fuzz/make_corpus.sh [BUILD_DIR]   (default build-fuzz: the targets must be built)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$top/build-fuzz}" && pwd)
corpus=$here/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fresh() {  # empties corpus/$1 but for its regress-* files
  mkdir -p "$corpus/$1"
  find "$corpus/$1" -type f ! -name 'regress-*' -delete
}
for t in csr der pem chain policy id_pattern method_payload twin_payload ecdsa_diff; do fresh "$t"; done

# 1. CSR fixtures: PEM into csr and pem, DER into csr and der.
"$top/tests/data/make_csrs.sh" "$tmp/csrs" >/dev/null
for f in "$tmp"/csrs/*.csr; do
  name=$(basename "$f" .csr)
  cp "$f" "$corpus/csr/$name.pem"
  cp "$f" "$corpus/pem/$name.pem"
  if openssl req -in "$f" -outform DER -out "$tmp/$name.der" 2>/dev/null; then
    cp "$tmp/$name.der" "$corpus/csr/$name.der"
    cp "$tmp/$name.der" "$corpus/der/$name.der"
  fi
done
cp "$tmp/csrs/bad_truncated.der" "$corpus/csr/"
cat "$tmp"/csrs/good_*.csr >"$corpus/csr/bundle-good.pem"
cat "$tmp"/csrs/good_*.csr >"$corpus/pem/bundle-good.pem"

# 2. Seeds signed by the targets' deterministic keys.
FLEETSIGN_FUZZ_SEEDS_OUT="$corpus/chain" "$build/tests/fuzz/fuzz_chain" -runs=0 >/dev/null 2>&1
FLEETSIGN_FUZZ_SEEDS_OUT="$corpus/ecdsa_diff" "$build/tests/fuzz/fuzz_ecdsa_diff" -runs=0 \
  >/dev/null 2>&1
[ -n "$(ls "$corpus/chain")" ] && [ -n "$(ls "$corpus/ecdsa_diff")" ] ||
  { echo "make_corpus.sh: fuzz_chain / fuzz_ecdsa_diff wrote no seeds (built in $build?)" >&2; exit 1; }
# Certificates for the DER and PEM readers: the chain seeds' leaves (mode 1 = DER fields).
python3 - "$corpus" <<'PY'
import os, sys
corpus = sys.argv[1]
for name in sorted(os.listdir(os.path.join(corpus, "chain"))):
    if not name.startswith("der-"):
        continue
    data = open(os.path.join(corpus, "chain", name), "rb").read()[9:]
    n = data[0] << 8 | data[1]
    leaf, rest = data[2:2 + n], data[2 + n:]
    open(os.path.join(corpus, "der", "cert-" + name[4:]), "wb").write(leaf)
    n = rest[0] << 8 | rest[1]
    open(os.path.join(corpus, "der", "ca-int.der"), "wb").write(rest[2:2 + n])
PY
for f in "$corpus"/chain/pem-good "$corpus"/chain/pem-two-cn; do
  tail -c +10 "$f" >"$corpus/pem/chain-$(basename "$f")"
done

# 3. Policy files from tests/policy, and the defaults.
python3 - "$top" "$corpus/policy" <<'PY'
import re, sys
top, out = sys.argv[1], sys.argv[2]
n = 0
for f in ["tests/policy/policy_test.cpp", "tests/policy/rollover_policy_test.cpp"]:
    for text in re.findall(r'R"\((.*?)\)"', open(f"{top}/{f}").read(), re.S):
        if text.lstrip().startswith("{") and text.rstrip().endswith("}"):
            open(f"{out}/tests-{n:02d}.json", "w").write(text)
            n += 1
PY

# 4. Hand-made edge cases. put TARGET NAME BYTES (printf format).
put() { printf -- "$3" >"$corpus/$1/$2"; }
for t in csr der pem; do
  put $t empty ''
  put $t seq-truncated '\x30'
  put $t seq-indefinite '\x30\x80\x02\x01\x00\x00\x00'
  put $t length-huge '\x30\x84\xff\xff\xff\xff\x02\x01\x00'
  put $t length-five-bytes '\x30\x85\x00\x00\x00\x00\x03\x02\x01\x00'
  put $t length-nonminimal '\x30\x81\x03\x02\x01\x00'
  put $t length-zero-leading '\x30\x82\x00\x03\x02\x01\x00'
  put $t tag-huge-number '\x1f\xff\xff\xff\xff\x7f\x01\x00'
  put $t tag-multibyte '\x3f\x81\x00\x00'
  put $t nested-deep "$(printf '\\x30\\x%02x' $(seq 60 -2 2 | head -30))"
done
# A CSR whose signature is a valid DER SEQUENCE of two huge INTEGERs.
put csr sig-huge-integers '\x30\x1c\x30\x02\x30\x00\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02\x03\x0a\x00\x30\x07\x02\x02\x7f\xff\x02\x01\x01'
req='-----BEGIN CERTIFICATE REQUEST-----'
end='-----END CERTIFICATE REQUEST-----'
put pem nested-begin "$req\n$req\nMAA=\n$end\n$end\n"
put pem mismatched-end "$req\nMAA=\n-----END CERTIFICATE-----\n"
put pem no-end "$req\nMAA=\n"
put pem padding-middle "$req\nMA==MA==\n$end\n"
put pem only-padding "$req\n====\n$end\n"
put pem crlf "$req\r\nMAA=\r\n$end\r\n"
put pem new-label '-----BEGIN NEW CERTIFICATE REQUEST-----\nMAA=\n-----END NEW CERTIFICATE REQUEST-----\n'
put pem crl-bundle '-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n-----BEGIN X509 CRL-----\n!!\n-----END X509 CRL-----\n'
put pem key-headers '-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMAA=\n-----END EC PRIVATE KEY-----\n'
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$corpus/pem/key-pkcs8.pem" 2>/dev/null
openssl ec -in "$corpus/pem/key-pkcs8.pem" -out "$corpus/pem/key-sec1.pem" 2>/dev/null

put policy empty ''
put policy not-object '[1,2,3]'
put policy deep "$(printf '{"groups":%.0s' $(seq 1 200))"
put policy numbers '{"validity":{"device_days":1e400,"root_days":-0,"intermediate_days":18446744073709551616}}'
put policy windows '{"rollover":{"windows":[{"days":"fri-mon,wed","start":"22:00","end":"02:00"},{"days":"daily","start":"00:00","end":"24:00"}]},"groups":{"g":{"rollover":{"windows":[]},"alert_days":[9,3]}}}'
put policy unicode '{"device_subject":{"organization":"\\u00e9\\ud800\\udc00\\u0000"}}'

# id_pattern: count (8), extra chars (1), max length (1), n (8), pattern.
idp() { put id_pattern "$1" "\x00\x00\x00\x00\x00\x00\x03\xe8\x$2\x7f\x00\x00\x00\x00\x00\x00\x00\x07$3"; }
idp sensor 00 'sensor-{06}'
idp dotdot 0f '../x-{03}'
idp dotdot-extra 01 '..-{03}'
idp two-placeholders 00 '{06}{06}'
idp empty-width 00 '{}'
idp width-21 00 'x{21}'
idp width-huge 00 'x{99999999999999999999}'
idp unclosed 00 'x-{'
idp reversed 00 'x}{06'
idp negative-width 00 '{-1}'
idp slash 0f 'a/{02}'
idp nul-in-pattern 0f 'a\x00{02}'
idp long 00 "$(printf 'a%.0s' $(seq 1 70))-{06}"
put id_pattern count-max '\x7f\xff\xff\xff\xff\xff\xff\xff\x00\x7f\x80\x00\x00\x00\x00\x00\x00\x00d-{20}'

rid=0123456789abcdef0123456789abcdef
put method_payload call "\x00\$fleetsign/methods/POST/dev-1/ping/?\$rid=$rid&\$ct=5&\$rt=10\x00{\"a\":1}"
put method_payload call-bad-ct "\x00\$fleetsign/methods/POST/dev-1/ping/?\$rid=$rid&\$ct=301\x00"
put method_payload call-repeated-rid "\x00\$fleetsign/methods/POST/dev-1/m/?\$rid=$rid&\$rid=$rid\x00"
put method_payload answer "\x00\$iothub/methods/res/200/?\$rid=$rid\x00{}"
put method_payload twin-get "\x00\$iothub/twin/GET/?\$rid=1"
put method_payload twin-patch "\x00\$iothub/twin/PATCH/properties/reported/?\$rid=abc.DEF_-\x00{\"x\":1}"
put method_payload dps-register "\x00\$dps/registrations/PUT/iotdps-register/?\$rid=7\x00{\"registrationId\":\"dev-1\"}"
put method_payload dps-status "\x00\$dps/registrations/GET/iotdps-get-operationstatus/?\$rid=7&operationId=4.abc.def"
put method_payload unknown "\x00\$iothub/other"
put method_payload device-call "\x01\$iothub/methods/POST/createCsr/?\$rid=42"
put method_payload device-twin-res "\x01\$iothub/twin/res/204/?\$rid=r:1&\$version=5"
put method_payload device-dps-res "\x01\$dps/registrations/res/202/?\$rid=9&retry-after=3"
put method_payload device-desired "\x01\$iothub/twin/PATCH/properties/desired/?\$version=12"
put method_payload device-hostport "\x01hub.example.com:8883"
put method_payload dispatch-ping '\x02ping\x00{"a":[1,2,{"b":null}]}'
put method_payload dispatch-ping-empty '\x02ping\x00'
put method_payload dispatch-not-json '\x02ping\x001,2'
put method_payload dispatch-cert '\x02getCertificate\x00'
put method_payload dispatch-create '\x02createCsr\x00{"jobId":"job-1","slot":"secondary","keyType":"ec-p384"}'
put method_payload dispatch-create-bad '\x02createCsr\x00{"jobId":"../../x","slot":"third"}'
put method_payload dispatch-reprovision "\\x02reprovision\\x00{\"jobId\":\"j\",\"sha256\":\"$(printf 'A%.0s' $(seq 1 64))\"}"
put method_payload dispatch-unknown '\x02nope\x00null'
python3 - "$corpus" <<'PY'
import json, os, sys
corpus = sys.argv[1]
chain = open(os.path.join(corpus, "pem", "chain-pem-good"), "rb").read().decode()
body = json.dumps({"jobId": "job-1", "slot": "secondary", "chain": chain})
open(os.path.join(corpus, "method_payload", "dispatch-install"), "wb").write(
    b"\x02installCertificate\x00" + body.encode())
PY

put twin_payload merge '\x00{"a":1,"b":{"c":2}}\x00{"a":null,"b":{"d":[1,2]},"e":"x"}'
put twin_payload merge-empty '\x00{}\x00{}'
put twin_payload merge-reserved '\x00{}\x00{"$version":3}'
put twin_payload merge-reserved-in-array '\x00{}\x00{"a":[{"$x":1}]}'
put twin_payload merge-not-object '\x00[]\x00{"a":1}'
put twin_payload merge-unicode '\x00{"\\u00e9":"\\ud83d\\ude00"}\x00{"\\u00e9":{"n":1.5e300}}'
put twin_payload merge-deep "\x00{}\x00$(printf '{"a":%.0s' $(seq 1 40))1$(printf '}%.0s' $(seq 1 40))"
put twin_payload dps-good '\x01{"registrationId":"dev-1"}'
put twin_payload dps-other '\x01{"registrationId":"dev-2","payload":{"x":1}}'
put twin_payload dps-array '\x01[]'
put twin_payload dps-number '\x01{"registrationId":1}'

echo "corpus sizes:"
du -sh "$corpus"/* | sed 's|'"$corpus"'/||'
