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
//   relay_chan/grpc  the same two streams in an unbuffered channel's
//                  protocol (JoinChan; bench/relay.proto ChanFrame): A's
//                  send is a SEND and its ACK, its receive a RECV and its
//                  VALUE, and B's likewise: the eight messages per round
//                  trip that dchan's ping-pong moves for Go's semantics,
//                  with nothing of dchan's (its floor on gRPC).
//   In all three, A is this process and B a partner process (this binary
//   re-executed with --partner), as in remote_bench's pingpong/remote: the
//   issue's hand-off is "between two processes".
//   relay_bandwidth/grpc
//                  64 KiB values one way, A -> relay server -> B (one
//                  iteration per value, batches of 1,024), B a partner
//                  process as dchan's consumer is: the floor for dchan's
//                  64 KiB bandwidth through the broker. Timed from A's
//                  first write to B's last read (CLOCK_MONOTONIC in both).
//   relay_bandwidth_one_process/grpc  (diagnostic) the same with B a
//                  thread of this process: how it ran until session 22.
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
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
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
using dchan::bench::ChanFrame;
using dchan::bench::ChildProcess;
using dchan::bench::ExitIfItDies;
using dchan::bench::Frame;
using dchan::bench::FreeLoopbackPort;
using dchan::bench::Latencies;
using dchan::bench::NowNs;
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

// A stream of a room: it takes a side when it joins, hands every message it
// reads to the room's protocol (under the room's lock), and writes what the
// protocol queues for it, one write in flight. `RoomT` has `mu`,
// `sides[2]`, `join_locked(side)` (the side's reactor is set) and
// `on_read_locked(side, Msg&&)`.
template <class Msg, class RoomT>
class SideReactor final : public grpc::ServerBidiReactor<Msg, Msg> {
 public:
  SideReactor(std::shared_ptr<RoomT> room, std::function<void()> on_done)
      : room_(std::move(room)), on_done_(std::move(on_done)) {
    std::lock_guard<std::mutex> lock(room_->mu);
    side_ = room_->sides[0] == nullptr ? 0 : 1;
    room_->sides[side_] = this;
    room_->join_locked(side_);
    this->StartRead(&in_);
  }

  // Queues `m` to be written to this side. Requires the room's lock.
  void queue_locked(Msg m) {
    if (finished_) return;
    out_.push_back(std::move(m));
    if (!writing_) {
      writing_ = true;
      this->StartWrite(&out_.front());
    }
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(room_->mu);
    if (!ok) {
      reads_done_ = true;
      maybe_finish_locked();
      return;
    }
    room_->on_read_locked(side_, std::move(in_));
    in_.Clear();
    this->StartRead(&in_);
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
      this->StartWrite(&out_.front());
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
  void maybe_finish_locked() {
    if (reads_done_ && !writing_ && !finished_) {
      finished_ = true;
      this->Finish(grpc::Status::OK);
    }
  }

  const std::shared_ptr<RoomT> room_;
  const std::function<void()> on_done_;
  int side_ = 0;
  Msg in_;
  // out_.front() is being written (a deque: StartWrite's message must stay
  // put until OnWriteDone).
  std::deque<Msg> out_;
  bool writing_ = false;
  bool reads_done_ = false;
  bool finished_ = false;
};

// Join's room: every message read from one side is written to the other;
// messages for a side that has not joined yet wait in `held`.
struct RelayRoom {
  using Side = SideReactor<Frame, RelayRoom>;
  std::mutex mu;
  Side* sides[2] = {nullptr, nullptr};
  std::deque<Frame> held[2];  // for side i, from the other side

  void join_locked(int side) {
    while (!held[side].empty()) {
      sides[side]->queue_locked(std::move(held[side].front()));
      held[side].pop_front();
    }
  }
  void on_read_locked(int side, Frame&& f) {
    if (Side* peer = sides[1 - side]) {
      peer->queue_locked(std::move(f));
    } else {
      held[1 - side].push_back(std::move(f));
    }
  }
};

// JoinChan's room: an unbuffered channel each way (see ChanFrame).
struct ChanRoom {
  using Side = SideReactor<ChanFrame, ChanRoom>;
  std::mutex mu;
  Side* sides[2] = {nullptr, nullptr};
  std::optional<std::string> sending[2];  // side i's SEND, not yet received
  bool receiving[2] = {false, false};     // side i's RECV outstanding

  void join_locked(int) {}
  void on_read_locked(int side, ChanFrame&& f) {
    const int other = 1 - side;
    if (f.kind() == ChanFrame::SEND && !sending[side].has_value()) {
      if (receiving[other] && sides[other] != nullptr) {
        receiving[other] = false;
        deliver_locked(std::move(*f.mutable_payload()), other, side);
      } else {
        sending[side] = std::move(*f.mutable_payload());
      }
    } else if (f.kind() == ChanFrame::RECV && !receiving[side]) {
      if (sending[other].has_value() && sides[other] != nullptr) {
        std::string v = std::move(*sending[other]);
        sending[other].reset();
        deliver_locked(std::move(v), side, other);
      } else {
        receiving[side] = true;
      }
    } else {
      Die("relay: a ChanFrame out of protocol");
    }
  }

 private:
  // The value to the receiver first, then the sender's ACK.
  void deliver_locked(std::string v, int receiver, int sender) {
    ChanFrame value;
    value.set_kind(ChanFrame::VALUE);
    value.set_payload(std::move(v));
    sides[receiver]->queue_locked(std::move(value));
    ChanFrame ack;
    ack.set_kind(ChanFrame::ACK);
    sides[sender]->queue_locked(std::move(ack));
  }
};

// Rooms by name (client metadata "room"), each forgotten once both of its
// streams are done.
template <class RoomT>
class Rooms {
 public:
  using Side = typename RoomT::Side;

  Side* join(grpc::CallbackServerContext* ctx) {
    const auto& md = ctx->client_metadata();
    const auto it = md.find("room");
    const std::string name =
        it == md.end() ? std::string()
                       : std::string(it->second.data(), it->second.size());
    std::shared_ptr<RoomT> room;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::shared_ptr<RoomT>& r = rooms_[name];
      if (r == nullptr) r = std::make_shared<RoomT>();
      room = r;
    }
    return new Side(room, [this, name, room] {
      std::lock_guard<std::mutex> lock(mu_);
      std::lock_guard<std::mutex> room_lock(room->mu);
      const auto r = rooms_.find(name);
      if (r != rooms_.end() && r->second == room && room->sides[0] == nullptr &&
          room->sides[1] == nullptr) {
        rooms_.erase(r);
      }
    });
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<RoomT>> rooms_;
};

class RelayService final : public Relay::CallbackService {
  grpc::ServerBidiReactor<Frame, Frame>* Join(
      grpc::CallbackServerContext* ctx) override {
    return relay_rooms_.join(ctx);
  }
  grpc::ServerBidiReactor<ChanFrame, ChanFrame>* JoinChan(
      grpc::CallbackServerContext* ctx) override {
    return chan_rooms_.join(ctx);
  }

  Rooms<RelayRoom> relay_rooms_;
  Rooms<ChanRoom> chan_rooms_;
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

// Starts `partner` (this binary with kPartnerFlag and `partner_args`, see
// PartnerMain; its stdin `in`) and waits for its "ready". False, with the
// benchmark skipped and the reason given, if it does not come.
bool StartPartner(benchmark::State& state, ChildProcess& partner,
                  const std::vector<std::string>& partner_args,
                  ChildProcess::Stdin in = ChildProcess::Stdin::kInherit) {
  std::vector<std::string> argv = {g_self, kPartnerFlag};
  argv.insert(argv.end(), partner_args.begin(), partner_args.end());
  try {
    partner.start(argv, in);
    if (partner.read_line() != "ready\n") {
      throw std::runtime_error("the partner process did not get ready");
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return false;
  }
  return true;
}

// Runs batches of round trips, `one()` being one, with B's side in a
// partner process started with `partner_args` (see PartnerMain).
template <class RoundTrip>
void RunRoundTrips(benchmark::State& state,
                   const std::vector<std::string>& partner_args,
                   RoundTrip one) {
  ChildProcess partner;
  if (!StartPartner(state, partner, partner_args)) return;
  // A round trip waits for the partner without a deadline: if it dies, the
  // program must end rather than hang.
  std::optional<ExitIfItDies> watchdog(std::in_place, partner, "baseline_bench",
                                       "the partner process exited");
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
  watchdog.reset();
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

// A stream joined to the relay room `room` (Msg = Frame: Join; ChanFrame:
// JoinChan), on a connection of its own.
template <class Msg>
struct RelayStream {
  std::unique_ptr<Relay::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<Msg, Msg>> stream;

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
    if constexpr (std::is_same_v<Msg, ChanFrame>) {
      stream = stub->JoinChan(&ctx);
    } else {
      stream = stub->Join(&ctx);
    }
  }
  ~RelayStream() {
    stream->WritesDone();
    Msg f;
    while (stream->Read(&f)) {
    }
    stream->Finish();
  }
  void write(const Msg& f) {
    if (!stream->Write(f)) Die("relay: write failed");
  }
  void read(Msg* f) {
    if (!stream->Read(f)) Die("relay: the stream ended");
  }
  // JoinChan's read of the next message, which must be of `kind`.
  void read(ChanFrame* f, ChanFrame::Kind kind) {
    read(f);
    if (f->kind() != kind) Die("relay: a ChanFrame out of protocol");
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
  RelayStream<Frame> a(RelayAddress(), room);
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

// The same round trip in an unbuffered channel's protocol (JoinChan): A
// sends ping (SEND, its ACK), then receives the echo (RECV, its VALUE); the
// partner receives and sends back. Eight messages per round trip, as
// dchan's ping-pong has, with nothing of dchan's: its floor on gRPC.
void BM_RelayChanPingPong(benchmark::State& state) {
  const std::string room = UniqueName("room");
  RelayStream<ChanFrame> a(RelayAddress(), room);
  ChanFrame send, recv;
  send.set_kind(ChanFrame::SEND);
  send.set_payload(Payload());
  recv.set_kind(ChanFrame::RECV);
  RunRoundTrips(state, {"relay_chan", RelayAddress(), room}, [&] {
    ChanFrame in;
    a.write(send);
    a.read(&in, ChanFrame::ACK);
    a.write(recv);
    a.read(&in, ChanFrame::VALUE);
    if (in.payload().size() != kPayloadBytes) {
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
  ChildProcess partner;
  if (!StartPartner(state, partner, {"relay_sink", RelayAddress(), room},
                    ChildProcess::Stdin::kPipe)) {
    return;
  }
  // Each batch waits for B without a deadline: if it dies, the program must
  // end rather than hang.
  std::optional<ExitIfItDies> watchdog(std::in_place, partner, "baseline_bench",
                                       "the partner process exited");
  RelayStream<Frame> a(RelayAddress(), room);
  Frame value;
  value.set_payload(std::string(kBandwidthBytes, 'x'));
  // Sends n values; the time from the first write to B's last read.
  auto send = [&](int64_t n) {
    partner.write_all(&n, sizeof n);
    const int64_t t0 = NowNs();
    for (int64_t i = 0; i < n; ++i) a.write(value);
    int64_t last = 0;
    partner.read_exact(&last, sizeof last);
    return std::chrono::nanoseconds(last - t0);
  };
  send(16);  // warm-up
  while (state.KeepRunningBatch(kBandwidthBatch)) {
    state.SetIterationTime(
        std::chrono::duration<double>(send(kBandwidthBatch)).count());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(kBandwidthBytes));
  watchdog.reset();
  partner.stop();
}

// BM_RelayBandwidth with B a thread of this process (diagnostic).
void BM_RelayBandwidthOneProcess(benchmark::State& state) {
  const std::string room = UniqueName("room");
  RelayStream<Frame> a(RelayAddress(), room);
  RelayStream<Frame> b(RelayAddress(), room);
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

// B's side of a relay or Redis row, in a process of its own (this binary
// with kPartnerFlag): argv "redis" PORT Q1 Q2 (BRPOP Q1, LPUSH it to Q2),
// "relay" ADDRESS ROOM (read, write back), "relay_chan" ADDRESS ROOM
// (RECV, then SEND what it got) or "relay_sink" ADDRESS ROOM (for each
// count n, 8 bytes on stdin: read n values, then write the steady clock in
// ns, 8 bytes, to stdout; ends at EOF). Prints "ready" once connected, then
// serves until it is killed (or, a sink, until its stdin ends).
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
    RelayStream<Frame> b(argv[3], argv[4]);
    ready();
    Frame f;
    for (;;) {
      b.read(&f);
      b.write(f);
    }
  }
  if (role == "relay_sink" && argc == 5) {
    RelayStream<Frame> b(argv[3], argv[4]);
    ready();
    Frame f;
    int64_t n = 0;
    while (read(STDIN_FILENO, &n, sizeof n) == static_cast<ssize_t>(sizeof n)) {
      for (int64_t i = 0; i < n; ++i) {
        b.read(&f);
        if (f.payload().size() != kBandwidthBytes) {
          Die("relay: the payload changed");
        }
      }
      const int64_t at = NowNs();
      if (write(STDOUT_FILENO, &at, sizeof at) !=
          static_cast<ssize_t>(sizeof at)) {
        Die("partner: stdout is gone");
      }
    }
    return 0;
  }
  if (role == "relay_chan" && argc == 5) {
    RelayStream<ChanFrame> b(argv[3], argv[4]);
    ready();
    ChanFrame recv, in;
    recv.set_kind(ChanFrame::RECV);
    for (;;) {
      b.write(recv);
      b.read(&in, ChanFrame::VALUE);
      in.set_kind(ChanFrame::SEND);
      b.write(in);
      b.read(&in, ChanFrame::ACK);
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
  Register("relay_chan/grpc", BM_RelayChanPingPong);
  Register("relay_bandwidth/grpc", BM_RelayBandwidth);
  Register("relay_bandwidth_one_process/grpc", BM_RelayBandwidthOneProcess);
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
