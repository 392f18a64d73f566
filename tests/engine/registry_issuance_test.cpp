// Registry: intents, issued certificates, device slots and batches, on a real SQLite file in a
// fresh temporary directory per test (PostgreSQL on the pg.* run).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "registry_test_support.hpp"

namespace fleetsign::engine {
namespace {

namespace kw = Poco::Data::Keywords;
using namespace regtest;  // NOLINT: the shared builders

TEST(Registry, DevicesWithValidCertRespectsExpiryAndStateAcrossChunks) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  // 1200 devices: more than two IN-list chunks.
  std::vector<CertIntent> intents;
  std::vector<IssuedCert> certs;
  for (int n = 0; n < 1200; ++n) {
    intents.push_back(intent(n));
    if (n % 3 == 0) {
      intents.back().not_after = kNow - 1;  // expired
    }
    if (n % 3 != 2) {
      certs.push_back(issued(n));  // every third stays an intent
    }
  }
  reg->record_intents(intents);
  reg->record_issued(certs);

  std::vector<std::string> ids;
  for (int n = 1199; n >= 0; --n) {
    ids.push_back("dev-" + std::to_string(n));
  }
  ids.push_back("unknown-device");
  const auto valid = reg->devices_with_valid_cert(ids, kNow);
  ASSERT_EQ(valid.size(), 400u);
  for (const auto& id : valid) {
    EXPECT_EQ(std::stoi(id.substr(4)) % 3, 1) << id;
  }
  EXPECT_EQ(valid.front(), "dev-1198");  // input order kept
  EXPECT_TRUE(reg->devices_with_valid_cert({}, kNow).empty());
  // At a time past every not_after nothing is valid.
  EXPECT_TRUE(reg->devices_with_valid_cert(ids, kNow + 2 * kYear).empty());
}

TEST(Registry, BatchIssuedAfterIsOrderedBySeqAndSkipsIntents) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->record_intents(std::vector{intent(5), intent(2), intent(9), intent(7), intent(3)});
  reg->record_intents(std::vector{intent(8, "other")});
  reg->record_issued(std::vector{issued(9), issued(2), issued(5), issued(3), issued(8)});

  const auto after = reg->batch_issued_after("b1", 2);
  std::vector<std::int64_t> seqs;
  for (const auto& c : after) {
    seqs.push_back(c.seq);
    EXPECT_EQ(c.state, CertState::kIssued);
  }
  EXPECT_EQ(seqs, (std::vector<std::int64_t>{3, 5, 9}));
  EXPECT_EQ(reg->batch_issued_after("b1", -1).size(), 4u);
  EXPECT_TRUE(reg->batch_issued_after("none", -1).empty());
}

TEST(Registry, CertsOfDeviceListsEveryState) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->record_intents(std::vector{intent(1, "b1", "dev-x"), intent(2, "b2", "dev-x"), intent(3)});
  reg->record_issued(std::vector{issued(1)});
  const auto certs = reg->certs_of_device("dev-x");
  ASSERT_EQ(certs.size(), 2u);
  EXPECT_EQ(reg->count_certs("", CertState::kIntent), 2);
}

TEST(Registry, BatchIsCreatedProgressedFinishedAndListed) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  BatchRecord b;
  b.id = "batch-a";
  b.ca_name = "issuing";
  b.params_json = R"({"input":"csrs/"})";
  b.created_at = 1000;
  reg->create_batch(b);
  b.id = "batch-b";
  b.created_at = 2000;
  reg->create_batch(b);
  EXPECT_EQ(code_of([&] { reg->create_batch(b); }), ErrorCode::kAlreadyExists);

  auto found = reg->find_batch("batch-a");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->state, "running");
  EXPECT_EQ(found->watermark, -1);
  EXPECT_EQ(found->params_json, R"({"input":"csrs/"})");

  reg->update_batch_progress("batch-a", 499, R"({"certs":1234})", 498, 2);
  reg->finish_batch("batch-a", 1500);
  found = reg->find_batch("batch-a");
  EXPECT_EQ(found->watermark, 499);
  EXPECT_EQ(found->offsets_json, R"({"certs":1234})");
  EXPECT_EQ(found->issued, 498);
  EXPECT_EQ(found->rejected, 2);
  EXPECT_EQ(found->state, "finished");
  EXPECT_EQ(found->finished_at, 1500);

  const auto all = reg->list_batches({});
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].id, "batch-b");  // newest first
  EXPECT_EQ(all[1].id, "batch-a");
  // A page after a batch: the older ones; a batch that is not there is no cursor.
  const auto after = reg->list_batches({1, "batch-b"});
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].id, "batch-a");
  EXPECT_TRUE(reg->list_batches({0, "batch-a"}).empty());
  EXPECT_EQ(reg->list_batches({1, ""}).size(), 1u);
  EXPECT_EQ(code_of([&] { reg->list_batches({1, "nope"}); }), ErrorCode::kNotFound);
  EXPECT_FALSE(reg->find_batch("nope"));
  EXPECT_EQ(code_of([&] { reg->update_batch_progress("nope", 1, "", 0, 0); }),
            ErrorCode::kNotFound);
  EXPECT_EQ(code_of([&] { reg->finish_batch("nope", 1); }), ErrorCode::kNotFound);
}

// Batch issuance writes ~500-row chunks; a hundred thousand of them are all recorded as issued.
// The rate is a figure of fleetsign-bench (registry_record_per_s), not an assertion here: a
// wall-clock bound fails under a sanitizer or a loaded machine without saying anything about
// behaviour.
// Spans longer than one multi-row statement (64 rows) plus a remainder: every column of every
// row is what was given, and each device's slots follow the order of the call.
TEST(Registry, LongSpansRecordEveryRowAndFillDeviceSlotsInOrder) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  constexpr int kCount = 64 * 2 + 7;
  std::vector<CertIntent> intents;
  std::vector<IssuedCert> certs;
  // Second certificates, later in the same call: of devices 0..2 in the same 64-row statement
  // (rows 10..12), and of devices 3..5 in the remainder (the last 3 rows).
  const auto second_of = [&](int n) {
    return n >= 10 && n <= 12 ? n - 10 : n >= kCount - 3 ? n - (kCount - 3) + 3 : -1;
  };
  for (int n = 0; n < kCount; ++n) {
    const int first = second_of(n);
    intents.push_back(intent(n, "long", first >= 0 ? "dev-" + std::to_string(first) : ""));
    intents.back().not_after = kNow + kYear + n;
    intents.back().lineage.lot = "lot-" + std::to_string(n % 5);
    certs.push_back(issued(n));
  }
  reg->record_intents(intents);
  for (int n = 0; n < kCount; ++n) {
    const auto rec = reg->find_cert(serial_of(n));
    ASSERT_TRUE(rec) << n;
    EXPECT_EQ(rec->state, CertState::kIntent);
    EXPECT_EQ(rec->device_id, intents[n].device_id);
    EXPECT_EQ(rec->seq, n);
    EXPECT_EQ(rec->der, intents[n].tbs_der) << n;
    EXPECT_EQ(rec->not_after, kNow + kYear + n);
    EXPECT_EQ(rec->lineage.lot, intents[n].lineage.lot);
    EXPECT_EQ(rec->lineage.operator_name, "alice");
  }
  reg->record_issued(certs);
  for (int n = 0; n < kCount; ++n) {
    const auto rec = reg->find_cert(serial_of(n));
    EXPECT_EQ(rec->state, CertState::kIssued) << n;
    EXPECT_EQ(rec->der, certs[n].der) << n;
    EXPECT_EQ(rec->sha256, "BB" + std::to_string(n));
  }
  const auto single = reg->find_device("dev-70");
  ASSERT_TRUE(single);
  EXPECT_EQ(single->primary_serial, serial_of(70));
  EXPECT_EQ(single->primary_not_after, kNow + kYear + 70);
  EXPECT_EQ(single->secondary_serial, "");
  EXPECT_EQ(single->lot, "lot-0");
  EXPECT_EQ(single->ca_name, "issuing");
  for (int n = 0; n < kCount; ++n) {
    const int d = second_of(n);
    if (d < 0) continue;
    const auto twice = reg->find_device("dev-" + std::to_string(d));
    ASSERT_TRUE(twice);
    EXPECT_EQ(twice->primary_serial, serial_of(d)) << "the earlier certificate keeps the primary";
    EXPECT_EQ(twice->secondary_serial, serial_of(n));
    EXPECT_EQ(twice->secondary_not_after, kNow + kYear + n);
  }
  EXPECT_FALSE(reg->find_device("dev-10"));
}

// A serial that is not an intent, deep inside a multi-row statement: nothing of the call stays.
TEST(Registry, LongSpanWithOneNonIntentWritesNothing) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  std::vector<CertIntent> intents;
  std::vector<IssuedCert> certs;
  for (int n = 0; n < 100; ++n) {
    intents.push_back(intent(n));
    certs.push_back(issued(n));
  }
  reg->record_intents(intents);
  reg->record_issued(std::vector<IssuedCert>{issued(40)});
  try {
    reg->record_issued(certs);
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kRegistryError);
    EXPECT_NE(std::string(e.what()).find(serial_of(40) + " is issued"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(reg->count_certs("b1", CertState::kIssued), 1);
  EXPECT_FALSE(reg->find_device("dev-3"));

  // A taken serial in the second multi-row statement of an intent span: nothing is written.
  std::vector<CertIntent> more;
  for (int n = 200; n < 300; ++n) more.push_back(intent(n, "b2"));
  more[90] = intent(7, "b2");
  EXPECT_EQ(code_of([&] { reg->record_intents(more); }), ErrorCode::kAlreadyExists);
  EXPECT_FALSE(reg->find_cert(serial_of(200)));
  EXPECT_EQ(reg->count_certs("b2", CertState::kIntent), 0);
}

TEST(Registry, RecordsHundredThousandIntentsAndIssuedInChunks) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  constexpr int kTotal = 100'000;
  constexpr int kChunk = 500;
  for (int base = 0; base < kTotal; base += kChunk) {
    std::vector<CertIntent> intents;
    std::vector<IssuedCert> certs;
    for (int n = base; n < base + kChunk; ++n) {
      intents.push_back(intent(n, "big"));
      intents.back().tbs_der.resize(300, 0x5A);
      certs.push_back(issued(n));
      certs.back().der.resize(500, 0xA5);
    }
    reg->record_intents(intents);
    reg->record_issued(certs);
  }
  EXPECT_EQ(reg->count_certs("big", CertState::kIssued), kTotal);
  EXPECT_EQ(reg->count_certs("big", CertState::kIntent), 0);
}

}  // namespace
}  // namespace fleetsign::engine
