// fuzz_pem: the PEM splitters. The engine's own (pem_blocks behind parse_csr_text for CSR bundles
// and read_certificates for chains and certificate files, read from a file through read_bounded),
// the CRL bundle reader (crls_from_pem), and the device agent's PEM readers for chains and keys
// (OpenSSL's PEM_read_bio underneath).
//
// Invariants:
//   - parse_csr_text returns at least one block; each block starts on a line of the text; text
//     without a BEGIN line is one DER block holding the text itself;
//   - a block that decoded, written back with pem() and split again, is one block with the same
//     DER (the writer and the splitter agree);
//   - read_certificates either returns certificates or throws fleetsign::Error.
#include <cstdint>
#include <string>
#include <vector>

#include "device/src/ossl.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/crl_check.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fuzz_file.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace fleetsign;

void check_csr_blocks(std::string_view text) {
  const auto blocks = engine::parse_csr_text(text);
  if (blocks.empty()) fuzz::violated("parse_csr_text returned no block");
  const int lines = 1 + static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  for (const auto& b : blocks) {
    if (b.line < 1 || b.line > lines) fuzz::violated("a block starts outside the text");
    if (!b.problem.empty() || b.der.empty()) continue;
    const auto again = engine::parse_csr_text(engine::pem(b.der, "CERTIFICATE REQUEST"));
    if (again.size() != 1 || !again[0].problem.empty() || again[0].der != b.der ||
        again[0].line != 1) {
      fuzz::violated("pem() and parse_csr_text do not round-trip a block");
    }
  }
  if (text.find("-----BEGIN ") == std::string_view::npos) {
    if (blocks.size() != 1 || fuzz::as_text(blocks[0].der) != text) {
      fuzz::violated("text without PEM markers is not taken as one DER block");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fuzz::MemFile file;
  if (size > kChainFileLimit) return 0;
  const std::string_view text = fuzz::as_text({data, size});
  check_csr_blocks(text);
  try {
    (void)engine::crls_from_pem(text);
  } catch (const Error&) {
  }
  try {
    (void)engine::read_certificates(file.write({data, size}), "chain", kChainFileLimit);
  } catch (const Error&) {
  }
  std::string problem;
  (void)device::ossl::parse_certificates(text, problem);
  problem.clear();
  (void)device::ossl::parse_private_key(text, problem);
  return 0;
}
