// Clients coming and going all at once, against a real dchan-broker on
// 127.0.0.1: the broker serves every kind of call at the same time as calls
// of every kind end — on its polling thread, its inspection thread and in
// gRPC — so this is where a call object that outlives its call, or is
// freed under a completion still due, would show (under ASan in the
// sanitizer stage, whose leak check runs as the broker exits).
//
// At the same time:
//   - dchan::Client sessions, each connecting, using a channel (timed
//     receives that are withdrawn, non-blocking sends) and a mutex, and
//     ending gracefully;
//   - raw Session streams that open a channel, block a receive on it and
//     are then cut off (RST_STREAM);
//   - worker processes blocked in a receive, killed with SIGKILL (their
//     TCP connections close under the broker);
//   - Inspect (ListObjects, ListSessions) and health Check calls in a loop;
//   - health Watch and server reflection streams, each cancelled or ended
//     half-way.
// The first test then expects nothing left behind (no session, no blocked
// waiter) and a broker that still serves. The second sends SIGTERM in the
// middle of all that, at three different points, and expects a clean exit.
//
// Bounded: fixed round counts; every call and stream has a deadline; waits
// for the broker's state are bounded.
#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "dchan/error.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "dchan/v1/inspect.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "raw_channel.h"

#ifndef DCHAN_WORKER_PATH
#error "DCHAN_WORKER_PATH must name the dchan-test-worker binary"
#endif

namespace dchan::testing {
namespace {

namespace v1 = ::dchan::v1;
namespace health = ::grpc::health::v1;
namespace reflection = ::grpc::reflection::v1alpha;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kClientThreads = 3;
constexpr int kClientRounds = 40;
constexpr int kAbortThreads = 2;
constexpr int kAbortRounds = 40;
constexpr int kKilledWorkers = 6;
constexpr int kStreamRounds = 40;  // health Watch and reflection each
// Every call and stream ends by this deadline, whatever the broker does.
constexpr milliseconds kCallBound = seconds(20);
constexpr milliseconds kBrokerStateBound = seconds(20);

std::chrono::system_clock::time_point call_deadline() {
  return std::chrono::system_clock::now() + kCallBound;
}

// One churner's round; false once the broker could not be used (the churn
// test counts those as failures, the SIGTERM test expects them).
using Round = std::function<bool(int round)>;

// A dchan::Client session: timed receives (withdrawn on the broker when
// they time out), non-blocking sends, a lock round, a graceful end.
bool client_round(const std::string& address, int thread, int round) {
  try {
    ClientOptions options;
    options.name = absl::StrCat("churn-", thread, "-", round);
    options.connect_timeout = seconds(10);
    Client client = Client::connect(address, options);
    Chan<std::string> ch = client.chan<std::string>("churn-client", 1);
    (void)ch.try_send(absl::StrCat(thread, ":", round));
    (void)ch.recv_for(milliseconds(round % 3));
    (void)ch.recv_for(milliseconds(0));
    Mutex mu = client.mutex("churn-lock");
    if (!mu.try_lock_for(kCallBound)) return false;
    mu.unlock();
    return true;
  } catch (const Error&) {
    return false;
  }
}

// A raw Session stream blocked in a receive, then cut off (RST_STREAM).
bool abort_round(const std::string& address, int round) {
  auto stub = v1::Broker::NewStub(raw_channel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(call_deadline());
  auto stream = stub->Session(&ctx);
  v1::ClientBatch batch;
  v1::ClientFrame* open = batch.add_frames();
  open->set_id(1);
  open->mutable_open()->set_name("churn-raw");
  open->mutable_open()->set_kind(v1::OBJECT_KIND_CHANNEL);
  open->mutable_open()->set_type_name("bytes");
  bool ok = stream->Write(batch);
  v1::ServerBatch answers;
  ok = ok && stream->Read(&answers) && answers.frames_size() == 1 &&
       answers.frames(0).code() == 0;
  if (ok) {
    batch.Clear();
    v1::ClientFrame* recv = batch.add_frames();
    recv->set_id(2);
    recv->mutable_recv()->set_handle(answers.frames(0).open().handle());
    ok = stream->Write(batch);
  }
  // Cut off at once, or after the broker has had a moment with the
  // blocked receive.
  if (round % 2 == 1) std::this_thread::sleep_for(milliseconds(1));
  ctx.TryCancel();
  (void)stream->Finish();
  return ok;
}

// A health Watch, read once, then cancelled; every other round also a
// Check on the same connection.
bool health_round(const std::string& address, int round) {
  auto stub = health::Health::NewStub(raw_channel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(call_deadline());
  health::HealthCheckRequest request;
  request.set_service(round % 2 == 0 ? "" : "dchan.v1.Broker");
  auto reader = stub->Watch(&ctx, request);
  health::HealthCheckResponse response;
  const bool ok = reader->Read(&response);
  ctx.TryCancel();
  (void)reader->Finish();
  if (round % 2 == 0) {
    grpc::ClientContext check;
    check.set_deadline(call_deadline());
    health::HealthCheckResponse r;
    return ok && stub->Check(&check, request, &r).ok();
  }
  return ok;
}

// Server reflection: list the services, then end the stream half-way (a
// second request written, its answer not read) or properly.
bool reflection_round(const std::string& address, int round) {
  auto stub = reflection::ServerReflection::NewStub(raw_channel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(call_deadline());
  auto stream = stub->ServerReflectionInfo(&ctx);
  reflection::ServerReflectionRequest request;
  request.set_list_services("");
  reflection::ServerReflectionResponse response;
  const bool ok = stream->Write(request) && stream->Read(&response) &&
                  response.has_list_services_response();
  if (round % 2 == 1) {
    request.set_file_containing_symbol("dchan.v1.Broker");
    (void)stream->Write(request);
    ctx.TryCancel();
  } else {
    (void)stream->WritesDone();
    while (stream->Read(&response)) {
    }
  }
  (void)stream->Finish();
  return ok;
}

// Inspect and health Check once each, on `channel`.
bool inspect_round(const std::shared_ptr<grpc::Channel>& channel) {
  auto inspect = v1::Inspect::NewStub(channel);
  grpc::ClientContext objects_ctx, sessions_ctx, check_ctx;
  for (grpc::ClientContext* c : {&objects_ctx, &sessions_ctx, &check_ctx}) {
    c->set_deadline(call_deadline());
  }
  v1::ListObjectsResponse objects;
  v1::ListSessionsResponse sessions;
  health::HealthCheckResponse serving;
  return inspect->ListObjects(&objects_ctx, {}, &objects).ok() &&
         inspect->ListSessions(&sessions_ctx, {}, &sessions).ok() &&
         health::Health::NewStub(channel)->Check(&check_ctx, {}, &serving).ok();
}

// Worker processes, each blocked in a receive on a channel nobody sends
// to, killed with SIGKILL once the broker holds its receive.
bool kill_round(BrokerProcess& broker, int round) {
  Process w = Process::spawn(
      DCHAN_WORKER_PATH,
      {"recv-one", "--broker=" + broker.address(),
       absl::StrCat("--chan=churn-killed-", round), "--type=string"});
  if (!w.wait_for_output("ready", kCallBound)) return false;
  // "ready" comes before the receive is sent: wait for the broker to hold
  // it (giving up on a broker that is gone), then kill.
  const std::string name = absl::StrCat("churn-killed-", round);
  const auto deadline = std::chrono::steady_clock::now() + kBrokerStateBound;
  bool held = false;
  while (!held && broker.running() &&
         std::chrono::steady_clock::now() < deadline) {
    const std::optional<ChanInfo> c = broker.chan_info(name);
    held = c.has_value() && c->blocked_receivers == 1;
    if (!held) std::this_thread::sleep_for(milliseconds(10));
  }
  w.signal(SIGKILL);
  (void)w.wait(kCallBound);
  return held;
}

// What a churn did: rounds finished (Inspect rounds not included) and
// rounds that failed (Inspect rounds included).
struct Churned {
  int finished = 0;
  int failed = 0;
};

// Everything above at once. `stop_after(total)` is asked after each
// finished round (with the count of rounds finished by all threads so far)
// and may signal the broker; once it returns true the churners stop at
// their next round.
Churned churn(BrokerProcess& broker,
              const std::function<bool(int finished)>& stop_after) {
  const std::string address = broker.address();
  std::atomic<int> finished{0}, failed{0};
  std::atomic<bool> stop{false};
  auto run = [&](int rounds, const Round& round) {
    for (int r = 0; r < rounds && !stop.load(); ++r) {
      if (!round(r)) failed.fetch_add(1);
      if (stop_after(finished.fetch_add(1) + 1)) stop.store(true);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kClientThreads; ++t) {
    threads.emplace_back(run, kClientRounds,
                         [&, t](int r) { return client_round(address, t, r); });
  }
  for (int t = 0; t < kAbortThreads; ++t) {
    threads.emplace_back(run, kAbortRounds,
                         [&](int r) { return abort_round(address, r); });
  }
  threads.emplace_back(run, kStreamRounds,
                       [&](int r) { return health_round(address, r); });
  threads.emplace_back(run, kStreamRounds,
                       [&](int r) { return reflection_round(address, r); });
  // Inspect in a loop until the others are done (not counted as rounds),
  // pausing between rounds: on 2 vCPUs an unpaced loop and the broker's
  // inspection thread would take a CPU from the churn.
  std::atomic<bool> others_done{false};
  std::thread inspector([&] {
    const std::shared_ptr<grpc::Channel> channel = raw_channel(address);
    while (!others_done.load() && !stop.load()) {
      if (!inspect_round(channel)) failed.fetch_add(1);
      std::this_thread::sleep_for(milliseconds(5));
    }
  });
  // Worker processes are spawned from this thread (BrokerProcess and its
  // helpers belong to one thread).
  run(kKilledWorkers, [&](int r) { return kill_round(broker, r); });
  for (std::thread& t : threads) t.join();
  others_done.store(true);
  inspector.join();
  std::printf("churn: %d rounds finished, %d failed\n", finished.load(),
              failed.load());
  return {finished.load(), failed.load()};
}

// The broker with `poll_threads` polling threads, churned; then checked.
void expect_nothing_left_behind(int poll_threads) {
  BrokerProcess broker({absl::StrCat("--poll_threads=", poll_threads)});
  const Churned churned = churn(broker, [](int) { return false; });
  EXPECT_EQ(churned.failed, 0);
  EXPECT_EQ(churned.finished, kClientThreads * kClientRounds +
                                  kAbortThreads * kAbortRounds +
                                  2 * kStreamRounds + kKilledWorkers);
  EXPECT_TRUE(broker.running());

  // Every session ended, gracefully or not, is gone, and with them every
  // waiter they left blocked.
  EXPECT_TRUE(broker.wait_for_sessions(
      [](const std::vector<SessionState>& s) { return s.empty(); },
      kBrokerStateBound));
  for (const std::string& name :
       {std::string("churn-raw"), std::string("churn-client")}) {
    const std::optional<ChanInfo> c = broker.chan_info(name);
    if (c.has_value()) {
      EXPECT_EQ(c->blocked_receivers, 0u) << name;
      EXPECT_EQ(c->blocked_senders, 0u) << name;
    }
  }
  for (int r = 0; r < kKilledWorkers; ++r) {
    const std::optional<ChanInfo> c =
        broker.chan_info(absl::StrCat("churn-killed-", r));
    if (c.has_value()) {
      EXPECT_EQ(c->blocked_receivers, 0u) << r;
    }
  }
  if (const std::optional<ObjectState> lock =
          broker.object_state("churn-lock")) {
    EXPECT_TRUE(lock->holder_sessions.empty());
    EXPECT_EQ(lock->queued_lockers, 0u);
  }

  // And it still serves a newcomer.
  Client client = Client::connect(broker.address());
  Chan<std::string> ch = client.chan<std::string>("after-churn", 1);
  ch.send("still here");
  EXPECT_EQ(ch.recv(), std::optional<std::string>("still here"));
  // The destructor of `broker` stops it and expects exit status 0 (and,
  // under ASan, a clean leak check).
}

TEST(BrokerChurn, SessionsComingAndGoingAtOnceLeaveNothingBehind) {
  expect_nothing_left_behind(1);
}

// gRPC spreads the connections over the queues: calls of one kind end on
// one polling thread while others start on another.
TEST(BrokerChurn, SessionsComingAndGoingOverThreePollingThreads) {
  expect_nothing_left_behind(3);
}

// SIGTERM while every kind of call is starting, running and ending: the
// broker exits 0 within its bound (no crash, no hang, under ASan no leak),
// at three points of the churn, with one, three and two polling threads.
TEST(BrokerChurn, SigtermInTheMiddleOfTheChurnExitsZero) {
  constexpr milliseconds kExitBound = seconds(20);
  for (const auto& [after, poll_threads] :
       {std::pair{3, 1}, std::pair{15, 3}, std::pair{40, 2}}) {
    SCOPED_TRACE(absl::StrCat("SIGTERM after ", after, " rounds, ",
                              poll_threads, " polling threads"));
    BrokerProcess broker({absl::StrCat("--poll_threads=", poll_threads)});
    // The signal comes from whichever churner finishes round `after`: the
    // BrokerProcess belongs to this thread (busy with the worker rounds),
    // so the churner uses the pid, and the exit is awaited here after the
    // churn.
    const pid_t pid = broker.pid();
    std::atomic<bool> signalled{false};
    // Rounds fail once the broker is gone: expected here.
    (void)churn(broker, [&](int finished) {
      if (finished < after || signalled.exchange(true)) return false;
      ::kill(pid, SIGTERM);
      return true;
    });
    ASSERT_TRUE(signalled.load()) << "the churn ended before the SIGTERM";
    const ProcessResult exit = broker.wait(kExitBound);
    EXPECT_FALSE(exit.timed_out) << exit;
    EXPECT_EQ(exit.exit_code, 0) << exit;
    std::printf("SIGTERM after %d rounds: exit status %d\n", after,
                exit.exit_code);
  }
}

}  // namespace
}  // namespace dchan::testing
