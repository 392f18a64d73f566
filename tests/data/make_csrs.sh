#!/usr/bin/env bash
# Makes the CSR fixtures the tests use, with openssl (a tool we did not write), into DIR.
# One file per case; the name says what is wrong with it (good_* are valid).
#   usage: make_csrs.sh DIR
set -euo pipefail
out=${1:?usage: make_csrs.sh DIR}
mkdir -p "$out"
cd "$out"

ec()  { openssl req -new -newkey ec -pkeyopt "ec_paramgen_curve:$1" -nodes -keyout "$2.key" -subj "$3" "${@:4}" -out "$2.csr" 2>/dev/null; }
rsa() { openssl req -new -newkey "rsa:$1" -nodes -keyout "$2.key" -subj "$3" "${@:4}" -out "$2.csr" 2>/dev/null; }

ec P-256 good_p256 "/CN=good-p256"
ec P-384 good_p384 "/CN=good-p384"
rsa 2048 good_rsa2048 "/CN=good-rsa2048"
ec P-256 good_ca_true "/CN=good-ca-true" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
ec P-256 good_san "/CN=good-san" -addext "subjectAltName=DNS:evil.example.com" -addext "extendedKeyUsage=serverAuth"
ec P-256 good_with_o "/O=Factory/CN=good-with-o"
rsa 1024 bad_rsa1024 "/CN=bad-rsa1024" 2>/dev/null || openssl req -new -newkey rsa:1024 -nodes -keyout bad_rsa1024.key -subj "/CN=bad-rsa1024" -out bad_rsa1024.csr -config <(printf '[req]\ndistinguished_name=dn\n[dn]\n') 2>/dev/null
ec secp256k1 bad_secp256k1 "/CN=bad-secp256k1"
ec P-521 bad_p521 "/CN=bad-p521"
ec P-256 bad_id_space "/CN=bad id"
# (A CN over 128 characters cannot be made with openssl req, which caps CN at 64: the C++ tests
# build that one themselves.)
ec P-256 bad_no_cn "/O=No Common Name"
ec P-256 bad_two_cn "/CN=one/CN=two"
# A valid CSR whose signature is flipped in its last byte.
ec P-256 bad_signature "/CN=bad-signature"
openssl req -in bad_signature.csr -outform DER -out bad_signature.der
python3 - <<'PY'
data = bytearray(open("bad_signature.der", "rb").read())
data[-1] ^= 0x01
open("bad_signature.der", "wb").write(bytes(data))
PY
openssl req -inform DER -in bad_signature.der -out bad_signature.csr 2>/dev/null || \
  { printf -- "-----BEGIN CERTIFICATE REQUEST-----\n%s\n-----END CERTIFICATE REQUEST-----\n" "$(base64 -w64 bad_signature.der)" > bad_signature.csr; }
rm -f bad_signature.der
# RSA with public exponent 3 (below 65537): refused as a key, however well it signs.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -pkeyopt rsa_keygen_pubexp:3 -out bad_rsa_e3.key 2>/dev/null
openssl req -new -key bad_rsa_e3.key -subj "/CN=bad-rsa-e3" -out bad_rsa_e3.csr 2>/dev/null
# A P-256 public key that is not a point on the curve: the last byte of Y flipped (the CSR's own
# signature then cannot matter: the key is refused first).
ec P-256 bad_ec_point "/CN=bad-ec-point"
openssl req -in bad_ec_point.csr -outform DER -out bad_ec_point.der
python3 - <<'PY'
data = bytearray(open("bad_ec_point.der", "rb").read())
at = data.find(bytes([0x03, 0x42, 0x00, 0x04]))
assert at > 0
data[at + 4 + 63] ^= 0x01
open("bad_ec_point.der", "wb").write(bytes(data))
PY
printf -- "-----BEGIN CERTIFICATE REQUEST-----\n%s\n-----END CERTIFICATE REQUEST-----\n" "$(base64 -w64 bad_ec_point.der)" > bad_ec_point.csr
rm -f bad_ec_point.der
# Not base64 at all, and a truncated DER body.
printf -- "-----BEGIN CERTIFICATE REQUEST-----\nThis is not base64!!\n-----END CERTIFICATE REQUEST-----\n" > bad_malformed_pem.csr
openssl req -in good_p256.csr -outform DER | head -c 60 > bad_truncated.der
rm -f ./*.key
