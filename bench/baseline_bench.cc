// bench/baseline_bench.cc — the C++ remote baselines of issue 7, next to which
// bench/run_baselines.sh puts dchan's broker figures. Every message carries a
// 100-byte payload; one benchmark iteration is one round trip.
//
//   redis_echo     Redis LPUSH/BRPOP echo (hiredis, two connections): A
//                  LPUSHes to q1 and BRPOPs q2; B BRPOPs q1 and LPUSHes
//                  what it got to q2. Like dchan's ping-pong, the value
//                  crosses the server twice per round trip.
//   relay/grpc     A -> relay server -> B -> relay server -> A over two gRPC
//                  bidi streams (bench/relay.proto), sync clients on
//                  connections of their own, callback-API relay in its own
//                  process: the floor for dchan's unbuffered ping-pong
//                  through the broker (two hops), where remote_bench's
//                  roundtrip/grpc is one hop.
//   In both, A is this process and B a partner process (this binary
//   re-executed with --partner), as in remote_bench's pingpong/remote: the
//   issue's hand-off is "between two processes".
//   relay_bandwidth/grpc
//                  64 KiB values one way, A -> relay server -> B (one
//                  iteration per value, batches of 1,024): the floor for
//                  dchan's 64 KiB bandwidth through the broker.
//
// The servers are child processes this program starts on loopback and stops
// at exit (and that die with it: PR_SET_PDEATHSIG):
//   redis-server   `redis-server --port P --bind 127.0.0.1 --save ''
//                  --appendonly no` on a free port (DCHAN_BENCH_REDIS_SERVER
//                  overrides the binary);
//   the relay      this binary re-executed with --relay-server.
// Both inherit this process's CPU affinity: under `taskset -c 0` clients and
// servers share CPU 0, as remote_bench's broker does.
//
// Timing: batches of 256 round trips (Google Benchmark manual time, A's wall
// time) after one untimed warm-up round trip; the partner is started (and
// has connected) before, and stopped after.
// Every round trip's latency is recorded; p50_us/p99_us are the repetition's
// percentiles. A thread is started and joined before measuring (glibc uses
// real atomics only once a process has had a second thread).
//
// Run bench/run_baselines.sh for the comparison with dchan (5 repetitions,
// unpinned and pinned). A tiny run (CI): --benchmark_min_time=0.001.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "batch.h"
#include "benchmark/benchmark.h"
#include "child_process.h"
#include "grpcpp/grpcpp.h"
#include "hiredis/hiredis.h"
#include "latencies.h"
#include "relay.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
using dchan::bench::ChildProcess;
using dchan::bench::Frame;
using dchan::bench::FreeLoopbackPort;
using dchan::bench::Latencies;
using dchan::bench::Relay;
using dchan::bench::UniqueName;

constexpr std::size_t kPayloadBytes = 100;
constexpr int64_t kRoundTripBatch = 256;
constexpr char kRelayServerFlag[] = "--relay-server";
constexpr char kPartnerFlag[] = "--partner";

const std::string& Payload() {
  static const std::string p(kPayloadBytes, 'x');
  return p;
}

// A benchmark thread that meets an error has no State to report it to:
// it ends the program with the reason.
[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "baseline_bench: %s\n", what.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

// ---------------------------------------------------------------------------
// Redis.

struct RedisContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using RedisConnection = std::unique_ptr<redisContext, RedisContextDeleter>;

struct RedisReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using RedisReply = std::unique_ptr<redisReply, RedisReplyDeleter>;

RedisConnection RedisConnect(int port) {
  RedisConnection c(redisConnect("127.0.0.1", port));
  if (c == nullptr || c->err != 0) return nullptr;
  return c;
}

// Runs one command; dies on a connection error or an error reply.
RedisReply RedisCall(redisContext* c, const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  RedisReply r(static_cast<redisReply*>(redisvCommand(c, format, ap)));
  va_end(ap);
  if (r == nullptr) Die(std::string("redis: ") + c->errstr);
  if (r->type == REDIS_REPLY_ERROR) Die(std::string("redis: ") + r->str);
  return r;
}

// BRPOP KEY 0 (wait forever): the popped value.
std::string RedisBlockingPop(redisContext* c, const std::string& key) {
  RedisReply r = RedisCall(c, "BRPOP %s 0", key.c_str());
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
    Die("redis: unexpected BRPOP reply");
  }
  return std::string(r->element[1]->str, r->element[1]->len);
}

void RedisPush(redisContext* c, const std::string& key,
               const std::string& value) {
  RedisCall(c, "LPUSH %s %b", key.c_str(), value.data(), value.size());
}

class RedisServer {
 public:
  void start() {
    port_ = FreeLoopbackPort();
    const char* bin = std::getenv("DCHAN_BENCH_REDIS_SERVER");
    process_.start({bin != nullptr ? bin : "redis-server", "--port",
                    std::to_string(port_), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", "/tmp"});
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(20);
    for (;;) {
      if (RedisConnection c = RedisConnect(port_)) {
        RedisReply r(static_cast<redisReply*>(redisCommand(c.get(), "PING")));
        if (r != nullptr && r->type == REDIS_REPLY_STATUS) return;
      }
      if (!process_.running() || Clock::now() > deadline) {
        throw std::runtime_error("redis-server did not come up on port " +
                                 std::to_string(port_));
      }
      usleep(10000);
    }
  }
  void stop() { process_.stop(); }
  int port() const { return port_; }

 private:
  ChildProcess process_;
  int port_ = 0;
};

// ---------------------------------------------------------------------------
// The relay server (its own process: this binary with --relay-server).

class RelayReactor;

// Two streams that joined under one name. Messages from a side that has no
// partner yet wait in `held`.
struct Room {
  std::mutex mu;
  RelayReactor* sides[2] = {nullptr, nullptr};
  std::deque<Frame> held[2];  // for side i, from the other side
};

class RelayReactor final : public grpc::ServerBidiReactor<Frame, Frame> {
 public:
  RelayReactor(std::shared_ptr<Room> room, std::function<void()> on_done)
      : room_(std::move(room)), on_done_(std::move(on_done)) {
    std::lock_guard<std::mutex> lock(room_->mu);
    side_ = room_->sides[0] == nullptr ? 0 : 1;
    room_->sides[side_] = this;
    while (!room_->held[side_].empty()) {
      queue_locked(std::move(room_->held[side_].front()));
      room_->held[side_].pop_front();
    }
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(room_->mu);
    if (!ok) {
      reads_done_ = true;
      maybe_finish_locked();
      return;
    }
    RelayReactor* peer = room_->sides[1 - side_];
    if (peer != nullptr) {
      peer->queue_locked(std::move(in_));
    } else {
      room_->held[1 - side_].push_back(std::move(in_));
    }
    in_.Clear();
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(room_->mu);
    writing_ = false;
    out_.pop_front();
    if (!ok) {
      out_.clear();
      reads_done_ = true;  // the call is over; its read fails too
    }
    if (!out_.empty()) {
      writing_ = true;
      StartWrite(&out_.front());
    }
    maybe_finish_locked();
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(room_->mu);
      room_->sides[side_] = nullptr;
    }
    on_done_();
    delete this;
  }

 private:
  // One write in flight; the rest wait in out_ (a deque: StartWrite's
  // message must stay put until OnWriteDone).
  void queue_locked(Frame f) {
    if (finished_) return;
    out_.push_back(std::move(f));
    if (!writing_) {
      writing_ = true;
      StartWrite(&out_.front());
    }
  }

  void maybe_finish_locked() {
    if (reads_done_ && !writing_ && !finished_) {
      finished_ = true;
      Finish(grpc::Status::OK);
    }
  }

  const std::shared_ptr<Room> room_;
  const std::function<void()> on_done_;
  int side_ = 0;
  Frame in_;
  std::deque<Frame> out_;
  bool writing_ = false;
  bool reads_done_ = false;
  bool finished_ = false;
};

class RelayService final : public Relay::CallbackService {
  grpc::ServerBidiReactor<Frame, Frame>* Join(
      grpc::CallbackServerContext* ctx) override {
    const auto& md = ctx->client_metadata();
    const auto it = md.find("room");
    const std::string name =
        it == md.end() ? std::string()
                       : std::string(it->second.data(), it->second.size());
    std::shared_ptr<Room> room;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::shared_ptr<Room>& r = rooms_[name];
      if (r == nullptr) r = std::make_shared<Room>();
      room = r;
    }
    // The room is forgotten once both of its streams are done.
    return new RelayReactor(room, [this, name, room] {
      std::lock_guard<std::mutex> lock(mu_);
      std::lock_guard<std::mutex> room_lock(room->mu);
      const auto r = rooms_.find(name);
      if (r != rooms_.end() && r->second == room && room->sides[0] == nullptr &&
          room->sides[1] == nullptr) {
        rooms_.erase(r);
      }
    });
  }

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Room>> rooms_;
};

// Serves until SIGTERM / SIGINT.
int RelayServerMain() {
  RelayService service;
  std::unique_ptr<grpc::Server> server;
  return dchan::bench::ServeUntilSignalled(
      "baseline_bench relay server",
      [&] {
        grpc::ServerBuilder builder;
        int port = 0;
        builder.AddListeningPort("127.0.0.1:0",
                                 grpc::InsecureServerCredentials(), &port);
        builder.RegisterService(&service);
        server = builder.BuildAndStart();
        if (server == nullptr || port == 0) {
          throw std::runtime_error("cannot start the relay server");
        }
        return "127.0.0.1:" + std::to_string(port);
      },
      [&] {
        server->Shutdown(std::chrono::system_clock::now() +
                         std::chrono::seconds(2));
        server->Wait();
      });
}

class RelayServer {
 public:
  void start(const std::string& self) {
    process_.start({self, kRelayServerFlag});
    address_ = dchan::bench::ReadListenAddress(process_);
  }
  void stop() { process_.stop(); }
  const std::string& address() const { return address_; }

 private:
  ChildProcess process_;
  std::string address_;
};

// ---------------------------------------------------------------------------
// Harness.

std::string g_self;  // this binary, for the relay's re-execution
RedisServer g_redis;
RelayServer g_relay;
bool g_redis_started = false;
bool g_relay_started = false;

// Runs batches of round trips, `one()` being one, with B's side in a
// partner process started with `partner_args` (see PartnerMain).
template <class RoundTrip>
void RunRoundTrips(benchmark::State& state,
                   const std::vector<std::string>& partner_args,
                   RoundTrip one) {
  std::vector<std::string> argv = {g_self, kPartnerFlag};
  argv.insert(argv.end(), partner_args.begin(), partner_args.end());
  ChildProcess partner;
  try {
    partner.start(argv);
    if (partner.read_line() != "ready\n") {
      throw std::runtime_error("the partner process did not get ready");
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  // A round trip waits for the partner without a deadline: if it dies, the
  // program must end rather than hang.
  std::jthread watchdog([&](std::stop_token stop) {
    while (!stop.stop_requested()) {
      if (!partner.running()) Die("the partner process exited");
      usleep(50000);
    }
  });
  one();  // warm-up: the partner may not have reached its read yet
  Latencies lat;
  while (state.KeepRunningBatch(kRoundTripBatch)) {
    const Clock::time_point start = Clock::now();
    for (int64_t i = 0; i < kRoundTripBatch; ++i) {
      const Clock::time_point t0 = Clock::now();
      one();
      lat.add(Clock::now() - t0);
    }
    state.SetIterationTime(
        std::chrono::duration<double>(Clock::now() - start).count());
  }
  state.SetItemsProcessed(state.iterations());
  lat.report(state);
  watchdog.request_stop();
  watchdog.join();
  partner.stop();
}

void BM_RedisEcho(benchmark::State& state) {
  if (!g_redis_started) {
    g_redis.start();
    g_redis_started = true;
  }
  RedisConnection a = RedisConnect(g_redis.port());
  if (a == nullptr) {
    state.SkipWithError("cannot connect to redis-server");
    return;
  }
  const std::string q1 = UniqueName("q1"), q2 = UniqueName("q2");
  RunRoundTrips(state, {"redis", std::to_string(g_redis.port()), q1, q2}, [&] {
    RedisPush(a.get(), q1, Payload());
    if (RedisBlockingPop(a.get(), q2).size() != kPayloadBytes) {
      Die("redis: the echo changed the payload");
    }
  });
}

// A stream joined to the relay room `room`, on a connection of its own.
struct RelayStream {
  std::unique_ptr<Relay::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<Frame, Frame>> stream;

  RelayStream(const std::string& address, const std::string& room) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = grpc::CreateCustomChannel(
        address, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                   std::chrono::seconds(5))) {
      throw std::runtime_error("cannot reach the relay at " + address);
    }
    stub = Relay::NewStub(channel);
    ctx.AddMetadata("room", room);
    stream = stub->Join(&ctx);
  }
  ~RelayStream() {
    stream->WritesDone();
    Frame f;
    while (stream->Read(&f)) {
    }
    stream->Finish();
  }
  void write(const Frame& f) {
    if (!stream->Write(f)) Die("relay: write failed");
  }
  void read(Frame* f) {
    if (!stream->Read(f)) Die("relay: the stream ended");
  }
};

// The relay server's address, starting it for the first benchmark that
// needs it.
std::string RelayAddress() {
  if (!g_relay_started) {
    g_relay.start(g_self);
    g_relay_started = true;
  }
  return g_relay.address();
}

void BM_RelayPingPong(benchmark::State& state) {
  const std::string room = UniqueName("room");
  // What one side writes goes to the other: a to the partner and back.
  RelayStream a(RelayAddress(), room);
  Frame ping;
  ping.set_payload(Payload());
  RunRoundTrips(state, {"relay", RelayAddress(), room}, [&] {
    Frame back;
    a.write(ping);
    a.read(&back);
    if (back.payload().size() != kPayloadBytes) {
      Die("relay: the payload changed");
    }
  });
}

// One-way 64 KiB values A -> relay -> B: the same two gRPC hops a value
// takes through the broker (producer -> broker -> consumer), with no channel
// in between, no acknowledgements and no flow control beyond gRPC's own.
// The floor for dchan's "bandwidth, 64 KiB values" row.
constexpr std::size_t kBandwidthBytes = 64 << 10;
constexpr int64_t kBandwidthBatch = 1024;

void BM_RelayBandwidth(benchmark::State& state) {
  const std::string room = UniqueName("room");
  RelayStream a(RelayAddress(), room);
  RelayStream b(RelayAddress(), room);
  Frame value;
  value.set_payload(std::string(kBandwidthBytes, 'x'));
  while (state.KeepRunningBatch(kBandwidthBatch)) {
    const int64_t n = kBandwidthBatch;
    const dchan::bench::BatchTimes t =
        dchan::bench::RunBatch({[&b, n] {
                                 Frame f;
                                 for (int64_t i = 0; i < n; ++i) {
                                   b.read(&f);
                                   if (f.payload().size() != kBandwidthBytes) {
                                     Die("relay: the payload changed");
                                   }
                                 }
                               }},
                               [&a, &value, n] {
                                 for (int64_t i = 0; i < n; ++i) a.write(value);
                               });
    state.SetIterationTime(t.all);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(kBandwidthBytes));
}

// B's side of a round-trip row, in a process of its own (this binary with
// kPartnerFlag): argv "redis" PORT Q1 Q2 (BRPOP Q1, LPUSH it to Q2) or
// "relay" ADDRESS ROOM (read, write back). Prints "ready" once connected,
// then serves until it is killed.
int PartnerMain(int argc, char** argv) {
  std::thread([] {}).join();  // real atomics (see main)
  const std::string role = argc > 2 ? argv[2] : "";
  auto ready = [] {
    std::printf("ready\n");
    std::fflush(stdout);
  };
  if (role == "redis" && argc == 6) {
    RedisConnection b = RedisConnect(std::atoi(argv[3]));
    if (b == nullptr) Die("partner: cannot connect to redis-server");
    ready();
    for (;;) RedisPush(b.get(), argv[5], RedisBlockingPop(b.get(), argv[4]));
  }
  if (role == "relay" && argc == 5) {
    RelayStream b(argv[3], argv[4]);
    ready();
    Frame f;
    for (;;) {
      b.read(&f);
      b.write(f);
    }
  }
  Die("partner: bad arguments");
}

void Register(const char* name, void (*fn)(benchmark::State&)) {
  benchmark::RegisterBenchmark(name, fn)->UseManualTime()->Unit(
      benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == kRelayServerFlag) {
    return RelayServerMain();
  }
  if (argc >= 2 && std::string(argv[1]) == kPartnerFlag) {
    return PartnerMain(argc, argv);
  }
  g_self = "/proc/self/exe";
  {
    char buf[4096];
    const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) g_self.assign(buf, static_cast<std::size_t>(n));
  }
  // glibc uses real atomics only once a second thread has existed.
  std::thread([] {}).join();
  signal(SIGPIPE, SIG_IGN);

  Register("redis_echo", BM_RedisEcho);
  Register("relay/grpc", BM_RelayPingPong);
  Register("relay_bandwidth/grpc", BM_RelayBandwidth);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  int rc = 0;
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "baseline_bench: %s\n", e.what());
    rc = 1;
  }
  benchmark::Shutdown();
  g_redis.stop();
  g_relay.stop();
  return rc;
}
