// Broker channels across real processes: each test starts its own
// dchan-broker on 127.0.0.1 (a free port) and runs dchan-test-worker
// processes against it (see worker.cc for the modes). Where a test needs a
// process to be blocked inside an operation before it acts, it asks the
// broker (Inspect.ListObjects: blocked senders/receivers) instead of
// sleeping and hoping.
//
// Every wait is bounded: a worker that outlives its bound is killed and the
// test fails saying so. The bounds are liveness bounds (generous), not
// performance assertions.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "chan_test_util.h"
#include "dchan/client.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace dchan::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;

// A worker that has not finished in this long is broken (killed, test fails).
constexpr milliseconds kWorkerBound = seconds(30);
// How long a broker-side condition (e.g. "3 receivers blocked") may take.
constexpr milliseconds kBrokerStateBound = seconds(20);
// Broker loss must reach a blocked client within this (liveness, not speed:
// the client's keepalive alone would notice within ~3 s).
constexpr milliseconds kBrokerLossBound = seconds(30);

auto blocked_receivers_at_least(uint64_t n) {
  return [n](const ChanInfo& c) { return c.blocked_receivers >= n; };
}
auto blocked_senders_at_least(uint64_t n) {
  return [n](const ChanInfo& c) { return c.blocked_senders >= n; };
}

// One producer process, one consumer process, `cap`-buffered channel.
void run_one_producer_one_consumer(size_t cap) {
  BrokerProcess broker;
  const std::string cap_arg = absl::StrCat("--cap=", cap);
  constexpr int64_t kCount = 500;

  Process consumer = worker("consume", broker, "pipe", {cap_arg});
  Process producer =
      worker("produce", broker, "pipe",
             {cap_arg, "--from=1", absl::StrCat("--count=", kCount)});
  const ProcessResult p = producer.wait(kWorkerBound);
  ASSERT_EQ(p.exit_code, 0) << p;
  EXPECT_TRUE(has_line(p, absl::StrCat("sent ", kCount))) << p;

  // Every value was sent (an unbuffered send: received too). Close via a
  // third process; the consumer drains and ends.
  const ProcessResult cl =
      worker("close", broker, "pipe", {cap_arg}).wait(kWorkerBound);
  ASSERT_EQ(cl.exit_code, 0) << cl;

  const ProcessResult c = consumer.wait(kWorkerBound);
  ASSERT_EQ(c.exit_code, 0) << c;
  Tally got;
  ASSERT_TRUE(parse_tally(c, &got)) << c;
  const Tally want = expected_tally(1, kCount);
  EXPECT_EQ(got.count, want.count) << c;
  EXPECT_EQ(got.sum, want.sum) << c;
  EXPECT_EQ(got.sumsq, want.sumsq) << c;
}

TEST(RemoteChan, BufferedValuesCrossFromProducerToConsumerProcess) {
  run_one_producer_one_consumer(16);
}

TEST(RemoteChan, UnbufferedValuesCrossFromProducerToConsumerProcess) {
  run_one_producer_one_consumer(0);
}

TEST(RemoteChan, BufferedValuesOutliveTheirSenderProcess) {
  BrokerProcess broker;
  const ProcessResult p =
      worker("produce", broker, "mailbox", {"--cap=4", "--from=5", "--count=3"})
          .wait(kWorkerBound);
  ASSERT_EQ(p.exit_code, 0) << p;
  // The sender's session is gone; the broker holds its values, in order.
  for (int64_t want : {5, 6, 7}) {
    const ProcessResult r =
        worker("recv-one", broker, "mailbox", {"--cap=4"}).wait(kWorkerBound);
    EXPECT_EQ(r.exit_code, 0) << r;
    EXPECT_TRUE(has_line(r, absl::StrCat("got ", want))) << r;
  }
}

TEST(RemoteChan, FourProducersFourConsumersDeliverEveryValueExactlyOnce) {
  BrokerProcess broker;
  constexpr int kProducers = 4;
  constexpr int kConsumers = 4;
  constexpr int64_t kPerProducer = 1000;
  const std::string cap_arg = "--cap=8";

  std::vector<Process> consumers;
  for (int i = 0; i < kConsumers; ++i) {
    consumers.push_back(worker("consume", broker, "jobs", {cap_arg}));
  }
  std::vector<Process> producers;
  for (int i = 0; i < kProducers; ++i) {
    // Disjoint ranges: producer i sends i*K .. i*K+K-1.
    producers.push_back(
        worker("produce", broker, "jobs",
               {cap_arg, absl::StrCat("--from=", i * kPerProducer),
                absl::StrCat("--count=", kPerProducer)}));
  }
  for (const ProcessResult& r : wait_all(producers, kWorkerBound)) {
    ASSERT_EQ(r.exit_code, 0) << r;
    EXPECT_TRUE(has_line(r, absl::StrCat("sent ", kPerProducer))) << r;
  }

  // All sends returned: close from this process (a ninth session); the
  // consumers drain the buffer and end.
  {
    Client client = Client::connect(broker.address());
    Chan<int64_t> jobs = client.chan<int64_t>("jobs", 8);
    jobs.close();
  }

  Tally total;
  ASSERT_TRUE(sum_tallies(wait_all(consumers, kWorkerBound), &total));
  // Count, sum and sum of squares of 0..4K-1 together: a lost value and a
  // duplicated one do not cancel out.
  const Tally want = expected_tally(0, kProducers * kPerProducer);
  EXPECT_EQ(total.count, want.count);
  EXPECT_EQ(total.sum, want.sum);
  EXPECT_EQ(total.sumsq, want.sumsq);
  const std::optional<ChanInfo> info = broker.chan_info("jobs");
  ASSERT_TRUE(info.has_value());
  EXPECT_TRUE(info->closed);
  EXPECT_EQ(info->len, 0u);
}

TEST(RemoteChan, UnbufferedSendReturnsOnlyAfterReceiverProcessTakesIt) {
  BrokerProcess broker;
  constexpr milliseconds kDelay(500);

  Process sender =
      worker("rendezvous-send", broker, "meet", {"--cap=0", "--value=7"});
  // The sender is parked on the broker: its send is in, no receiver yet.
  ASSERT_TRUE(broker.wait_for_chan("meet", blocked_senders_at_least(1),
                                   kBrokerStateBound))
      << sender.wait(milliseconds(0));
  std::this_thread::sleep_for(kDelay);
  ASSERT_TRUE(sender.running())
      << "send returned with no receiver in any process\n"
      << sender.wait(milliseconds(0));

  const int64_t receiver_start_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          steady_clock::now().time_since_epoch())
          .count();
  Process receiver = worker("recv-one", broker, "meet", {"--cap=0"});

  const ProcessResult rr = receiver.wait(kWorkerBound);
  ASSERT_EQ(rr.exit_code, 0) << rr;
  EXPECT_TRUE(has_line(rr, "got 7")) << rr;
  const ProcessResult sr = sender.wait(kWorkerBound);
  ASSERT_EQ(sr.exit_code, 0) << sr;

  int64_t sent_at_ns = 0;
  for (const std::string& l : sr.lines()) {
    if (absl::StartsWith(l, "sent-at ")) {
      ASSERT_TRUE(absl::SimpleAtoi(l.substr(8), &sent_at_ns)) << sr;
    }
  }
  ASSERT_NE(sent_at_ns, 0) << sr;
  // steady_clock is CLOCK_MONOTONIC: one clock for every process.
  EXPECT_GE(sent_at_ns, receiver_start_ns)
      << "the sender's send returned before the receiver process existed";
}

TEST(RemoteChan, CloseWakesReceiversBlockedInOtherProcesses) {
  BrokerProcess broker;
  std::vector<Process> receivers;
  for (int i = 0; i < 3; ++i) {
    receivers.push_back(worker("recv-one", broker, "bell", {"--cap=0"}));
  }
  ASSERT_TRUE(broker.wait_for_chan("bell", blocked_receivers_at_least(3),
                                   kBrokerStateBound));
  for (Process& r : receivers) ASSERT_TRUE(r.running());

  const ProcessResult cl =
      worker("close", broker, "bell", {"--cap=0"}).wait(kWorkerBound);
  ASSERT_EQ(cl.exit_code, 0) << cl;
  EXPECT_TRUE(has_line(cl, "closed")) << cl;

  for (const ProcessResult& res : wait_all(receivers, kWorkerBound)) {
    EXPECT_EQ(res.exit_code, 0) << res;
    EXPECT_TRUE(has_line(res, "closed")) << res;
  }
}

// Close wakes senders blocked in other processes too: two on an unbuffered
// channel, one on a full buffered channel. Each send panics (Go's "send on
// closed channel", FAILED_PRECONDITION) instead of staying blocked, and the
// value already buffered is still received after the close.
TEST(RemoteChan, CloseWakesSendersBlockedInOtherProcesses) {
  BrokerProcess broker;
  std::vector<Process> senders;
  for (int i = 0; i < 2; ++i) {
    senders.push_back(worker("rendezvous-send", broker, "gate",
                             {"--cap=0", absl::StrCat("--value=", i)}));
  }
  // The first value fills the buffer; the second send blocks.
  senders.push_back(
      worker("produce", broker, "full", {"--cap=1", "--from=7", "--count=2"}));
  ASSERT_TRUE(broker.wait_for_chan("gate", blocked_senders_at_least(2),
                                   kBrokerStateBound));
  ASSERT_TRUE(broker.wait_for_chan("full", blocked_senders_at_least(1),
                                   kBrokerStateBound));
  for (Process& s : senders) ASSERT_TRUE(s.running());

  Client client = Client::connect(broker.address());
  Chan<int64_t> gate = client.chan<int64_t>("gate", 0);
  Chan<int64_t> full = client.chan<int64_t>("full", 1);
  gate.close();
  full.close();

  for (const ProcessResult& r : wait_all(senders, kWorkerBound)) {
    EXPECT_FALSE(r.timed_out) << "a blocked sender was not woken\n" << r;
    EXPECT_EQ(r.exit_code, 3) << r;
    EXPECT_TRUE(has_line_starting(
        r, "error FAILED_PRECONDITION send on closed channel"))
        << r;
    EXPECT_FALSE(has_line_starting(r, "sent")) << r;
  }
  // Nothing was delivered on the unbuffered channel; the buffered value
  // outlives the close.
  EXPECT_EQ(gate.recv(), std::nullopt);
  EXPECT_EQ(full.recv(), 7);
  EXPECT_EQ(full.recv(), std::nullopt);
}

// A receive that timed out is withdrawn on the broker: the next value goes
// to the receiver's next receive, not to the abandoned one (it would be lost).
TEST(RemoteChan, TimedOutReceiveInAnotherProcessConsumesNothing) {
  BrokerProcess broker;
  Process receiver =
      worker("recv-for", broker, "tick", {"--cap=0", "--ms=200", "--again=1"});
  ASSERT_TRUE(receiver.wait_for_output("timeout\n", kBrokerStateBound))
      << receiver.wait(milliseconds(0));
  // Now blocked in the second, untimed receive.
  ASSERT_TRUE(broker.wait_for_chan("tick", blocked_receivers_at_least(1),
                                   kBrokerStateBound));
  Client client = Client::connect(broker.address());
  Chan<int64_t> tick = client.chan<int64_t>("tick", 0);
  tick.send(1);
  const ProcessResult r = receiver.wait(kWorkerBound);
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(has_line(r, "got 1")) << r;
}

// A send that timed out is withdrawn on the broker: a receiver that comes
// later gets the sender's next value, never the abandoned one.
TEST(RemoteChan, TimedOutSendInAnotherProcessDeliversNothing) {
  BrokerProcess broker;
  Process sender = worker("send-for", broker, "tock",
                          {"--cap=0", "--ms=200", "--value=10", "--again=1"});
  ASSERT_TRUE(sender.wait_for_output("timeout\n", kBrokerStateBound))
      << sender.wait(milliseconds(0));
  // Now blocked in the second, untimed send (of 11).
  ASSERT_TRUE(broker.wait_for_chan("tock", blocked_senders_at_least(1),
                                   kBrokerStateBound));
  const ProcessResult r =
      worker("recv-one", broker, "tock", {"--cap=0"}).wait(kWorkerBound);
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(has_line(r, "got 11")) << r;
  const ProcessResult s = sender.wait(kWorkerBound);
  EXPECT_EQ(s.exit_code, 0) << s;
}

// Timed and non-blocking forms see what other processes did.
TEST(RemoteChan, TimedAndNonBlockingReceivesSeeOtherProcessesValues) {
  BrokerProcess broker;
  const ProcessResult empty =
      worker("try-recv", broker, "box", {"--cap=2"}).wait(kWorkerBound);
  EXPECT_EQ(empty.exit_code, 0) << empty;
  EXPECT_TRUE(has_line(empty, "would block")) << empty;

  const ProcessResult p =
      worker("produce", broker, "box", {"--cap=2", "--from=3", "--count=2"})
          .wait(kWorkerBound);
  ASSERT_EQ(p.exit_code, 0) << p;
  const ProcessResult first =
      worker("try-recv", broker, "box", {"--cap=2"}).wait(kWorkerBound);
  EXPECT_EQ(first.exit_code, 0) << first;
  EXPECT_TRUE(has_line(first, "got 3")) << first;
  const ProcessResult second =
      worker("recv-for", broker, "box", {"--cap=2", "--ms=10000"})
          .wait(kWorkerBound);
  EXPECT_EQ(second.exit_code, 0) << second;
  EXPECT_TRUE(has_line(second, "got 4")) << second;

  const ProcessResult cl =
      worker("close", broker, "box", {"--cap=2"}).wait(kWorkerBound);
  ASSERT_EQ(cl.exit_code, 0) << cl;
  const ProcessResult after =
      worker("try-recv", broker, "box", {"--cap=2"}).wait(kWorkerBound);
  EXPECT_EQ(after.exit_code, 0) << after;
  EXPECT_TRUE(has_line(after, "closed")) << after;
}

TEST(RemoteChan, CloseOfClosedChannelInAnotherProcessPanics) {
  BrokerProcess broker;
  const ProcessResult first =
      worker("close", broker, "once", {"--cap=1"}).wait(kWorkerBound);
  ASSERT_EQ(first.exit_code, 0) << first;
  const ProcessResult second =
      worker("close", broker, "once", {"--cap=1"}).wait(kWorkerBound);
  EXPECT_EQ(second.exit_code, 3) << second;
  EXPECT_TRUE(has_line_starting(
      second, "error FAILED_PRECONDITION close of closed channel"))
      << second;
}

TEST(RemoteChan, SendOnChannelClosedByAnotherProcessPanics) {
  BrokerProcess broker;
  const ProcessResult cl =
      worker("close", broker, "shut", {"--cap=4"}).wait(kWorkerBound);
  ASSERT_EQ(cl.exit_code, 0) << cl;
  const ProcessResult p =
      worker("produce", broker, "shut", {"--cap=4", "--from=0", "--count=1"})
          .wait(kWorkerBound);
  EXPECT_EQ(p.exit_code, 3) << p;
  EXPECT_TRUE(
      has_line_starting(p, "error FAILED_PRECONDITION send on closed channel"))
      << p;
}

// Runs `stop_broker` while three receivers and a sender are blocked in other
// processes, and checks that each of them fails with UNAVAILABLE within
// kBrokerLossBound instead of hanging.
void expect_blocked_clients_fail_when_broker_goes(
    BrokerProcess& broker, const std::function<void()>& stop_broker) {
  std::vector<Process> blocked;
  for (int i = 0; i < 3; ++i) {
    blocked.push_back(worker("recv-one", broker, "inbox", {"--cap=0"}));
  }
  blocked.push_back(worker("rendezvous-send", broker, "outbox", {"--cap=0"}));
  ASSERT_TRUE(broker.wait_for_chan("inbox", blocked_receivers_at_least(3),
                                   kBrokerStateBound));
  ASSERT_TRUE(broker.wait_for_chan("outbox", blocked_senders_at_least(1),
                                   kBrokerStateBound));

  stop_broker();

  for (const ProcessResult& r : wait_all(blocked, kBrokerLossBound)) {
    EXPECT_FALSE(r.timed_out)
        << "a blocked client still hung " << kBrokerLossBound.count()
        << " ms after the broker went\n"
        << r;
    EXPECT_EQ(r.exit_code, 3) << r;
    EXPECT_TRUE(has_line_starting(r, "error UNAVAILABLE")) << r;
  }
}

TEST(RemoteChan, KilledBrokerFailsBlockedClientsWithUnavailable) {
  BrokerProcess broker;
  expect_blocked_clients_fail_when_broker_goes(broker, [&] {
    const ProcessResult b = broker.kill(SIGKILL);
    EXPECT_EQ(b.term_signal, SIGKILL) << b;
  });
}

TEST(RemoteChan, StoppedBrokerFailsBlockedClientsWithUnavailable) {
  BrokerProcess broker;
  expect_blocked_clients_fail_when_broker_goes(broker, [&] {
    const ProcessResult b = broker.stop();
    EXPECT_EQ(b.exit_code, 0) << b;
  });
}

// A broker that stops answering without closing its connections (frozen
// with SIGSTOP: the kernel still holds its sockets open) is noticed by the
// clients' keepalive: blocked operations fail, they do not hang.
TEST(RemoteChan, FrozenBrokerFailsBlockedClientsWithUnavailable) {
  BrokerProcess broker;
  expect_blocked_clients_fail_when_broker_goes(broker,
                                               [&] { broker.signal(SIGSTOP); });
  const ProcessResult b =
      broker.kill(SIGKILL);  // SIGKILL ends a stopped process
  EXPECT_EQ(b.term_signal, SIGKILL) << b;
}

// A receiver process killed while blocked: the broker withdraws its pending
// receive, so a later send is not handed to the dead process (an unbuffered
// send would then return with its value lost) but waits for a live one.
TEST(RemoteChan, KilledReceiverProcessDoesNotSwallowValues) {
  BrokerProcess broker;
  Process doomed = worker("recv-one", broker, "handoff", {"--cap=0"});
  ASSERT_TRUE(broker.wait_for_chan("handoff", blocked_receivers_at_least(1),
                                   kBrokerStateBound))
      << doomed.wait(milliseconds(0));
  doomed.signal(SIGKILL);
  const ProcessResult d = doomed.wait(kWorkerBound);
  ASSERT_EQ(d.term_signal, SIGKILL) << d;
  // The broker notices the dead session and withdraws its receive; with
  // nobody holding "handoff" any more, it may then forget the channel
  // (nothing waits on it) — either way no receiver is left.
  const auto deadline = steady_clock::now() + kBrokerLossBound;
  for (;;) {
    const std::optional<ChanInfo> c = broker.chan_info("handoff");
    if (!c.has_value() || c->blocked_receivers == 0) break;
    ASSERT_LT(steady_clock::now(), deadline)
        << "the killed receiver's receive is still queued";
    std::this_thread::sleep_for(milliseconds(20));
  }
  ASSERT_TRUE(broker.running());

  Process sender =
      worker("rendezvous-send", broker, "handoff", {"--cap=0", "--value=5"});
  ASSERT_TRUE(broker.wait_for_chan("handoff", blocked_senders_at_least(1),
                                   kBrokerStateBound))
      << sender.wait(milliseconds(0));
  std::this_thread::sleep_for(milliseconds(200));
  ASSERT_TRUE(sender.running()) << "the send returned with no live receiver\n"
                                << sender.wait(milliseconds(0));

  const ProcessResult r =
      worker("recv-one", broker, "handoff", {"--cap=0"}).wait(kWorkerBound);
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(has_line(r, "got 5")) << r;
  const ProcessResult s = sender.wait(kWorkerBound);
  EXPECT_EQ(s.exit_code, 0) << s;
  EXPECT_TRUE(has_line_starting(s, "sent-at ")) << s;
}

// A client that was idle when the broker died fails its next operation.
TEST(RemoteChan, IdleClientFailsNextOperationAfterBrokerKilled) {
  BrokerProcess broker;
  Process producer = worker("produce", broker, "later",
                            {"--cap=4", "--count=1", "--delay_ms=1000"});
  ASSERT_TRUE(producer.wait_for_output("ready\n", kBrokerStateBound))
      << producer.wait(milliseconds(0));
  const ProcessResult b = broker.kill(SIGKILL);
  EXPECT_EQ(b.term_signal, SIGKILL) << b;
  const ProcessResult r = producer.wait(kBrokerLossBound);
  EXPECT_FALSE(r.timed_out) << r;
  EXPECT_EQ(r.exit_code, 3) << r;
  EXPECT_TRUE(has_line_starting(r, "error UNAVAILABLE")) << r;
  EXPECT_FALSE(has_line_starting(r, "sent")) << r;
}

TEST(RemoteChan, ConnectWithoutBrokerFailsWithUnavailable) {
  std::string address;
  {
    BrokerProcess broker;
    address = broker.address();
    const ProcessResult b = broker.stop();
    ASSERT_EQ(b.exit_code, 0) << b;
  }
  // Nothing listens there now (the port was the broker's a moment ago).
  const ProcessResult r =
      Process::spawn(DCHAN_WORKER_PATH,
                     {"recv-one", "--broker=" + address, "--chan=x", "--cap=0"})
          .wait(kBrokerLossBound);
  EXPECT_FALSE(r.timed_out) << r;
  EXPECT_EQ(r.exit_code, 3) << r;
  EXPECT_TRUE(has_line_starting(r, "error UNAVAILABLE")) << r;
}

// A broker frozen with SIGSTOP: the kernel still accepts the connection,
// but nothing answers (not even HTTP/2's SETTINGS, so the transport never
// becomes ready). connect() gives up within its connect_timeout with
// UNAVAILABLE naming the target; the bound here only guards against a hang.
TEST(RemoteChan, ConnectToFrozenBrokerFailsWithUnavailable) {
  BrokerProcess broker;
  broker.signal(SIGSTOP);
  ClientOptions o;
  o.connect_timeout = milliseconds(500);
  const steady_clock::time_point start = steady_clock::now();
  try {
    Client::connect(broker.address(), o);
    ADD_FAILURE() << "connected to a frozen broker";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kUnavailable) << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), broker.address())) << e.what();
  }
  EXPECT_LT(steady_clock::now() - start, seconds(10)) << "connect hung";
  const ProcessResult b = broker.kill(SIGKILL);  // ends a stopped process
  EXPECT_EQ(b.term_signal, SIGKILL) << b;
}

// A Broker service (a real gRPC server in this process) that takes the
// session stream and reads it, but never answers: a connect gets its
// transport at once and then waits for the Hello's answer.
class SilentSession
    : public grpc::ServerBidiReactor<v1::ClientBatch, v1::ServerBatch> {
 public:
  SilentSession() { StartRead(&in_); }
  void OnReadDone(bool ok) override {
    if (ok) {
      StartRead(&in_);
    } else {
      finish_once();
    }
  }
  void OnCancel() override { finish_once(); }
  void OnDone() override { delete this; }

 private:
  void finish_once() {
    if (!finished_.exchange(true)) Finish(grpc::Status::OK);
  }
  v1::ClientBatch in_;
  std::atomic<bool> finished_{false};
};

class SilentBroker final : public v1::Broker::CallbackService {
  grpc::ServerBidiReactor<v1::ClientBatch, v1::ServerBatch>* Session(
      grpc::CallbackServerContext*) override {
    return new SilentSession();
  }
};

TEST(RemoteChan, ConnectToABrokerThatNeverAnswersTheHelloFailsWithUnavailable) {
  SilentBroker service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_NE(port, 0);
  const std::string target = absl::StrCat("127.0.0.1:", port);
  ClientOptions o;
  o.connect_timeout = milliseconds(500);
  const steady_clock::time_point start = steady_clock::now();
  try {
    Client::connect(target, o);
    ADD_FAILURE() << "connected to a broker that never answered";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kUnavailable) << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), target)) << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), "Hello")) << e.what();
  }
  EXPECT_LT(steady_clock::now() - start, seconds(10)) << "connect hung";
  server->Shutdown(std::chrono::system_clock::now());
}

TEST(RemoteChan, TypeMismatchBetweenProcessesIsInvalidArgument) {
  BrokerProcess broker;
  // The first process creates "typed" as chan int64, capacity 4, and stays
  // blocked on it.
  Process holder =
      worker("recv-one", broker, "typed", {"--cap=4", "--type=int64"});
  ASSERT_TRUE(holder.wait_for_output("ready\n", kBrokerStateBound))
      << holder.wait(milliseconds(0));

  const ProcessResult wrong_type =
      worker("open", broker, "typed", {"--cap=4", "--type=string"})
          .wait(kWorkerBound);
  EXPECT_EQ(wrong_type.exit_code, 3) << wrong_type;
  EXPECT_TRUE(has_line_starting(wrong_type, "error INVALID_ARGUMENT"))
      << wrong_type;
  // The message names both sides.
  EXPECT_TRUE(absl::StrContains(wrong_type.out, "int64")) << wrong_type;
  EXPECT_TRUE(absl::StrContains(wrong_type.out, "string")) << wrong_type;

  const ProcessResult wrong_cap =
      worker("open", broker, "typed", {"--cap=8", "--type=int64"})
          .wait(kWorkerBound);
  EXPECT_EQ(wrong_cap.exit_code, 3) << wrong_cap;
  EXPECT_TRUE(has_line_starting(wrong_cap, "error INVALID_ARGUMENT"))
      << wrong_cap;

  // The refused opens changed nothing: a matching open works, and the
  // holder still receives what this process sends.
  const ProcessResult same =
      worker("open", broker, "typed", {"--cap=4", "--type=int64"})
          .wait(kWorkerBound);
  EXPECT_EQ(same.exit_code, 0) << same;
  EXPECT_TRUE(has_line(same, "opened cap 4")) << same;

  Client client = Client::connect(broker.address());
  // Held until the end, so that "typed" is still there to inspect (an
  // empty channel nobody holds is forgotten).
  Chan<int64_t> typed = client.chan<int64_t>("typed", 4);
  typed.send(99);
  const ProcessResult h = holder.wait(kWorkerBound);
  EXPECT_EQ(h.exit_code, 0) << h;
  EXPECT_TRUE(has_line(h, "got 99")) << h;

  const std::optional<ChanInfo> info = broker.chan_info("typed");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->type_name, "int64");
  EXPECT_EQ(info->cap, 4u);
}

TEST(RemoteChan, StringValuesCrossProcesses) {
  BrokerProcess broker;
  Process receiver =
      worker("recv-one", broker, "words", {"--cap=0", "--type=string"});
  ASSERT_TRUE(broker.wait_for_chan("words", blocked_receivers_at_least(1),
                                   kBrokerStateBound))
      << receiver.wait(milliseconds(0));
  Client client = Client::connect(broker.address());
  client.chan<std::string>("words", 0).send("hello from another process");
  const ProcessResult r = receiver.wait(kWorkerBound);
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(has_line(r, "got hello from another process")) << r;
}

}  // namespace
}  // namespace dchan::testing
