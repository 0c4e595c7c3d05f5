// Opt-in pipelining of broker channels (RemoteChanOptions): pipelined sends
// (send_window), batch receives (recv_batch) and read-ahead (recv_ahead),
// against a real dchan-broker on 127.0.0.1 and dchan-test-worker processes
// (see worker.cc).
//
// What is checked: per-producer order and exactly-once delivery with
// windows, an error that hits sends already returned (a close, a killed
// broker) reaching the producer, and batch-received or read-ahead values
// that are never lost or duplicated — across consumer processes, when the
// handle holding them is dropped (also after a close, or with its Client),
// before a close is reported, to a select, and a killed broker reported.
// Every wait is bounded (liveness bounds, not performance assertions).
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "chan_test_util.h"
#include "dchan/client.h"
#include "gtest/gtest.h"

namespace dchan::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr milliseconds kWorkerBound = seconds(60);
constexpr milliseconds kBrokerStateBound = seconds(20);
constexpr milliseconds kBrokerLossBound = seconds(30);

// The error a call throws, or nullopt if it returns.
template <class F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

// Pins every thread of this process (as `taskset -c CPU` would, and the
// threads they start) to the CPU the caller runs on, while it lives; then
// gives every thread the caller's former mask.
class OnOneCpu {
 public:
  OnOneCpu() {
    const int cpu = sched_getcpu();
    if (cpu < 0 || sched_getaffinity(0, sizeof saved_, &saved_) != 0) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pinned_ = true;
    set_all(one);
  }
  ~OnOneCpu() {
    if (pinned_) set_all(saved_);
  }
  OnOneCpu(const OnOneCpu&) = delete;
  OnOneCpu& operator=(const OnOneCpu&) = delete;

 private:
  static void set_all(const cpu_set_t& mask) {
    std::error_code ec;
    for (const auto& task :
         std::filesystem::directory_iterator("/proc/self/task", ec)) {
      const pid_t tid = std::stoi(task.path().filename().string());
      sched_setaffinity(tid, sizeof mask, &mask);  // gone: nothing to do
    }
  }

  cpu_set_t saved_;
  bool pinned_ = false;
};

// Values from a Chan<int64_t> in the order received, `n` of them (or fewer
// if it is closed first).
std::vector<int64_t> recv_n(Chan<int64_t>& ch, int n) {
  std::vector<int64_t> got;
  for (int i = 0; i < n; ++i) {
    std::optional<int64_t> v = ch.recv();
    if (!v.has_value()) break;
    got.push_back(*v);
  }
  return got;
}

// Four producer processes pipeline their sends (window 32) into a channel
// of capacity 8, so most sends are parked on the broker while later ones
// are already on their way; a receiver here sees every producer's values
// exactly once and in the order that producer sent them.
TEST(RemotePipeline, PipelinedSendsKeepEachProducersOrder) {
  BrokerProcess broker;
  constexpr int kProducers = 4;
  constexpr int64_t kPerProducer = 3000;
  constexpr int64_t kStride = 1000000;
  std::vector<Process> producers;
  for (int i = 0; i < kProducers; ++i) {
    producers.push_back(
        worker("produce", broker, "ordered",
               {"--cap=8", "--window=32", absl::StrCat("--from=", i * kStride),
                absl::StrCat("--count=", kPerProducer)}));
  }
  Client client = Client::connect(broker.address());
  Chan<int64_t> ch = client.chan<int64_t>("ordered", 8);
  std::vector<int64_t> next(kProducers, 0);
  int64_t out_of_order = 0;
  for (int64_t n = 0; n < kProducers * kPerProducer; ++n) {
    RecvResult<int64_t> r = ch.recv_for(seconds(30));
    ASSERT_TRUE(r.ok()) << "after " << n << " values: " << to_string(r.status);
    const int64_t v = *r.value;
    const int64_t p = v / kStride;
    ASSERT_GE(p, 0);
    ASSERT_LT(p, kProducers) << v;
    if (v % kStride != next[p]) ++out_of_order;
    next[p] = v % kStride + 1;
  }
  EXPECT_EQ(out_of_order, 0);
  for (int p = 0; p < kProducers; ++p) EXPECT_EQ(next[p], kPerProducer) << p;
  for (const ProcessResult& r : wait_all(producers, kWorkerBound)) {
    EXPECT_EQ(r.exit_code, 0) << r;
    EXPECT_TRUE(has_line(r, absl::StrCat("sent ", kPerProducer))) << r;
  }
  EXPECT_EQ(ch.try_recv().status, ChanStatus::kWouldBlock);
}

// Sends that returned (pipelined) but were parked on the broker when
// another process closed the channel: the producer learns it from flush(),
// with how many sends it hit; it is reported once.
TEST(RemotePipeline, CloseWhileSendsInFlightIsReportedByFlush) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> ch = client.chan<int64_t>("closing", 1, {.send_window = 16});
  for (int64_t v = 1; v <= 5; ++v) ch.send(v);  // 1 buffered, 4 parked
  ASSERT_TRUE(broker.wait_for_chan(
      "closing", [](const ChanInfo& c) { return c.blocked_senders == 4; },
      kBrokerStateBound));
  ASSERT_EQ(worker("close", broker, "closing", {"--cap=1"})
                .wait(kWorkerBound)
                .exit_code,
            0);
  const std::optional<Error> e = error_of([&] { flush(ch); });
  ASSERT_TRUE(e.has_value()) << "flush() did not report the lost sends";
  EXPECT_EQ(e->code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(e->what(), "send on closed channel"))
      << e->what();
  EXPECT_TRUE(absl::StrContains(e->what(), "4 pipelined sends")) << e->what();
  // Reported once; the buffered value is still there, then closed.
  EXPECT_FALSE(error_of([&] { flush(ch); }).has_value());
  EXPECT_EQ(ch.recv(), std::optional<int64_t>(1));
  EXPECT_EQ(ch.recv(), std::nullopt);
}

// Without flush(): the next operation on the handle reports the error
// instead of doing its own work — here a send, which would otherwise just
// be pipelined again.
TEST(RemotePipeline, CloseWhileSendsInFlightIsReportedByNextOperation) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> ch = client.chan<int64_t>("closing", 1, {.send_window = 16});
  for (int64_t v = 1; v <= 3; ++v) ch.send(v);  // 1 buffered, 2 parked
  ASSERT_TRUE(broker.wait_for_chan(
      "closing", [](const ChanInfo& c) { return c.blocked_senders == 2; },
      kBrokerStateBound));
  Client other = Client::connect(broker.address());
  other.chan<int64_t>("closing", 1).close();
  // The CLOSED answers travel asynchronously: a send made before they
  // arrive is pipelined (and fails too); keep sending until one throws.
  std::optional<Error> e;
  for (int i = 0; i < 1000 && !e.has_value(); ++i) {
    e = error_of([&] { ch.send(100 + i); });
    if (!e.has_value()) std::this_thread::sleep_for(milliseconds(5));
  }
  ASSERT_TRUE(e.has_value()) << "no operation reported the lost sends";
  EXPECT_EQ(e->code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(e->what(), "send on closed channel"))
      << e->what();
  EXPECT_TRUE(absl::StrContains(e->what(), "pipelined send")) << e->what();
}

// The broker is killed while pipelined sends are parked on it and another
// send waits for room in the full window: that send throws kUnavailable,
// and flush() reports the loss — nothing hangs.
TEST(RemotePipeline, BrokerKilledWithSendsInFlightSurfacesTheError) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> ch = client.chan<int64_t>("doomed", 1, {.send_window = 4});
  for (int64_t v = 1; v <= 4; ++v) ch.send(v);  // 1 buffered, 3 parked
  ASSERT_TRUE(broker.wait_for_chan(
      "doomed", [](const ChanInfo& c) { return c.blocked_senders == 3; },
      kBrokerStateBound));
  // At least 3 sends are unanswered (4 if value 1 shares a frame with the
  // parked ones: a frame is answered once all its values are in), so of
  // two more sends at least one waits for the window.
  auto blocked = std::async(std::launch::async, [&] {
    return error_of([&] {
      ch.send(5);
      ch.send(6);
    });
  });
  ASSERT_EQ(blocked.wait_for(milliseconds(300)), std::future_status::timeout)
      << "two sends returned with the window full";
  broker.kill(SIGKILL);
  ASSERT_EQ(blocked.wait_for(kBrokerLossBound), std::future_status::ready)
      << "a send waiting for the window hung after the broker died";
  const std::optional<Error> e6 = blocked.get();
  // It throws itself (kUnavailable) — or, if the failed answers were
  // counted first, reports them (kUnavailable too).
  ASSERT_TRUE(e6.has_value());
  EXPECT_EQ(e6->code(), absl::StatusCode::kUnavailable) << e6->what();
  const std::optional<Error> e = error_of([&] {
    flush(ch);
    ch.send(7);
  });
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->code(), absl::StatusCode::kUnavailable) << e->what();
}

// Four producers, four consumer processes receiving in batches of 16 from
// a channel of capacity 8, two of them reading ahead: every value is
// received exactly once (count, sum and sum of squares), also those still
// held in a consumer when the channel is closed.
TEST(RemotePipeline, BatchReceiveDeliversExactlyOnceAcrossFourProcesses) {
  BrokerProcess broker;
  constexpr int kProducers = 4;
  constexpr int kConsumers = 4;
  constexpr int64_t kPerProducer = 2000;
  std::vector<Process> consumers;
  for (int i = 0; i < kConsumers; ++i) {
    // Half of them read ahead (recv_ahead).
    consumers.push_back(worker(
        "consume", broker, "jobs",
        {"--cap=8", "--batch=16", i % 2 == 0 ? "--ahead=0" : "--ahead=1"}));
  }
  std::vector<Process> producers;
  for (int i = 0; i < kProducers; ++i) {
    producers.push_back(
        worker("produce", broker, "jobs",
               {"--cap=8", i % 2 == 0 ? "--window=64" : "--window=0",
                absl::StrCat("--from=", i * kPerProducer),
                absl::StrCat("--count=", kPerProducer)}));
  }
  for (const ProcessResult& r : wait_all(producers, kWorkerBound)) {
    ASSERT_EQ(r.exit_code, 0) << r;
  }
  {
    Client client = Client::connect(broker.address());
    client.chan<int64_t>("jobs", 8).close();
  }
  Tally total;
  ASSERT_TRUE(sum_tallies(wait_all(consumers, kWorkerBound), &total));
  const Tally want = expected_tally(0, kProducers * kPerProducer);
  EXPECT_EQ(total.count, want.count);
  EXPECT_EQ(total.sum, want.sum);
  EXPECT_EQ(total.sumsq, want.sumsq);
}

// A handle that fetched a batch holds the extra values; len() counts them.
// When its last copy goes, they go back to the broker channel at its back,
// in their order, and another session receives them.
TEST(RemotePipeline, UnconsumedBatchValuesReturnWhenTheHandleIsDropped) {
  BrokerProcess broker;
  Client producer = Client::connect(broker.address());
  Chan<int64_t> out = producer.chan<int64_t>("held", 16);
  for (int64_t v = 1; v <= 10; ++v) out.send(v);
  Client consumer = Client::connect(broker.address());
  {
    Chan<int64_t> in = consumer.chan<int64_t>("held", 16, {.recv_batch = 8});
    EXPECT_EQ(in.recv(), std::optional<int64_t>(1));  // holds 2..8
    EXPECT_EQ(in.len(), 9u);                          // 7 held + 9, 10
    EXPECT_EQ(out.len(), 2u);                         // the broker's
  }  // the last copy goes: 2..8 go back
  ASSERT_TRUE(broker.wait_for_chan(
      "held", [](const ChanInfo& c) { return c.len == 9; }, kBrokerStateBound));
  EXPECT_EQ(recv_n(out, 9), (std::vector<int64_t>{9, 10, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(out.try_recv().status, ChanStatus::kWouldBlock);
}

// The same after the channel was closed: the broker keeps the returned
// values and hands them out before it reports the channel drained.
TEST(RemotePipeline, UnconsumedBatchValuesSurviveACloseBeforeTheDrop) {
  BrokerProcess broker;
  Client producer = Client::connect(broker.address());
  Chan<int64_t> out = producer.chan<int64_t>("held", 16);
  for (int64_t v = 1; v <= 6; ++v) out.send(v);
  Client consumer = Client::connect(broker.address());
  {
    Chan<int64_t> in = consumer.chan<int64_t>("held", 16, {.recv_batch = 4});
    EXPECT_EQ(in.recv(), std::optional<int64_t>(1));  // holds 2..4
    out.close();
  }
  ASSERT_TRUE(broker.wait_for_chan(
      "held", [](const ChanInfo& c) { return c.len == 5; }, kBrokerStateBound));
  EXPECT_EQ(recv_n(out, 6), (std::vector<int64_t>{5, 6, 2, 3, 4}));
  EXPECT_EQ(out.try_recv().status, ChanStatus::kClosed);
}

// After a close, a batch-receiving handle first hands out what it holds,
// then what the broker still buffers, then reports the close.
TEST(RemotePipeline, CloseDrainsLocallyHeldValuesFirst) {
  BrokerProcess broker;
  Client producer = Client::connect(broker.address());
  Chan<int64_t> out = producer.chan<int64_t>("drain", 4);
  for (int64_t v = 1; v <= 4; ++v) out.send(v);
  Client consumer = Client::connect(broker.address());
  Chan<int64_t> in = consumer.chan<int64_t>("drain", 4, {.recv_batch = 3});
  EXPECT_EQ(in.recv(), std::optional<int64_t>(1));  // holds 2, 3
  in.close();
  EXPECT_EQ(recv_n(in, 10), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(in.recv(), std::nullopt);
  EXPECT_EQ(in.len(), 0u);
}

// A select sees the values a batch receive left in a handle: its receive
// case is ready though the broker channel is empty — in a select on broker
// channels alone and in one that spans a local channel too.
TEST(RemotePipeline, SelectTakesLocallyHeldValues) {
  BrokerProcess broker;
  Client producer = Client::connect(broker.address());
  Chan<int64_t> out = producer.chan<int64_t>("sel", 4);
  for (int64_t v = 1; v <= 3; ++v) out.send(v);
  Client consumer = Client::connect(broker.address());
  Chan<int64_t> in = consumer.chan<int64_t>("sel", 4, {.recv_batch = 4});
  Chan<int64_t> other = consumer.chan<int64_t>("other", 1);
  EXPECT_EQ(in.recv(), std::optional<int64_t>(1));  // holds 2, 3
  ASSERT_EQ(out.len(), 0u);
  std::optional<int64_t> got;
  const auto take = [&](std::optional<int64_t> v) { got = v; };
  EXPECT_EQ(select(on_recv(other), on_recv(in, take), on_default()), 1u);
  EXPECT_EQ(got, std::optional<int64_t>(2));
  Chan<int64_t> local = make_chan<int64_t>(1);
  EXPECT_EQ(select(on_recv(local), on_recv(in, take), on_default()), 1u);
  EXPECT_EQ(got, std::optional<int64_t>(3));
  // Nothing held, nothing buffered: not ready.
  EXPECT_EQ(select(on_recv(other), on_recv(in, take), on_default()), 2u);
  EXPECT_EQ(in.len(), 0u);
}

// A broker channel `name` (capacity `cap`) that held 1..n, and a
// consumer's handle on it that reads ahead in batches of 4 and has
// received 1: it holds 2..4 and has sent for 5..8.
struct ReadingAhead {
  Client producer;
  Chan<int64_t> out;  // the producer's handle
  Client consumer;
  Chan<int64_t> in;  // the consumer's, reading ahead
};

ReadingAhead start_reading_ahead(BrokerProcess& broker, const std::string& name,
                                 std::size_t cap, int64_t n) {
  Client producer = Client::connect(broker.address());
  Chan<int64_t> out = producer.chan<int64_t>(name, cap);
  for (int64_t v = 1; v <= n; ++v) out.send(v);
  Client consumer = Client::connect(broker.address());
  Chan<int64_t> in =
      consumer.chan<int64_t>(name, cap, {.recv_batch = 4, .recv_ahead = true});
  EXPECT_EQ(in.recv(), std::optional<int64_t>(1));
  return {std::move(producer), std::move(out), std::move(consumer),
          std::move(in)};
}

// Read-ahead (recv_ahead): a full batch sends for the next one at once,
// so the broker channel gives up two batches; the handle's len() counts
// the values on their way, and every value arrives once, in order.
TEST(RemotePipeline, ReadAheadTakesTheNextBatchWhileOneIsConsumed) {
  BrokerProcess broker;
  ReadingAhead r = start_reading_ahead(broker, "ahead", 32, 20);
  Chan<int64_t>& in = r.in;
  ASSERT_TRUE(broker.wait_for_chan(
      "ahead", [](const ChanInfo& c) { return c.len == 12; },
      kBrokerStateBound))
      << "no read-ahead took 5..8 out of the broker channel";
  EXPECT_EQ(in.len(), 19u);  // 12 in the broker, 3 held, 4 read ahead
  std::vector<int64_t> want;
  for (int64_t v = 2; v <= 20; ++v) want.push_back(v);
  EXPECT_EQ(recv_n(in, 19), want);
  EXPECT_EQ(in.try_recv().status, ChanStatus::kWouldBlock);
  EXPECT_EQ(in.len(), 0u);
}

// A handle dropped with a read-ahead on its way (or answered), and its
// Client right after it: the held values and the read-ahead's go back to
// the broker channel, in their order — the Client's session stays open
// until the read-ahead's answer has been handed back. Ten rounds: which
// comes first, the answer or the destructors, is up to the scheduler.
TEST(RemotePipeline, ReadAheadValuesReturnWhenTheHandleAndClientGo) {
  BrokerProcess broker;
  Client producer = Client::connect(broker.address());
  for (int round = 0; round < 10; ++round) {
    const std::string name = absl::StrCat("held", round);
    Chan<int64_t> out = producer.chan<int64_t>(name, 16);
    for (int64_t v = 1; v <= 10; ++v) out.send(v);
    {
      // On one CPU, the background reader that detach() wakes to read the
      // read-ahead's answer tends to run only once the Client's destructor
      // has begun to shut the session down: the case where the values are
      // saved only because the session stays open for them.
      OnOneCpu pinned;
      Client consumer = Client::connect(broker.address());
      Chan<int64_t> in = consumer.chan<int64_t>(
          name, 16, {.recv_batch = 4, .recv_ahead = true});
      // 2..4 held, 5..8 read ahead.
      ASSERT_EQ(in.recv(), std::optional<int64_t>(1));
    }  // the handle goes, then the Client
    ASSERT_TRUE(broker.wait_for_chan(
        name, [](const ChanInfo& c) { return c.len == 9; }, kBrokerStateBound))
        << "round " << round << ": values held or read ahead were lost";
    EXPECT_EQ(recv_n(out, 9),
              (std::vector<int64_t>{9, 10, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(out.try_recv().status, ChanStatus::kWouldBlock);
  }
}

// Two threads share one read-ahead handle: every value arrives once, also
// when a thread waits for a read-ahead that another takes in, and both end
// at the close. (Each thread's own order is not checked: with several
// threads, batch receives hand values out in the order the threads store
// the answers, see RemoteChanOptions::recv_batch.)
TEST(RemotePipeline, ThreadsSharingAReadAheadHandleGetEveryValueOnce) {
  BrokerProcess broker;
  constexpr int64_t kValues = 20000;
  Client consumer = Client::connect(broker.address());
  Chan<int64_t> in = consumer.chan<int64_t>(
      "shared", 64, {.recv_batch = 16, .recv_ahead = true});
  std::vector<int64_t> got[2];
  std::vector<std::thread> threads;
  for (std::vector<int64_t>& mine : got) {
    threads.emplace_back([&in, &mine] {
      for (std::optional<int64_t> v; (v = in.recv());) mine.push_back(*v);
    });
  }
  {
    Client producer = Client::connect(broker.address());
    Chan<int64_t> out =
        producer.chan<int64_t>("shared", 64, {.send_window = 256});
    for (int64_t v = 0; v < kValues; ++v) out.send(v);
    flush(out);
    out.close();
  }
  for (std::thread& t : threads) t.join();
  std::vector<int64_t> all;
  for (const std::vector<int64_t>& mine : got) {
    all.insert(all.end(), mine.begin(), mine.end());
  }
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kValues));
  for (int64_t v = 0; v < kValues; ++v) ASSERT_EQ(all[v], v);
}

// A select whose receive case's handle holds nothing but has a read-ahead
// on its way waits for its values instead of asking the broker (whose
// channel they have left): the values come in order, then the default.
TEST(RemotePipeline, SelectTakesReadAheadValues) {
  BrokerProcess broker;
  ReadingAhead r = start_reading_ahead(broker, "sel", 8, 8);
  Chan<int64_t>& in = r.in;
  Chan<int64_t> other = r.consumer.chan<int64_t>("other", 1);
  std::vector<int64_t> got;
  const auto take = [&](std::optional<int64_t> v) { got.push_back(v.value()); };
  for (int i = 0; i < 7; ++i) {
    ASSERT_EQ(select(on_recv(other), on_recv(in, take), on_default()), 1u)
        << "after " << got.size() << " values";
  }
  EXPECT_EQ(got, (std::vector<int64_t>{2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(select(on_recv(other), on_recv(in, take), on_default()), 2u);
}

// A close after a read-ahead: the handle hands out what it holds and what
// the read-ahead brought, then reports the close.
TEST(RemotePipeline, CloseAfterAReadAheadDrainsItsValuesFirst) {
  BrokerProcess broker;
  ReadingAhead r = start_reading_ahead(broker, "drain", 8, 8);
  Chan<int64_t>& in = r.in;
  r.out.close();
  EXPECT_EQ(recv_n(in, 10), (std::vector<int64_t>{2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(in.recv(), std::nullopt);
}

// The broker dies after answering a read-ahead: the consumer gets values
// in order (as many as reached it), then kUnavailable — nothing hangs.
TEST(RemotePipeline, BrokerKilledAfterAReadAheadSurfacesTheLoss) {
  BrokerProcess broker;
  ReadingAhead r = start_reading_ahead(broker, "doomed", 32, 20);
  Chan<int64_t>& in = r.in;
  ASSERT_TRUE(broker.wait_for_chan(
      "doomed", [](const ChanInfo& c) { return c.len == 12; },
      kBrokerStateBound));
  broker.kill(SIGKILL);
  auto drained = std::async(std::launch::async, [&] {
    std::vector<int64_t> got;
    const std::optional<Error> e = error_of([&] {
      for (int i = 0; i < 20; ++i) got.push_back(in.recv().value());
    });
    return std::make_pair(got, e);
  });
  ASSERT_EQ(drained.wait_for(kBrokerLossBound), std::future_status::ready)
      << "a receive hung after the broker died";
  const auto [got, e] = drained.get();
  ASSERT_TRUE(e.has_value()) << got.size() << " values, no error";
  EXPECT_EQ(e->code(), absl::StatusCode::kUnavailable) << e->what();
  ASSERT_LE(got.size(), 7u);
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i], static_cast<int64_t>(i) + 2);
  }
}

}  // namespace
}  // namespace dchan::testing
