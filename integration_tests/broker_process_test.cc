// The test harness's own promise (broker_process.h): a child dies with the
// test process that started it, even when that process is SIGKILLed (no
// destructor runs), and not before — also when the thread that started it
// has ended; and a broker that dies during a test without the test asking
// fails that test.
//
// The killed test process is this binary re-run with a filter that selects
// BrokerProcessHelper.StartsABrokerAndWaits and kHelperEnv set; without
// that variable the helper skips itself.
#include "broker_process.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "dchan/client.h"
#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"

namespace dchan::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;

constexpr char kHelper[] = "BrokerProcessHelper.StartsABrokerAndWaits";
constexpr char kHelperEnv[] = "DCHAN_BROKER_PROCESS_TEST_HELPER";

// The state letter and parent of process `pid` from /proc (nullopt: no
// such process).
struct ProcStat {
  char state = '?';
  pid_t ppid = 0;
};
std::optional<ProcStat> proc_stat(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
  std::istringstream rest(line.substr(line.rfind(')') + 1));
  ProcStat st;
  rest >> st.state >> st.ppid;
  return st;
}

// Gone, or a zombie nobody reaps (an orphan's new parent may never reap).
bool exited(pid_t pid) {
  const std::optional<ProcStat> st = proc_stat(pid);
  return !st.has_value() || st->state == 'Z' || st->state == 'X';
}

std::string self_path() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

TEST(BrokerProcessHelper, StartsABrokerAndWaits) {
  if (::getenv(kHelperEnv) == nullptr) {
    GTEST_SKIP() << "the test process BrokerProcess.DiesWith... kills";
  }
  BrokerProcess broker;
  std::printf("broker %d\n", static_cast<int>(broker.pid()));
  std::fflush(stdout);
  for (;;) std::this_thread::sleep_for(seconds(1));  // until SIGKILLed
}

TEST(BrokerProcess, DiesWithATestProcessKilledBySigkill) {
  ::setenv(kHelperEnv, "1", 1);  // children inherit the environment
  Process test_process =
      Process::spawn(self_path(), {std::string("--gtest_filter=") + kHelper});
  ::unsetenv(kHelperEnv);
  ASSERT_TRUE(test_process.wait_for_output("broker ", seconds(30)))
      << test_process.wait(milliseconds(0));
  pid_t broker_pid = 0;
  const std::string& out = test_process.output_so_far();
  const size_t at = out.find("broker ");
  ASSERT_NE(at, std::string::npos) << out;
  ASSERT_TRUE(absl::SimpleAtoi(out.substr(at + 7, out.find('\n', at) - at - 7),
                               &broker_pid))
      << out;
  const std::optional<ProcStat> before = proc_stat(broker_pid);
  ASSERT_TRUE(before.has_value());
  ASSERT_EQ(before->ppid, test_process.pid());  // the right process

  test_process.signal(SIGKILL);
  const ProcessResult r = test_process.wait(seconds(10));
  EXPECT_EQ(r.term_signal, SIGKILL) << r;
  // A liveness bound, not a performance claim: the kernel sends the
  // SIGKILL as the test process exits.
  const steady_clock::time_point deadline = steady_clock::now() + seconds(30);
  while (!exited(broker_pid) && steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  if (!exited(broker_pid)) {
    ::kill(broker_pid, SIGKILL);  // do not leave it behind either way
    FAIL() << "broker " << broker_pid << " outlived its killed test process";
  }
}

TEST(BrokerProcess, OutlivesTheThreadThatStartedIt) {
  std::optional<BrokerProcess> broker;
  std::thread([&] { broker.emplace(); }).join();
  // Were the child tied to that thread, the kernel would have killed it as
  // the thread exited: after a round trip and a pause it would be gone.
  Client client = Client::connect(broker->address());
  Chan<int64_t> ch = client.chan<int64_t>("c", 1);
  ch.send(1);
  EXPECT_EQ(ch.recv(), std::optional<int64_t>(1));
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_TRUE(broker->running());
}

// A broker that dies during a test without the test asking (here: SIGKILL
// from outside, as a crash or a sanitizer's abort would end it) fails the
// test when its BrokerProcess goes, with the broker's output.
TEST(BrokerProcess, ABrokerThatDiesByItselfFailsTheTest) {
  EXPECT_NONFATAL_FAILURE(
      {
        BrokerProcess broker;
        ::kill(broker.pid(), SIGKILL);
        const auto deadline = steady_clock::now() + seconds(20);
        while (broker.running() && steady_clock::now() < deadline) {
          std::this_thread::sleep_for(milliseconds(10));
        }
      },
      "dchan-broker exited by itself during the test");
}

// One the test ends itself is the test's business.
TEST(BrokerProcess, ABrokerTheTestKilledIsLeftAlone) {
  BrokerProcess broker;
  const ProcessResult r = broker.kill();
  EXPECT_EQ(r.term_signal, SIGKILL);
}

}  // namespace
}  // namespace dchan::testing
