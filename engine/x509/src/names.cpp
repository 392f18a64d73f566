#include "names.hpp"

#include "oids.hpp"

namespace fleetsign::engine {

// Finds the single CN of a Name; counts O/OU etc. as irrelevant (the policy sets the subject).
Result<std::string> single_common_name(der::Bytes name) {
  der::Tlv seq;
  if (!der::expect(name, der::tag::kSequence, seq))
    return fail(ErrorCode::kCsrMalformed, "subject is not a Name");
  std::string cn;
  int found = 0;
  der::Bytes rdns = seq.content;
  while (!rdns.empty()) {
    der::Tlv set;
    if (!der::expect(rdns, der::tag::kSet, set))
      return fail(ErrorCode::kCsrMalformed, "subject RDN is not a SET");
    der::Bytes atvs = set.content;
    while (!atvs.empty()) {
      der::Tlv atv, type, value;
      if (!der::expect(atvs, der::tag::kSequence, atv))
        return fail(ErrorCode::kCsrMalformed, "bad subject attribute");
      der::Bytes a = atv.content;
      if (!der::expect(a, der::tag::kOid, type) || !der::read(a, value)) {
        return fail(ErrorCode::kCsrMalformed, "bad subject attribute");
      }
      if (!der::equal(type.content, oid::kCommonName)) continue;
      if (value.tag != der::tag::kUtf8String && value.tag != der::tag::kPrintableString &&
          value.tag != der::tag::kIa5String) {
        return fail(ErrorCode::kDeviceIdInvalid, "subject CN is not a UTF8/Printable/IA5 string");
      }
      cn.assign(value.content.begin(), value.content.end());
      ++found;
    }
  }
  if (found == 0) return fail(ErrorCode::kDeviceIdInvalid, "subject has no CN (the device ID)");
  if (found > 1) return fail(ErrorCode::kDeviceIdInvalid, "subject has more than one CN");
  return cn;
}

}  // namespace fleetsign::engine
