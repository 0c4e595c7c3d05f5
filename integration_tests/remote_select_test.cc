// select over broker channels, against a real dchan-broker process and real
// worker processes: one select on the broker, default and after() cases,
// selects that span local and broker channels (and meet each other through
// the broker's offers).
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "broker_process.h"
#include "chan_test_util.h"
#include "dchan/client.h"
#include "gtest/gtest.h"

namespace dchan::testing {
namespace {

using namespace std::chrono_literals;
constexpr auto kWorkerBound = std::chrono::seconds(30);

// Three threads each loop on select(x, y, quit) until `quit` is closed;
// `produce` (run on this thread) sends the values 0..total-1 between x and y
// from elsewhere. Every value must be received exactly once.
void expect_selectors_receive_each_value_once(
    Chan<int64_t> x, Chan<int64_t> y, Chan<int64_t> quit, int total,
    const std::function<void()>& produce) {
  std::mutex mu;
  std::vector<int> seen(total, 0);
  std::atomic<int> received{0};
  std::vector<std::thread> selectors;
  for (int s = 0; s < 3; ++s) {
    selectors.emplace_back([&] {
      bool done = false;
      auto take = [&](std::optional<int64_t> v) {
        if (!v) return;
        std::lock_guard<std::mutex> lock(mu);
        ++seen[*v];
        ++received;
      };
      while (!done) {
        select(on_recv(x, take), on_recv(y, take),
               on_recv(quit, [&](std::optional<int64_t>) { done = true; }));
      }
    });
  }
  produce();
  const auto deadline = std::chrono::steady_clock::now() + kWorkerBound;
  while (received.load() < total &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  quit.close();
  for (auto& t : selectors) t.join();
  EXPECT_EQ(received.load(), total);
  for (int v = 0; v < total; ++v) ASSERT_EQ(seen[v], 1) << v;
}

// Runs select(recv a, recv b) kRounds times with both channels ready every
// time (each is buffered and holds a value; the one that fired is refilled
// before the next round) and returns how often each case fired. Go picks
// uniformly among ready cases, so with a fair choice the count of case 0 is
// Binomial(kRounds, 1/2).
constexpr int kRounds = 200;
// Each case must fire at least 20% of the rounds: 40 of 200. For a fair
// coin, P(X < 40) = 4.2e-19 for X ~ Binomial(200, 1/2) (exact sum), so the
// test fails by chance with probability 8.3e-19 per run of 200 rounds
// (either case short), far below 1e-9. A select that always took the first
// (or last) ready case fires one case 200 times and the other never.
constexpr int kMinShare = kRounds / 5;

std::array<int, 2> count_choices_between_ready_cases(Chan<int64_t> a,
                                                     Chan<int64_t> b) {
  a.send(0);
  b.send(1);
  std::array<int, 2> fired{0, 0};
  for (int round = 0; round < kRounds; ++round) {
    std::optional<int64_t> got;
    const std::size_t i =
        select(on_recv(a, [&](std::optional<int64_t> v) { got = v; }),
               on_recv(b, [&](std::optional<int64_t> v) { got = v; }));
    // The value came from the case that fired: nothing else was consumed.
    EXPECT_EQ(got, static_cast<int64_t>(i)) << "round " << round;
    if (i > 1) {
      ADD_FAILURE() << "case " << i << " fired";
      break;
    }
    ++fired[i];
    (i == 0 ? a : b).send(static_cast<int64_t>(i));  // ready again
  }
  // Each channel still holds exactly its one value.
  EXPECT_EQ(a.try_recv().value, 0);
  EXPECT_EQ(b.try_recv().value, 1);
  EXPECT_EQ(a.try_recv().status, ChanStatus::kWouldBlock);
  EXPECT_EQ(b.try_recv().status, ChanStatus::kWouldBlock);
  return fired;
}

// Both cases on one session: the broker runs the select and makes the
// choice.
TEST(RemoteSelect, ChoosesRandomlyAmongReadyBrokerCases) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  const std::array<int, 2> fired = count_choices_between_ready_cases(
      client.chan<int64_t>("a", 1), client.chan<int64_t>("b", 1));
  EXPECT_GE(fired[0], kMinShare) << fired[0] << " vs " << fired[1];
  EXPECT_GE(fired[1], kMinShare) << fired[0] << " vs " << fired[1];
}

// A local and a broker case: the client polls them in random order. Both
// orders of the cases, so that neither "first" nor "last" passes.
TEST(RemoteSelect, ChoosesRandomlyBetweenReadyLocalAndBrokerCases) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  for (bool local_first : {true, false}) {
    Chan<int64_t> local = make_chan<int64_t>(1);
    Chan<int64_t> remote = client.chan<int64_t>(local_first ? "r1" : "r2", 1);
    const std::array<int, 2> fired =
        local_first ? count_choices_between_ready_cases(local, remote)
                    : count_choices_between_ready_cases(remote, local);
    EXPECT_GE(fired[0], kMinShare) << "local first: " << local_first << "; "
                                   << fired[0] << " vs " << fired[1];
    EXPECT_GE(fired[1], kMinShare) << "local first: " << local_first << "; "
                                   << fired[0] << " vs " << fired[1];
  }
}

TEST(RemoteSelect, ReceivesFromWhicheverChannelAnotherProcessFeeds) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> a = client.chan<int64_t>("a", 0);
  Chan<int64_t> b = client.chan<int64_t>("b", 0);
  Process producer =
      worker("produce", broker, "b", {"--cap=0", "--from=42", "--count=1"});
  std::optional<int64_t> got;
  const std::size_t i = select(
      on_recv(a, [&](std::optional<int64_t>) { ADD_FAILURE() << "a fired"; }),
      on_recv(b, [&](std::optional<int64_t> v) { got = v; }));
  EXPECT_EQ(i, 1u);
  EXPECT_EQ(got, 42);
  const ProcessResult p = producer.wait(kWorkerBound);
  EXPECT_EQ(p.exit_code, 0) << p;
  // The select's case on a was withdrawn: a has no receiver now.
  EXPECT_EQ(a.try_send(1), ChanStatus::kWouldBlock);
}

TEST(RemoteSelect, SendCaseDeliversToAReceiverProcess) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> out = client.chan<int64_t>("out", 0);
  Process receiver = worker("recv-one", broker, "out", {"--cap=0"});
  bool sent = false;
  EXPECT_EQ(select(on_send(out, int64_t{7}, [&] { sent = true; }),
                   on_recv(after(30s))),
            0u);
  EXPECT_TRUE(sent);
  const ProcessResult r = receiver.wait(kWorkerBound);
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(has_line(r, "got 7")) << r;
}

TEST(RemoteSelect, AfterTimesOutWithoutConsumingAnything) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> a = client.chan<int64_t>("a", 0);
  bool timed_out = false;
  EXPECT_EQ(select(on_recv(a),
                   on_recv(after(100ms), [&](auto) { timed_out = true; })),
            1u);
  EXPECT_TRUE(timed_out);
  // The withdrawn receive took nothing: a later sender's value reaches the
  // next receiver.
  Process producer =
      worker("produce", broker, "a", {"--cap=0", "--from=5", "--count=1"});
  EXPECT_EQ(a.recv(), 5);
  EXPECT_EQ(producer.wait(kWorkerBound).exit_code, 0);
}

TEST(RemoteSelect, DefaultRunsWhenNothingIsReady) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<std::string> a = client.chan<std::string>("a", 1);
  EXPECT_EQ(select(on_recv(a), on_default()), 1u);
  a.send("x");
  std::optional<std::string> got;
  EXPECT_EQ(select(on_recv(a, [&](auto v) { got = v; }), on_default()), 0u);
  EXPECT_EQ(got, "x");
}

TEST(RemoteSelect, ClosedChannelsFireRecvCasesAndPanicSendCases) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> a = client.chan<int64_t>("a", 0);
  a.close();
  bool saw_closed = false;
  select(on_recv(a, [&](std::optional<int64_t> v) { saw_closed = !v; }));
  EXPECT_TRUE(saw_closed);
  try {
    select(on_send(a, int64_t{1}));
    ADD_FAILURE() << "no panic";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "send on closed channel");
  }
}

TEST(RemoteSelect, ManySelectingReceiversGetEveryValueExactlyOnce) {
  BrokerProcess broker;
  constexpr int kPerChannel = 300;
  Client client = Client::connect(broker.address());
  Chan<int64_t> a = client.chan<int64_t>("a", 4);
  Chan<int64_t> b = client.chan<int64_t>("b", 0);
  Chan<int64_t> quit = client.chan<int64_t>("quit", 0);
  std::vector<Process> producers;
  producers.push_back(
      worker("produce", broker, "a", {"--cap=4", "--from=0", "--count=300"}));
  producers.push_back(
      worker("produce", broker, "b", {"--cap=0", "--from=300", "--count=300"}));
  expect_selectors_receive_each_value_once(a, b, quit, 2 * kPerChannel, [&] {
    for (Process& p : producers) EXPECT_EQ(p.wait(kWorkerBound).exit_code, 0);
  });
}

// A timer case whose value somebody else already took never fires again: the
// broker select must not wait on it, but on its broker cases.
TEST(RemoteSelect, ADrainedTimerDoesNotBlockTheBrokerCases) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> remote = client.chan<int64_t>("r", 0);
  auto timer = after(10ms);
  ASSERT_TRUE(timer.recv().has_value());  // drained
  Process producer =
      worker("produce", broker, "r", {"--cap=0", "--from=8", "--count=1"});
  std::optional<int64_t> got;
  EXPECT_EQ(select(on_recv(remote, [&](auto v) { got = v; }), on_recv(timer)),
            0u);
  EXPECT_EQ(got, 8);
  EXPECT_EQ(producer.wait(kWorkerBound).exit_code, 0);
}

TEST(RemoteSelect, MixedLocalAndBrokerCasesFireExactlyOne) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> remote = client.chan<int64_t>("r", 0);
  Chan<int64_t> local = make_chan<int64_t>(1);

  // The broker case fires: a worker process sends.
  Process producer =
      worker("produce", broker, "r", {"--cap=0", "--from=9", "--count=1"});
  std::optional<int64_t> got;
  EXPECT_EQ(select(on_recv(remote, [&](auto v) { got = v; }),
                   on_recv(local, [&](auto) { ADD_FAILURE(); })),
            0u);
  EXPECT_EQ(got, 9);
  EXPECT_EQ(producer.wait(kWorkerBound).exit_code, 0);

  // The local case fires; the broker case consumed nothing.
  std::thread t([&] {
    std::this_thread::sleep_for(50ms);
    local.send(4);
  });
  got.reset();
  EXPECT_EQ(select(on_recv(remote, [&](auto) { ADD_FAILURE(); }),
                   on_recv(local, [&](auto v) { got = v; })),
            1u);
  t.join();
  EXPECT_EQ(got, 4);
  Process later =
      worker("produce", broker, "r", {"--cap=0", "--from=10", "--count=1"});
  EXPECT_EQ(remote.recv(), 10);
  EXPECT_EQ(later.wait(kWorkerBound).exit_code, 0);
}

TEST(RemoteSelect, MixedSendCaseDeliversOnlyWhenItFires) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> remote = client.chan<int64_t>("out", 0);
  Chan<int64_t> local = make_chan<int64_t>(0);
  Process receiver = worker("recv-one", broker, "out", {"--cap=0"});
  EXPECT_EQ(select(on_send(remote, int64_t{77}), on_recv(local)), 0u);
  const ProcessResult r = receiver.wait(kWorkerBound);
  EXPECT_TRUE(has_line(r, "got 77")) << r;

  // Timed out via after(): the send case delivered nothing.
  EXPECT_EQ(select(on_send(remote, int64_t{78}), on_recv(local),
                   on_recv(after(100ms))),
            2u);
  EXPECT_EQ(remote.try_recv().status, ChanStatus::kWouldBlock);
}

TEST(RemoteSelect, SpansTwoClientsSessions) {
  BrokerProcess broker;
  Client c1 = Client::connect(broker.address());
  Client c2 = Client::connect(broker.address());
  Chan<int64_t> x = c1.chan<int64_t>("x", 0);
  Chan<int64_t> y = c2.chan<int64_t>("y", 0);
  Process producer =
      worker("produce", broker, "y", {"--cap=0", "--from=3", "--count=1"});
  std::optional<int64_t> got;
  EXPECT_EQ(select(on_recv(x), on_recv(y, [&](auto v) { got = v; })), 1u);
  EXPECT_EQ(got, 3);
  EXPECT_EQ(producer.wait(kWorkerBound).exit_code, 0);
  EXPECT_EQ(x.try_send(1), ChanStatus::kWouldBlock);  // x's case withdrawn
}

// One channel on each of two brokers, both ready: exactly one case fires and
// the other channel keeps its value; then the choice between them, made by
// the client's spanning select, is random too.
TEST(RemoteSelect, TwoBrokersBothReadyFireExactlyOneCase) {
  BrokerProcess b1, b2;
  Client c1 = Client::connect(b1.address());
  Client c2 = Client::connect(b2.address());
  Chan<int64_t> x = c1.chan<int64_t>("x", 1);
  Chan<int64_t> y = c2.chan<int64_t>("y", 1);
  x.send(10);
  y.send(20);
  int fired = 0;
  std::optional<int64_t> got;
  const std::size_t i = select(on_recv(x,
                                       [&](std::optional<int64_t> v) {
                                         ++fired;
                                         got = v;
                                       }),
                               on_recv(y, [&](std::optional<int64_t> v) {
                                 ++fired;
                                 got = v;
                               }));
  ASSERT_LT(i, 2u);
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(got, i == 0 ? 10 : 20);
  // The other case consumed nothing: its value is still on its broker.
  Chan<int64_t>& other = i == 0 ? y : x;
  const RecvResult<int64_t> left = other.try_recv();
  EXPECT_EQ(left.status, ChanStatus::kOk);
  EXPECT_EQ(left.value, i == 0 ? 20 : 10);
  EXPECT_EQ(x.try_recv().status, ChanStatus::kWouldBlock);
  EXPECT_EQ(y.try_recv().status, ChanStatus::kWouldBlock);

  const std::array<int, 2> counts = count_choices_between_ready_cases(
      c1.chan<int64_t>("x2", 1), c2.chan<int64_t>("y2", 1));
  EXPECT_GE(counts[0], kMinShare) << counts[0] << " vs " << counts[1];
  EXPECT_GE(counts[1], kMinShare) << counts[0] << " vs " << counts[1];
}

// Nothing is ready on either broker until another thread sends on the
// second broker's channel: that case fires, and the first broker's case is
// withdrawn (no receiver left behind, nothing consumed).
TEST(RemoteSelect, TwoBrokersFireTheCaseThatBecomesReadyLater) {
  BrokerProcess b1, b2;
  Client c1 = Client::connect(b1.address());
  Client c2 = Client::connect(b2.address());
  for (int64_t cap : {0, 1}) {
    SCOPED_TRACE("capacity " + std::to_string(cap));
    const std::string name = "c" + std::to_string(cap);
    Chan<int64_t> x = c1.chan<int64_t>(name, cap);
    Chan<int64_t> y = c2.chan<int64_t>(name, cap);
    std::thread sender([&] {
      std::this_thread::sleep_for(100ms);
      y.send(cap + 30);
    });
    std::optional<int64_t> got;
    const std::size_t i = select(
        on_recv(x, [&](std::optional<int64_t>) { ADD_FAILURE() << "x fired"; }),
        on_recv(y, [&](std::optional<int64_t> v) { got = v; }),
        on_recv(after(30s)));
    sender.join();
    EXPECT_EQ(i, 1u);
    EXPECT_EQ(got, cap + 30);
    EXPECT_TRUE(b1.wait_for_chan(
        name,
        [](const ChanInfo& c) {
          return c.blocked_receivers == 0 && c.len == 0;
        },
        10s));
    EXPECT_TRUE(b2.wait_for_chan(
        name,
        [](const ChanInfo& c) { return c.blocked_senders == 0 && c.len == 0; },
        10s));
    // x's withdrawn case takes nothing sent later.
    std::thread later([&] { x.send(cap + 40); });
    EXPECT_EQ(x.recv(), cap + 40);
    later.join();
  }
}

TEST(RemoteSelect, MixedSelectorsGetEveryValueExactlyOnce) {
  BrokerProcess broker;
  constexpr int kRemote = 200, kLocal = 200;
  Client client = Client::connect(broker.address());
  Chan<int64_t> remote = client.chan<int64_t>("r", 2);
  Chan<int64_t> local = make_chan<int64_t>(2);
  Chan<int64_t> quit = make_chan<int64_t>();
  Process producer =
      worker("produce", broker, "r", {"--cap=2", "--from=0", "--count=200"});
  std::thread local_producer([&] {
    for (int64_t v = kRemote; v < kRemote + kLocal; ++v) local.send(v);
  });
  expect_selectors_receive_each_value_once(
      remote, local, quit, kRemote + kLocal, [&] {
        EXPECT_EQ(producer.wait(kWorkerBound).exit_code, 0);
        local_producer.join();
      });
}

// Issue 4's gap: process A runs select(send on unbuffered broker channel,
// recv on a local channel), process B select(recv on it, recv on another
// local channel). Go's selects would meet; with only readiness watches they
// blocked forever (each saw no real counterparty).
TEST(RemoteSelect, TwoSpanningSelectsMeetOnAnUnbufferedBrokerChannel) {
  BrokerProcess broker;
  constexpr auto kBound = std::chrono::seconds(15);
  for (int round = 0; round < 3; ++round) {
    // Either may come first.
    std::vector<Process> ps;
    const std::string value = std::to_string(100 + round);
    if (round % 2 == 0) {
      ps.push_back(worker("span-one", broker, "x",
                          {"--cap=0", "--role=send", "--value=" + value}));
      ps.push_back(worker("span-one", broker, "x", {"--cap=0", "--role=recv"}));
    } else {
      ps.push_back(worker("span-one", broker, "x", {"--cap=0", "--role=recv"}));
      ps.push_back(worker("span-one", broker, "x",
                          {"--cap=0", "--role=send", "--value=" + value}));
    }
    const std::vector<ProcessResult> rs = wait_all(ps, kBound);
    for (const ProcessResult& r : rs) {
      ASSERT_FALSE(r.timed_out)
          << "two spanning selects on one unbuffered broker channel did not "
             "meet within "
          << kBound.count() << " s (killed):\n"
          << r;
      EXPECT_EQ(r.exit_code, 0) << r;
    }
    const ProcessResult& sender = rs[round % 2 == 0 ? 0 : 1];
    const ProcessResult& receiver = rs[round % 2 == 0 ? 1 : 0];
    EXPECT_TRUE(has_line(sender, "sent " + value)) << sender;
    EXPECT_TRUE(has_line(receiver, "got " + value)) << receiver;
  }
}

// The totals a span-loop worker printed.
struct SpanTotals {
  int64_t sent = 0, recv = 0, sum = 0, sumsq = 0, local = 0, timeouts = 0;
};

std::optional<SpanTotals> span_totals(const ProcessResult& r) {
  for (const std::string& line : r.lines()) {
    std::vector<std::string> w = absl::StrSplit(line, ' ');
    if (w.size() != 13 || w[0] != "span") continue;
    SpanTotals t;
    if (absl::SimpleAtoi(w[2], &t.sent) && absl::SimpleAtoi(w[4], &t.recv) &&
        absl::SimpleAtoi(w[6], &t.sum) && absl::SimpleAtoi(w[8], &t.sumsq) &&
        absl::SimpleAtoi(w[10], &t.local) &&
        absl::SimpleAtoi(w[12], &t.timeouts)) {
      return t;
    }
  }
  return std::nullopt;
}

// Five processes loop on spanning selects over two unbuffered broker
// channels x and y, each also over a local channel that a local thread
// feeds, some with after() timeouts: senders and receivers mixed, two of
// them sending on one channel and receiving on the other in the same select
// (so their offers cross), one sending and receiving on y at once. Every
// value must arrive exactly once (count, sum, sum of squares), every local
// tick too, and it all ends by itself.
TEST(RemoteSelect, SpanningSelectorsDeliverEveryValueExactlyOnce) {
  BrokerProcess broker;
  constexpr int64_t kCount = 300, kTicks = 60;
  constexpr auto kBound = std::chrono::seconds(60);
  Client client = Client::connect(broker.address());
  Chan<int64_t> done = client.chan<int64_t>("done", 16);
  Chan<int64_t> quit = client.chan<int64_t>("quit", 0);
  struct Spec {
    std::string send, recv;
    int64_t from;
    int timeout_every;
  };
  const std::vector<Spec> specs = {
      {"x", "y", 0, 0}, {"y", "x", 100000, 3}, {"x", "", 200000, 5},
      {"", "x", 0, 2},  {"y", "y", 300000, 0},
  };
  std::vector<Process> ps;
  int senders = 0;
  int64_t want_count = 0, want_sum = 0, want_sumsq = 0;
  for (const Spec& s : specs) {
    std::vector<std::string> args = {
        "--broker=" + broker.address(), "--done=done",
        "--local=" + std::to_string(kTicks),
        "--timeout_every=" + std::to_string(s.timeout_every), "--timeout_s=90"};
    if (!s.send.empty()) {
      ++senders;
      args.push_back("--send_chan=" + s.send);
      args.push_back("--from=" + std::to_string(s.from));
      args.push_back("--count=" + std::to_string(kCount));
      for (int64_t v = s.from; v < s.from + kCount; ++v) {
        ++want_count;
        want_sum += v;
        want_sumsq += v * v;
      }
    }
    if (!s.recv.empty()) {
      args.push_back("--recv_chan=" + s.recv);
      args.push_back("--quit=quit");
    }
    args.insert(args.begin(), "span-loop");
    ps.push_back(Process::spawn(DCHAN_WORKER_PATH, args));
  }
  // Once every sender has sent everything (each value taken by a receiver:
  // the channels are unbuffered), the receivers may stop.
  const auto deadline = std::chrono::steady_clock::now() + kBound;
  int finished = 0;
  while (finished < senders) {
    const RecvResult<int64_t> r = done.recv_until(deadline);
    if (r.status != ChanStatus::kOk) break;
    ++finished;
  }
  EXPECT_EQ(finished, senders)
      << "senders did not finish within " << kBound.count() << " s";
  quit.close();
  const std::vector<ProcessResult> rs = wait_all(ps, std::chrono::seconds(30));
  SpanTotals total;
  for (std::size_t i = 0; i < rs.size(); ++i) {
    const ProcessResult& r = rs[i];
    ASSERT_EQ(r.exit_code, 0) << "worker " << i << ":\n" << r;
    const std::optional<SpanTotals> t = span_totals(r);
    ASSERT_TRUE(t.has_value()) << r;
    EXPECT_EQ(t->local, kTicks) << r;
    EXPECT_EQ(t->sent, specs[i].send.empty() ? 0 : kCount) << r;
    total.recv += t->recv;
    total.sum += t->sum;
    total.sumsq += t->sumsq;
    total.timeouts += t->timeouts;
  }
  std::printf(
      "spanning stress: %lld values received, %lld after() cases fired\n",
      static_cast<long long>(total.recv),
      static_cast<long long>(total.timeouts));
  EXPECT_EQ(total.recv, want_count);
  EXPECT_EQ(total.sum, want_sum);
  EXPECT_EQ(total.sumsq, want_sumsq);
  // Nothing is left over on the broker.
  EXPECT_EQ(client.chan<int64_t>("x", 0).try_recv().status,
            ChanStatus::kWouldBlock);
}

}  // namespace
}  // namespace dchan::testing
