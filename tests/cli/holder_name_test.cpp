// Lease holders' names: "host~tag:pid". The tag (the kernel's boot and the PID namespace) keeps
// two containers given one host name from sharing lease names, and from taking each other's
// running processes for dead ones of their own.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <regex>
#include <string>

#include "cli.hpp"

namespace fleetsign::cli {
namespace {

// A pid that is surely gone: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

TEST(HolderName, NamesTheHostItsBootAndPidNamespaceAndThePid) {
  const std::string me = process_holder_name();
  EXPECT_TRUE(std::regex_match(me, std::regex(R"(.+~[0-9a-f]{8}:[0-9]+)"))) << me;
  EXPECT_EQ(me.rfind(host_name() + "~", 0), 0u) << me;
  EXPECT_EQ(me.substr(me.rfind(':') + 1), std::to_string(::getpid()));
  EXPECT_EQ(process_holder_name(), me);  // the same for the whole process
}

TEST(HolderName, OnlyAHolderOfThisHostAndNamespaceWhosePidIsGoneIsGone) {
  const std::string me = process_holder_name();
  const std::string host = me.substr(0, me.rfind(':'));
  const std::string dead = std::to_string(dead_pid());
  EXPECT_TRUE(holder_is_gone(host + ":" + dead));
  EXPECT_FALSE(holder_is_gone(me));  // this process runs
  // The same host name in another container (another tag), or a name without a tag: its PIDs
  // are not this namespace's, so nothing is known of them here.
  const std::string other_tag =
      host_name() + (host.ends_with("~00000000") ? "~00000001" : "~00000000");
  EXPECT_FALSE(holder_is_gone(other_tag + ":" + dead));
  EXPECT_FALSE(holder_is_gone(host_name() + ":" + dead));
  EXPECT_FALSE(holder_is_gone(host + ":not-a-pid"));
  EXPECT_FALSE(holder_is_gone(""));
}

}  // namespace
}  // namespace fleetsign::cli
