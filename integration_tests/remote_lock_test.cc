// Broker locks across real processes (issue 5): each test starts its own
// dchan-broker on 127.0.0.1 and runs dchan-test-worker processes against it
// (see worker.cc for the modes), with a session TTL of kTtl (1 s).
//
//   - a holder killed with SIGKILL: a process queued for the lock gets it
//     within TTL + slack, with a larger fencing token (the delays over ten
//     trials are printed as a MEASURE line, never asserted);
//   - a holder frozen with SIGSTOP past its TTL: the lock goes to the next
//     process; once thawed, the old holder is told (its hold token stops, its
//     next operation on the lock throws ABORTED), and a fenced resource
//     rejects every write it still makes with its old token;
//   - a waiter frozen while queued is skipped when the lock is handed on
//     (the waiter's session is checked live at grant time, etcd-io/etcd#11456);
//   - readers killed while a writer waits: their shared holds are released
//     too, and the writer gets the RWMutex once the last one is gone;
//   - 4 processes x 200 rounds on one lock and one shared file: no lost
//     update, no overlap, tokens strictly increasing; again with two of the
//     four keeping the lock after unlock (MutexOptions::keep).
//
// Where a test needs a process to be queued on the lock before it acts, it
// asks the broker (Inspect: queued lockers) instead of sleeping. Every wait
// is bounded; the bounds are liveness bounds, not performance assertions.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"
#include "sync_test_util.h"

namespace dchan::testing {
namespace {

auto queued_at_least(uint64_t n) {
  return [n](const ObjectState& s) { return s.queued_lockers >= n; };
}

double ms_between(int64_t from_ns, int64_t to_ns) {
  return static_cast<double>(to_ns - from_ns) / 1e6;
}

TEST(RemoteMutex, KilledHolderHandsTheLockToAQueuedProcessWithALargerToken) {
  BrokerProcess broker(short_ttl_broker_args());
  constexpr int kTrials = 10;
  std::vector<double> delays_ms;
  uint64_t last_token = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    Process holder = sync_worker(
        "hold-lock", broker,
        {"--lock=shared", absl::StrCat("--client_name=holder-", trial)});
    ASSERT_TRUE(holder.wait_for_output("holding\n", kBrokerStateBound))
        << holder.wait(milliseconds(0));
    const uint64_t holder_token = locked_token(holder.output_so_far());
    ASSERT_GT(holder_token, last_token) << holder.output_so_far();

    Process waiter = sync_worker(
        "lock-once", broker,
        {"--lock=shared", absl::StrCat("--client_name=waiter-", trial)});
    ASSERT_TRUE(
        broker.wait_for_object("shared", queued_at_least(1), kBrokerStateBound))
        << waiter.wait(milliseconds(0));

    const int64_t killed_at = steady_now_ns();
    holder.signal(SIGKILL);
    const ProcessResult w = waiter.wait(kTtl + kLossSlack);
    ASSERT_FALSE(w.timed_out)
        << "the lock was not handed on within TTL + slack after its holder "
           "was killed\n"
        << w;
    ASSERT_EQ(w.exit_code, 0) << w;
    const uint64_t waiter_token = locked_token(w.out);
    EXPECT_GT(waiter_token, holder_token) << w;
    EXPECT_TRUE(has_line(w.out, "unlocked")) << w;
    const int64_t acquired_at = locked_at_ns(w.out);
    ASSERT_GT(acquired_at, 0) << w;
    delays_ms.push_back(ms_between(killed_at, acquired_at));
    last_token = waiter_token;

    const ProcessResult h = holder.wait(kWorkerBound);
    EXPECT_EQ(h.term_signal, SIGKILL) << h;
  }
  std::printf(
      "MEASURE SIGKILL of a lock holder to the queued process holding the "
      "lock (TTL %lld ms): %s\n",
      static_cast<long long>(kTtl.count()), describe_delays(delays_ms).c_str());
  std::fflush(stdout);
}

TEST(RemoteMutex, FrozenHolderLearnsOfTheLossAndItsStaleWritesAreRejected) {
  BrokerProcess broker(short_ttl_broker_args());
  FencedResource fence;
  ScratchDir dir;
  const std::string go_file = dir.file("go");
  constexpr int kStaleWrites = 3;

  Process holder = sync_worker(
      "hold-lock", broker,
      {"--lock=ledger", "--client_name=frozen-holder", fence.port_flag(),
       "--go_file=" + go_file, absl::StrCat("--stale_writes=", kStaleWrites)});
  ASSERT_TRUE(holder.wait_for_output("holding\n", kBrokerStateBound))
      << holder.wait(milliseconds(0));
  const uint64_t old_token = locked_token(holder.output_so_far());
  ASSERT_GT(old_token, 0u) << holder.output_so_far();
  EXPECT_TRUE(has_line(holder.output_so_far(), "fence OK"))
      << holder.output_so_far();

  Process next = sync_worker("lock-once", broker,
                             {"--lock=ledger", "--client_name=next-holder",
                              fence.port_flag(), "--payload=next-holder"});
  ASSERT_TRUE(
      broker.wait_for_object("ledger", queued_at_least(1), kBrokerStateBound))
      << next.wait(milliseconds(0));

  // Frozen: its connection stays open, it sends nothing; the broker ends its
  // session once the TTL passes and hands the lock on.
  const int64_t stopped_at = steady_now_ns();
  holder.signal(SIGSTOP);
  const ProcessResult n = next.wait(kTtl + kLossSlack);
  ASSERT_FALSE(n.timed_out)
      << "the lock of a frozen holder was not handed on within TTL + slack\n"
      << n;
  ASSERT_EQ(n.exit_code, 0) << n;
  const uint64_t new_token = locked_token(n.out);
  EXPECT_GT(new_token, old_token) << n;
  EXPECT_TRUE(has_line(n.out, "fence OK")) << n;
  const double handed_on_ms = ms_between(stopped_at, locked_at_ns(n.out));
  EXPECT_GE(handed_on_ms, 0) << n;

  // Thaw the old holder: it still thinks it holds the lock and writes.
  { std::ofstream(go_file) << "go\n"; }
  const int64_t thawed_at = steady_now_ns();
  holder.signal(SIGCONT);
  const ProcessResult h = holder.wait(kWorkerBound);
  ASSERT_EQ(h.exit_code, 0) << h;
  const std::string rejected = absl::StrCat("fence REJECTED token ", old_token,
                                            " < highest ", new_token);
  EXPECT_EQ(count_lines(h.out, rejected), kStaleWrites) << h;
  EXPECT_TRUE(has_line_starting(h.out, "unlock error ABORTED")) << h;
  EXPECT_TRUE(has_line(h.out, "hold_token stop_requested=1")) << h;
  EXPECT_TRUE(has_line_starting(h.out, "try_lock error ABORTED")) << h;
  // The loss message names the lock and the token held.
  const std::optional<std::string> unlock_error =
      after_prefix(h.out, "unlock error ABORTED ");
  ASSERT_TRUE(unlock_error.has_value()) << h;
  std::printf("the thawed holder's unlock() failed: ABORTED %s\n",
              unlock_error->c_str());
  EXPECT_TRUE(absl::StrContains(*unlock_error, "ledger")) << h;
  EXPECT_TRUE(absl::StrContains(*unlock_error, absl::StrCat(old_token))) << h;

  // What the resource saw: the first holder's write, the next holder's, and
  // every stale write rejected.
  std::vector<std::string> want = {
      absl::StrCat("ACCEPTED ", old_token, " frozen-holder-first"),
      absl::StrCat("ACCEPTED ", new_token, " next-holder")};
  for (int i = 0; i < kStaleWrites; ++i) {
    want.push_back(
        absl::StrCat("REJECTED ", old_token, " frozen-holder-stale-", i));
  }
  EXPECT_EQ(fence.log(), want);

  std::printf(
      "MEASURE SIGSTOP of a lock holder (TTL %lld ms) to the next process "
      "holding the lock: %.1f ms\n",
      static_cast<long long>(kTtl.count()), handed_on_ms);
  if (const std::optional<std::string> lost =
          after_prefix(h.out, "hold lost-at ")) {
    int64_t lost_at = 0;
    if (absl::SimpleAtoi(*lost, &lost_at)) {
      std::printf(
          "MEASURE SIGCONT of the frozen holder to its hold token stopping: "
          "%.1f ms\n",
          ms_between(thawed_at, lost_at));
    }
  }
  std::fflush(stdout);
}

// etcd-io/etcd#11456: a waiter whose session ended while it was queued must
// not be granted the lock; the next live waiter gets it.
TEST(RemoteMutex, FrozenQueuedWaiterIsSkippedWhenTheLockIsHandedOn) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test-holder");
  Mutex m = client.mutex("turnstile");
  m.lock();
  const uint64_t first_token = m.token();

  Process frozen = sync_worker(
      "lock-once", broker, {"--lock=turnstile", "--client_name=frozen-waiter"});
  ASSERT_TRUE(broker.wait_for_object("turnstile", queued_at_least(1),
                                     kBrokerStateBound))
      << frozen.wait(milliseconds(0));
  frozen.signal(SIGSTOP);
  Process live = sync_worker("lock-once", broker,
                             {"--lock=turnstile", "--client_name=live-waiter"});
  ASSERT_TRUE(broker.wait_for_object("turnstile", queued_at_least(2),
                                     kBrokerStateBound))
      << live.wait(milliseconds(0));

  // Past the frozen waiter's TTL: its session has ended (whether or not the
  // broker's reaper has swept it yet, the grant must skip it). The test's
  // own session stays alive meanwhile (its client pings every TTL/4).
  std::this_thread::sleep_for(kTtl + milliseconds(100));
  m.unlock();

  const ProcessResult l = live.wait(kWorkerBound);
  ASSERT_EQ(l.exit_code, 0) << l;
  EXPECT_GT(locked_token(l.out), first_token) << l;

  frozen.signal(SIGCONT);
  const ProcessResult f = frozen.wait(kWorkerBound);
  EXPECT_FALSE(has_line_starting(f.out, "locked"))
      << "a waiter whose session had ended was granted the lock\n"
      << f;
  EXPECT_EQ(f.exit_code, 3) << f;  // its lock() failed: the session is lost
}

// Session end releases shared holds too: a writer queued behind two reader
// processes gets the RWMutex once both are killed, not before.
TEST(RemoteRWMutex, KilledReaderProcessesReleaseTheirReadLocksToAQueuedWriter) {
  BrokerProcess broker(short_ttl_broker_args());
  // One exclusive acquisition first, so that tokens are not all zero.
  Process first = sync_worker("lock-once", broker, {"--lock=rw", "--kind=rw"});
  const ProcessResult f = first.wait(kWorkerBound);
  ASSERT_EQ(f.exit_code, 0) << f;
  const uint64_t first_token = locked_token(f.out);

  std::vector<Process> readers;
  for (int i = 0; i < 2; ++i) {
    readers.push_back(sync_worker("hold-lock", broker,
                                  {"--lock=rw", "--kind=rw-shared",
                                   absl::StrCat("--client_name=reader-", i)}));
  }
  for (Process& r : readers) {
    ASSERT_TRUE(r.wait_for_output("holding\n", kBrokerStateBound))
        << r.wait(milliseconds(0));
  }
  Process writer = sync_worker(
      "lock-once", broker, {"--lock=rw", "--kind=rw", "--client_name=writer"});
  ASSERT_TRUE(
      broker.wait_for_object("rw", queued_at_least(1), kBrokerStateBound))
      << writer.wait(milliseconds(0));

  readers[0].signal(SIGKILL);
  // One reader still holds it: the writer keeps waiting.
  ASSERT_TRUE(broker.wait_for_object(
      "rw",
      [](const ObjectState& s) {
        return s.holder_sessions.size() == 1 && s.queued_lockers == 1;
      },
      kTtl + kLossSlack));
  EXPECT_TRUE(writer.running()) << writer.wait(milliseconds(0));

  readers[1].signal(SIGKILL);
  const ProcessResult w = writer.wait(kTtl + kLossSlack);
  ASSERT_FALSE(w.timed_out)
      << "the writer did not get the lock after both readers were killed\n"
      << w;
  ASSERT_EQ(w.exit_code, 0) << w;
  EXPECT_GT(locked_token(w.out), first_token) << w;
  for (Process& r : readers) {
    const ProcessResult res = r.wait(kWorkerBound);
    EXPECT_EQ(res.term_signal, SIGKILL) << res;
  }
}

// 4 lock-loop processes on lock "ledger"; `keep`: the ones with an odd
// index open it with MutexOptions::keep.
void contend(bool keep) {
  BrokerProcess broker(short_ttl_broker_args());
  ScratchDir dir;
  const std::string file = dir.file("ledger");
  const std::string marker = dir.file("inside");
  const std::string go_file = dir.file("go");
  constexpr int kProcesses = 4;
  constexpr int kRounds = 200;

  std::vector<Process> workers;
  for (int i = 0; i < kProcesses; ++i) {
    workers.push_back(sync_worker(
        "lock-loop", broker,
        {"--lock=ledger", absl::StrCat("--rounds=", kRounds), "--file=" + file,
         "--marker=" + marker, "--go_file=" + go_file,
         absl::StrCat("--client_name=contender-", i), "--timeout_s=150",
         absl::StrCat("--keep=", keep && i % 2 == 1 ? 1 : 0)}));
  }
  // All connected, then all released at once: they contend from the start.
  for (Process& w : workers) {
    ASSERT_TRUE(w.wait_for_output("ready\n", kBrokerStateBound))
        << w.wait(milliseconds(0));
  }
  { std::ofstream(go_file) << "go\n"; }

  const std::string want =
      absl::StrCat("done rounds ", kRounds, " overlaps 0 regressions 0 ");
  int64_t handovers = 0;
  for (const ProcessResult& r : wait_all(workers, seconds(160))) {
    EXPECT_EQ(r.exit_code, 0) << r;
    EXPECT_TRUE(has_line_starting(r.out, want)) << r;
    int64_t h = 0;
    const std::optional<std::string> rest = after_prefix(r.out, want);
    if (rest && absl::SimpleAtoi(rest->substr(rest->find(' ') + 1), &h)) {
      handovers += h;
    }
  }
  // The processes did take turns (else nothing was tested).
  EXPECT_GT(handovers, 0);

  // "COUNTER TOKEN WRITER": every round counted, and the last writer's token
  // is the lock's last token.
  std::ifstream in(file);
  long long counter = -1;
  unsigned long long token = 0;
  ASSERT_TRUE(in >> counter >> token);
  EXPECT_EQ(counter, kProcesses * kRounds);
  // Keepers reserve blocks of tokens: the last one is far above the count.
  if (keep) {
    EXPECT_GT(token, static_cast<unsigned long long>(counter));
  }
  // Every contender has gone: the broker may have forgotten the free lock
  // already (nobody holds it). If not, it is free with that last token
  // (without keepers; a keeper's last block may reach further); either way
  // the name's next token is above it.
  const std::optional<ObjectState> st = broker.object_state("ledger");
  if (st.has_value()) {
    if (!keep) {
      EXPECT_EQ(st->token, token);
    }
    EXPECT_TRUE(st->holder_sessions.empty());
    EXPECT_EQ(st->queued_lockers, 0u);
  }
  Client client = Client::connect(broker.address());
  Mutex ledger = client.mutex("ledger");
  ledger.lock();
  if (keep) {
    EXPECT_GT(ledger.token(), token);
  } else {
    EXPECT_EQ(ledger.token(), token + 1);
  }
  ledger.unlock();
  std::printf(
      "MEASURE %d processes x %d rounds on one lock%s: %lld rounds began "
      "with the ledger last written by another process\n",
      kProcesses, kRounds, keep ? " (two keep it)" : "",
      static_cast<long long>(handovers));
  std::fflush(stdout);
}

TEST(RemoteMutex, FourProcessesContendingLoseNoUpdateAndNeverOverlap) {
  contend(false);
}

// Two of the four keep the lock after unlock (MutexOptions::keep): their
// relocks are local, yet every other process still gets its turns, and
// tokens still only go up.
TEST(RemoteMutex,
     FourProcessesContendingTwoKeepingLoseNoUpdateAndNeverOverlap) {
  contend(true);
}

}  // namespace
}  // namespace dchan::testing
