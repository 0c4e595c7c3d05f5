// Broker wait groups across real processes (issue 5): this test process is
// the coordinator, three dchan-test-worker processes are the participants
// ("wg-participant": add(1), report ready on a channel, wait for the go
// channel to close, done()). Session TTL kTtl (1 s) everywhere.
//
//   - wait() returns once all three are done, not before;
//   - a participant killed between its add and its done: a wait() blocked
//     meanwhile fails within TTL + slack with ABORTED naming it (and later
//     waits keep failing until an add starts a new round); a participant
//     frozen (SIGSTOP) past its TTL, the same;
//   - with `forgive`, the lost participant's debt counts as done: wait()
//     returns once the others are done.
//
// Every wait is bounded; delays are printed (MEASURE lines), never asserted.
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"
#include "sync_test_util.h"

namespace dchan::testing {
namespace {

constexpr int kWorkers = 3;

// A coordinator's view of one round: the wait group, the channels its
// participants use, and the participant processes (worker-0 .. worker-2).
class Round {
 public:
  Round(BrokerProcess& broker, const std::string& name, bool forgive)
      : broker_(broker),
        name_(name),
        client_(connect_client(broker, "coordinator")),
        wg_(client_.wait_group(name, WaitGroupOptions{.forgive = forgive})),
        ready_(client_.chan<std::string>(name + "-ready", 16)),
        go_(client_.chan<int64_t>(name + "-go", 0)) {
    for (int i = 0; i < kWorkers; ++i) {
      std::vector<std::string> args = {
          "--wg=" + name, "--ready=" + name + "-ready", "--go=" + name + "-go",
          absl::StrCat("--client_name=worker-", i)};
      if (forgive) args.push_back("--forgive=1");
      workers_.push_back(sync_worker("wg-participant", broker, args));
    }
  }

  // Waits until every participant has added 1 and reported ready; returns
  // their names.
  std::set<std::string> await_ready() {
    std::set<std::string> names;
    for (int i = 0; i < kWorkers; ++i) {
      RecvResult<std::string> r = ready_.recv_for(kBrokerStateBound);
      if (r.status != ChanStatus::kOk) break;
      names.insert(*r.value);
    }
    return names;
  }

  // Lets the participants call done().
  void release() { go_.close(); }

  WaitGroup& wg() { return wg_; }
  Process& worker(int i) { return workers_[i]; }
  std::vector<ProcessResult> wait_workers() {
    return wait_all(workers_, kWorkerBound);
  }
  std::optional<ObjectState> state() { return broker_.object_state(name_); }

 private:
  BrokerProcess& broker_;
  std::string name_;
  Client client_;
  WaitGroup wg_;
  Chan<std::string> ready_;
  Chan<int64_t> go_;
  std::vector<Process> workers_;
};

const std::set<std::string> kAllWorkers = {"worker-0", "worker-1", "worker-2"};

TEST(RemoteWaitGroup, WaitReturnsOnceAllThreeWorkerProcessesAreDone) {
  BrokerProcess broker(short_ttl_broker_args());
  Round round(broker, "jobs", /*forgive=*/false);
  ASSERT_EQ(round.await_ready(), kAllWorkers);
  EXPECT_EQ(round.wg().count(), kWorkers);
  // Not before they are done.
  EXPECT_FALSE(round.wg().wait_for(milliseconds(300)));

  round.release();
  EXPECT_TRUE(round.wg().wait_for(kWorkerBound));
  EXPECT_EQ(round.wg().count(), 0);
  for (const ProcessResult& r : round.wait_workers()) {
    EXPECT_EQ(r.exit_code, 0) << r;
    EXPECT_TRUE(has_line(r.out, "done")) << r;
  }
}

// With the coordinator blocked in wait() (on another thread; the broker
// shows the blocked wait), runs `lose` on worker-1 and expects that wait()
// to fail with ABORTED naming worker-1 within TTL + slack. Returns the delay
// from `lose` to the failure, in ms.
double expect_wait_fails_naming_lost_worker(
    BrokerProcess& broker, Round& round,
    const std::function<void(Process&)>& lose) {
  bool returned = false;
  std::optional<Error> error;
  int64_t ended_at = 0;
  std::thread coordinator([&] {
    try {
      returned = round.wg().wait_for(kBrokerStateBound + kTtl + kLossSlack);
    } catch (const Error& e) {
      error = e;
    }
    ended_at = steady_now_ns();
  });
  const bool blocked = broker.wait_for_object(
      "jobs", [](const ObjectState& s) { return s.blocked_waiters >= 1; },
      kBrokerStateBound);
  const int64_t lost_at = steady_now_ns();
  lose(round.worker(1));
  coordinator.join();
  EXPECT_TRUE(blocked) << "the coordinator's wait() never showed on the broker";
  const double ms = static_cast<double>(ended_at - lost_at) / 1e6;
  if (!error.has_value()) {
    ADD_FAILURE() << "wait() did not fail after a participant was lost "
                     "(returned "
                  << returned << " after " << ms << " ms)";
    return ms;
  }
  std::printf("wait() failed: %s: %s\n",
              absl::StatusCodeToString(error->code()).c_str(), error->what());
  EXPECT_EQ(error->code(), absl::StatusCode::kAborted) << error->what();
  EXPECT_TRUE(absl::StrContains(error->what(), "\"worker-1\""))
      << error->what();
  EXPECT_TRUE(absl::StrContains(error->what(), "jobs")) << error->what();
  EXPECT_FALSE(absl::StrContains(error->what(), "worker-0")) << error->what();
  // A liveness bound, not a performance claim.
  EXPECT_LE(ms, static_cast<double>((kTtl + kLossSlack).count()));
  return ms;
}

TEST(RemoteWaitGroup, KilledWorkerFailsWaitNamingIt) {
  BrokerProcess broker(short_ttl_broker_args());
  Round round(broker, "jobs", /*forgive=*/false);
  ASSERT_EQ(round.await_ready(), kAllWorkers);

  const double ms = expect_wait_fails_naming_lost_worker(
      broker, round, [](Process& p) { p.signal(SIGKILL); });
  std::printf(
      "MEASURE SIGKILL of a WaitGroup participant to wait() failing: "
      "%.1f ms\n",
      ms);
  std::fflush(stdout);

  // Still failed for a later wait, also once the others are done...
  round.release();
  std::vector<ProcessResult> results = round.wait_workers();
  EXPECT_EQ(results[1].term_signal, SIGKILL) << results[1];
  for (int i : {0, 2}) {
    EXPECT_EQ(results[i].exit_code, 0) << results[i];
    EXPECT_TRUE(has_line(results[i].out, "done")) << results[i];
  }
  EXPECT_EQ(round.wg().count(), 0);
  try {
    round.wg().wait_for(milliseconds(0));
    ADD_FAILURE() << "a failed WaitGroup's wait() returned before a new round";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kAborted) << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), "worker-1")) << e.what();
  }
  // ...until an add starts a new round.
  round.wg().add(1);
  round.wg().done();
  EXPECT_TRUE(round.wg().wait_for(kWorkerBound));
}

TEST(RemoteWaitGroup, FrozenWorkerFailsWaitNamingItAfterItsTtl) {
  BrokerProcess broker(short_ttl_broker_args());
  Round round(broker, "jobs", /*forgive=*/false);
  ASSERT_EQ(round.await_ready(), kAllWorkers);

  const double ms = expect_wait_fails_naming_lost_worker(
      broker, round, [](Process& p) { p.signal(SIGSTOP); });
  std::printf(
      "MEASURE SIGSTOP of a WaitGroup participant (TTL %lld ms) to "
      "wait() failing: %.1f ms\n",
      static_cast<long long>(kTtl.count()), ms);
  std::fflush(stdout);

  // Thawed, the frozen worker finds its session lost: its blocked receive
  // fails (it never gets to done()).
  round.worker(1).signal(SIGCONT);
  round.release();
  std::vector<ProcessResult> results = round.wait_workers();
  EXPECT_EQ(results[1].exit_code, 3) << results[1];
  EXPECT_TRUE(has_line_starting(results[1].out, "error UNAVAILABLE"))
      << results[1];
  EXPECT_FALSE(has_line(results[1].out, "done")) << results[1];
  for (int i : {0, 2}) EXPECT_EQ(results[i].exit_code, 0) << results[i];
}

TEST(RemoteWaitGroup, ForgivingWaitGroupReturnsAfterAWorkerIsKilled) {
  BrokerProcess broker(short_ttl_broker_args());
  Round round(broker, "jobs", /*forgive=*/true);
  ASSERT_EQ(round.await_ready(), kAllWorkers);

  round.worker(1).signal(SIGKILL);
  // The broker settles the lost session's debt: the counter drops to 2...
  ASSERT_TRUE(broker.wait_for_object(
      "jobs", [](const ObjectState& s) { return s.count == 2; },
      kTtl + kLossSlack))
      << round.state().value_or(ObjectState{}).count;
  EXPECT_TRUE(round.state().value_or(ObjectState{}).failure.empty());
  // ...and wait() neither fails nor returns while the others still work.
  EXPECT_FALSE(round.wg().wait_for(milliseconds(300)));

  round.release();
  EXPECT_TRUE(round.wg().wait_for(kWorkerBound));
  std::vector<ProcessResult> results = round.wait_workers();
  EXPECT_EQ(results[1].term_signal, SIGKILL) << results[1];
  for (int i : {0, 2}) EXPECT_EQ(results[i].exit_code, 0) << results[i];
}

}  // namespace
}  // namespace dchan::testing
