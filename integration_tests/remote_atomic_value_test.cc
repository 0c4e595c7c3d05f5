// Broker atomic values across real processes (issue 5): four
// dchan-test-worker processes increment one AtomicValue<int64_t> with
// load + compare_and_swap retry loops. compare_and_swap is linearizable on
// the broker, so no increment is lost however the processes interleave.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"
#include "sync_test_util.h"

namespace dchan::testing {
namespace {

TEST(RemoteAtomicValue, FourProcessesIncrementingByCompareAndSwapLoseNothing) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test");
  AtomicValue<int64_t> counter = client.atomic_value<int64_t>("counter");
  counter.store(0);
  constexpr int kProcesses = 4;
  constexpr int kRounds = 200;

  ScratchDir dir;
  const std::string go_file = dir.file("go");
  std::vector<Process> workers;
  for (int i = 0; i < kProcesses; ++i) {
    workers.push_back(sync_worker(
        "cas-loop", broker,
        {"--value=counter", absl::StrCat("--rounds=", kRounds),
         "--go_file=" + go_file, absl::StrCat("--client_name=incrementer-", i),
         "--timeout_s=150"}));
  }
  // All connected, then all released at once.
  for (Process& w : workers) {
    ASSERT_TRUE(w.wait_for_output("ready\n", kBrokerStateBound))
        << w.wait(milliseconds(0));
  }
  { std::ofstream(go_file) << "go\n"; }
  int64_t retries = 0;
  for (const ProcessResult& r : wait_all(workers, seconds(160))) {
    EXPECT_EQ(r.exit_code, 0) << r;
    const std::optional<std::string> rest =
        after_prefix(r.out, absl::StrCat("done rounds ", kRounds, " retries "));
    ASSERT_TRUE(rest.has_value()) << r;
    int64_t n = 0;
    ASSERT_TRUE(absl::SimpleAtoi(*rest, &n)) << r;
    retries += n;
  }
  EXPECT_EQ(counter.load(), std::optional<int64_t>(kProcesses * kRounds));
  std::printf(
      "MEASURE compare_and_swap retries over %d increments by %d "
      "processes: %lld\n",
      kProcesses * kRounds, kProcesses, static_cast<long long>(retries));
  std::fflush(stdout);
}

}  // namespace
}  // namespace dchan::testing
