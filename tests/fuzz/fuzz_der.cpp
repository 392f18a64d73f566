// fuzz_der: the engine's own DER reader (der::read / der::expect) and the readers built on it that
// take bytes from outside: X.501 Names (single_common_name), certificates as the authentication
// fast path reads them (parse_leaf), SubjectPublicKeyInfo (describe_spki), a CSR's CN
// (csr_common_name), and CRLs (read_crl, OpenSSL underneath).
//
// Invariants of der::read, checked on every TLV of the input, walked into constructed values:
//   - what it returns lies inside the input, `whole` is header + content, and the input advances
//     by exactly `whole`;
//   - it is strict DER: re-encoding the tag and length with der::put_header gives back the very
//     header bytes it read (one encoding per value), and header_size agrees.
#include <openssl/err.h>
#include <openssl/x509.h>

#include <cstdint>
#include <string>
#include <vector>

#include "der.hpp"
#include "fleetsign/engine/crl_check.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fuzz_input.hpp"
#include "leaf.hpp"
#include "names.hpp"

namespace {

using namespace fleetsign::engine;

constexpr int kMaxDepth = 64;

void walk(der::Bytes in, int depth) {
  while (!in.empty()) {
    const der::Bytes before = in;
    der::Tlv tlv;
    if (!der::read(in, tlv)) return;
    const std::size_t header = tlv.whole.size() - tlv.content.size();
    if (tlv.whole.data() != before.data() || tlv.whole.size() > before.size() ||
        tlv.content.data() != before.data() + header ||
        in.data() != before.data() + tlv.whole.size() || tlv.tag != before[0]) {
      fleetsign::fuzz::violated("der::read returned a TLV that is not the front of its input");
    }
    std::vector<std::uint8_t> again;
    der::put_header(again, tlv.tag, tlv.content.size());
    if (!der::equal(again, tlv.whole.first(header)) ||
        der::header_size(tlv.content.size()) != header) {
      fleetsign::fuzz::violated("der::read accepted a header that is not the DER encoding");
    }
    if ((tlv.tag & 0x20) != 0 && depth < kMaxDepth) walk(tlv.content, depth + 1);
  }
}

// key_sha256_of_cert reads the key through parse_leaf: where OpenSSL decodes the same certificate,
// the key it finds must hash alike.
void same_key_as_openssl(der::Bytes in) {
  const unsigned char* p = in.data();
  X509* cert = d2i_X509(nullptr, &p, static_cast<long>(in.size()));
  if (cert == nullptr) {
    ERR_clear_error();
    return;
  }
  unsigned char* spki = nullptr;
  const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
  if (len > 0 && key_sha256_of_spki(ByteView(spki, static_cast<std::size_t>(len))) !=
                     key_sha256_of_cert(ByteView(in.data(), in.size()))) {
    fleetsign::fuzz::violated("key_sha256_of_cert differs from the key OpenSSL decodes");
  }
  OPENSSL_free(spki);
  X509_free(cert);
  ERR_clear_error();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const der::Bytes in(data, size);
  walk(in, 0);

  (void)single_common_name(in);
  (void)describe_spki(in);
  (void)csr_common_name(in);
  LeafView leaf;
  std::string why;
  if (parse_leaf(in, leaf, why)) {
    (void)single_common_name(leaf.subject);
    (void)single_common_name(leaf.issuer);
    (void)describe_spki(leaf.spki);
    same_key_as_openssl(in);
  } else if (why.empty()) {
    fleetsign::fuzz::violated("parse_leaf refused without saying why");
  }
  try {
    (void)read_crl(in, "fuzz CRL");
  } catch (const fleetsign::Error&) {
  }
  return 0;
}
