// select over broker channels, against a real dchan-broker process and real
// worker processes: one select on the broker, default and after() cases.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"

namespace dchan::testing {
namespace {

using namespace std::chrono_literals;
constexpr auto kWorkerBound = std::chrono::seconds(30);

Process worker(const std::string& mode, const BrokerProcess& broker,
               const std::string& chan, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {mode, "--broker=" + broker.address(),
                                   "--chan=" + chan};
  args.insert(args.end(), extra.begin(), extra.end());
  return Process::spawn(DCHAN_WORKER_PATH, args);
}

bool has_line(const ProcessResult& r, const std::string& line) {
  for (const std::string& l : r.lines()) {
    if (l == line) return true;
  }
  return false;
}

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

}  // namespace
}  // namespace dchan::testing
