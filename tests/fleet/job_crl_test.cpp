// A job's own revocations reach the CRL before the job reports: the certificates a rollover
// retires ("superseded") are listed by their CA's CRL, in the registry and in the broker's CRL
// file, once `rollover start` returns. Before, the CRL stayed behind until something else signed
// it, and `openssl verify -crl_check` passed a retired leaf. The real fleetsign program,
// fleetsign's broker, the real device agent and the openssl command.
#include <gtest/gtest.h>

#include <string>

#include "live_fleet.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

using testing::json;
using testing::quoted;

class JobCrl : public testing::LiveFleet {};

TEST_F(JobCrl, ARolloverSignsTheCrlOfWhatItRetiredBeforeItReports) {
  fleet("LOT-J", "rj", 2);
  ASSERT_EQ(wait_connected("rj", 2), 2);
  const auto before = json(bin.ok("crl show factory-1 --json").out);
  const auto run = bin.run("rollover start --lot LOT-J --expiring-within 400d --json");
  ASSERT_EQ(run.status, 0) << run.out << run.err;
  ASSERT_EQ(json(run.out)->getValue<int>("done"), 2) << run.out;

  const auto after = json(bin.ok("crl show factory-1 --json").out);
  EXPECT_FALSE(after->getValue<bool>("behind")) << bin.ok("crl show factory-1").out;
  EXPECT_GT(after->getValue<int>("number"), before->getValue<int>("number"));
  EXPECT_EQ(after->getValue<int>("revoked_now"), 2);
  // A relying party with the CRL refuses a retired leaf.
  bin.ok("crl export factory-1 --out " + quoted(path("factory-1.crl")));
  bin.ok("crl export root --out " + quoted(path("root.crl")));
  bin.ok("ca export factory-1 --chain --out " + quoted(path("chain.pem")));
  std::string out;
  const int rc =
      testing::run("openssl verify -crl_check_all -CAfile " + quoted(path("chain.pem")) +
                       " -CRLfile " + quoted(path("factory-1.crl")) + " -CRLfile " +
                       quoted(path("root.crl")) + " " + quoted(path("LOT-J/rj-0001_cert.pem")),
                   &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("revoked"), std::string::npos) << out;
  // The broker's CRL file lists it too (the broker refuses the retired certificate).
  const auto check = json(
      bin.run("auth check --chain " + quoted(path("LOT-J/rj-0001_fullchain.pem")) + " --json").out);
  EXPECT_EQ(check->getValue<std::string>("rule"), "revoked");
}

}  // namespace
}  // namespace fleetsign
