// bench/remote_bench.cc — broker-backed channels (dchan::Client talking to a
// dchan-broker process over loopback) next to raw gRPC streams doing the same
// work, measured in the same process and run. Every message carries a 100-byte
// payload.
//
// The program starts its own broker (`dchan-broker --listen=127.0.0.1:0`, the
// binary built next to it; override with DCHAN_BENCH_BROKER=PATH) and the
// gRPC server for the baselines (bench/echo.proto: callback API, loopback
// TCP) in a process of its own, as the broker is: this binary re-executed
// with --dchan_bench_echo_server. Both are stopped with SIGTERM when the
// program ends, and die with it if it is killed (PR_SET_PDEATHSIG). Both
// inherit this process's CPU affinity: under `taskset -c 0`, broker, clients
// and baseline share CPU 0.
//
// Workloads (one benchmark iteration = one round trip or one message):
//   pingpong/remote       two processes, a Client each: this process sends
//                         on the unbuffered broker channel ch1, a partner
//                         process (this binary, re-executed) receives it and
//                         sends it back on the unbuffered ch2.
//   pingpong/remote_one_process  (diagnostic) the same with both Clients in
//                         this process, the partner a thread: how it ran
//                         until 2026-11-29.
//   acked_send/remote     one Client sends on a buffered(1024) broker channel,
//                         each send() waiting for the broker's answer; a second
//                         Client drains it on another thread. Batches are
//                         smaller than the capacity and the consumer is joined
//                         between batches, so a send never waits for space:
//                         the timed op is one request and its ack. Time is the
//                         sender's alone.
//   acked_send_alone/remote  (diagnostic) the same with the consumer draining
//                         each batch only after it, untimed: the sender alone.
//   roundtrip/grpc        the baseline for both: one bidi stream, the client
//                         Writes a message, the server (its own process)
//                         echoes it, the client Reads it (sync client,
//                         callback server).
//   oneway/remote/S       S sender threads (1, 4, 16, 64) share one Client
//                         in this process, each send()ing on a
//                         buffered(1024) channel; a partner process (this
//                         binary, re-executed) with a Client of its own
//                         drains it with S receiver threads (a receiver
//                         thread has one recv() outstanding at a time, so one
//                         would cap the rate at one message per round trip;
//                         oneway/remote/16x1 shows that cap). Time from
//                         releasing the threads to the partner's report of
//                         the last message received (through a pipe).
//   oneway/remote_one_process/16  (diagnostic) oneway/remote/16 with the
//                         receivers' Client in this process: how the
//                         one-way rows ran until session 22.
//   lock_unlock/remote    one Client, one broker Mutex, nobody else: lock()
//                         (returns once the broker granted it) then
//                         unlock() (returns once queued): one round trip
//                         per op.
//   lock_unlock/remote_keep  the same with MutexOptions::keep: the client
//                         keeps the lock after unlock() and relocks it
//                         locally (a round trip per 4,096 ops, when its
//                         block of fencing tokens is used up).
//   lock_turns/remote, lock_turns/remote_keep  (diagnostic) what keeping
//                         costs the others: two Clients of this process
//                         take turns on one broker Mutex, A lock()+unlock(),
//                         then B; one op is both turns. With _keep A opens
//                         it with MutexOptions::keep: B's lock() then waits
//                         for the broker's word to reach A and A's release
//                         to come back, and A's next lock() asks the broker
//                         again.
//   lock_handoff/remote   hand-off between two processes: this process holds
//                         a broker Mutex, a partner process (this binary,
//                         re-executed, with a Client of its own) is queued on
//                         it (checked with the broker's Inspect service before
//                         timing); one op is from this process calling
//                         unlock() to lock() returning in the partner
//                         (CLOCK_MONOTONIC in both). The partner then reports
//                         the time and unlocks, and this process relocks,
//                         untimed.
//   stream/remote/W,B     streaming producer and consumer (issue 7), in two
//                         processes: one sender thread on a Client in this
//                         process send()s with a send window of W
//                         (RemoteChanOptions::send_window; 0: acked sends),
//                         a partner process (this binary, re-executed) with
//                         a Client of its own recv()s with batches of up to
//                         B (recv_batch), through a buffered(4096) channel.
//                         Time from the first send to the last message
//                         received (CLOCK_MONOTONIC in both).
//   stream/remote/256,256+ahead  the same with read-ahead on the receiver's
//                         handle (RemoteChanOptions::recv_ahead).
//   stream/remote_one_process/256,256, bandwidth/remote_one_process
//                         (diagnostic) the same with the consumer's Client a
//                         thread in this process: how the stream and
//                         bandwidth rows ran until session 22.
//   stream/grpc/batched   its app-batched baseline: one thread writes 100
//                         payloads per Write on one client-streaming call
//                         (bench/echo.proto SinkBatch); time to the ack.
//   bandwidth/remote, bandwidth/grpc  the same two with 64 KiB values
//                         (W=16, B=16; diagnostic rows
//                         bandwidth/remote/16,4 and /64,16 with W,B) and,
//                         raw, one 64 KiB Write each; bytes per second.
//   oneway/grpc/S         the baseline: S threads share one client-streaming
//                         call, one Write per message (serialised by a mutex,
//                         as gRPC allows one outstanding Write), the server
//                         reads them all and acks the count once the client
//                         half-closes. Time to the ack.
//   roundtrip/grpc_inprocess  (diagnostic) roundtrip/grpc with the server in
//                         this process, sharing its gRPC threads: what the
//                         baselines measured before 2026-11-27.
//
// Timing: batches of a fixed number of ops; partner threads are spawned per
// batch and released together once running (Google Benchmark manual time).
// The round-trip workloads also record every op's latency and report the
// batch-independent percentiles of the repetition as counters p50_us/p99_us.
//
// Run bench/run_remote.sh for the full comparison (5 repetitions, unpinned and
// pinned, ratio table). A tiny run (CI): --benchmark_min_time=0.001.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "batch.h"
#include "benchmark/benchmark.h"
#include "child_process.h"
#include "dchan/client.h"
#include "dchan/v1/inspect.grpc.pb.h"
#include "echo.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "latencies.h"

#ifndef DCHAN_BROKER_PATH
#error "DCHAN_BROKER_PATH (the dchan-broker binary) must be defined"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using dchan::bench::Ack;
using dchan::bench::ChildProcess;
using dchan::bench::Echo;
using dchan::bench::ExitIfItDies;
using dchan::bench::Latencies;
using dchan::bench::Msg;
using dchan::bench::MsgBatch;
using dchan::bench::NowNs;
using dchan::bench::UniqueName;

constexpr std::size_t kPayloadBytes = 100;
constexpr int64_t kRoundTripBatch = 256;
constexpr int64_t kOneWayBatch = 2048;
constexpr int64_t kHandoffBatch = 64;
constexpr std::size_t kBufferCap = 1024;
static_assert(kRoundTripBatch < static_cast<int64_t>(kBufferCap),
              "acked_send must never wait for buffer space");

const std::string& Payload() {
  static const std::string p(kPayloadBytes, 'x');
  return p;
}

// ---------------------------------------------------------------------------
// The broker, as a child process (it dies with the benchmark and inherits
// its CPU affinity), and its address.

ChildProcess g_broker;
std::string g_broker_address;

// ---------------------------------------------------------------------------
// The raw gRPC baseline server (callback API).

class PipeReactor final : public grpc::ServerBidiReactor<Msg, Msg> {
 public:
  PipeReactor() { StartRead(&msg_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    StartWrite(&msg_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    StartRead(&msg_);
  }
  void OnDone() override { delete this; }

 private:
  Msg msg_;
};

class SinkReactor final : public grpc::ServerReadReactor<Msg> {
 public:
  explicit SinkReactor(Ack* ack) : ack_(ack) { StartRead(&msg_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      ack_->set_count(count_);
      Finish(grpc::Status::OK);
      return;
    }
    ++count_;
    StartRead(&msg_);
  }
  void OnDone() override { delete this; }

 private:
  Ack* const ack_;
  Msg msg_;
  uint64_t count_ = 0;
};

class BatchSinkReactor final : public grpc::ServerReadReactor<MsgBatch> {
 public:
  explicit BatchSinkReactor(Ack* ack) : ack_(ack) { StartRead(&msg_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      ack_->set_count(count_);
      Finish(grpc::Status::OK);
      return;
    }
    count_ += static_cast<uint64_t>(msg_.payloads_size());
    StartRead(&msg_);
  }
  void OnDone() override { delete this; }

 private:
  Ack* const ack_;
  MsgBatch msg_;
  uint64_t count_ = 0;
};

class EchoService final : public Echo::CallbackService {
  grpc::ServerBidiReactor<Msg, Msg>* Pipe(
      grpc::CallbackServerContext*) override {
    return new PipeReactor();
  }
  grpc::ServerReadReactor<Msg>* Sink(grpc::CallbackServerContext*,
                                     Ack* ack) override {
    return new SinkReactor(ack);
  }
  grpc::ServerReadReactor<MsgBatch>* SinkBatch(grpc::CallbackServerContext*,
                                               Ack* ack) override {
    return new BatchSinkReactor(ack);
  }
};

struct EchoServer {
  EchoService service;
  std::unique_ptr<grpc::Server> server;
  std::string address;

  void start() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    if (server == nullptr || port == 0) {
      throw std::runtime_error("cannot start the gRPC echo server");
    }
    address = "127.0.0.1:" + std::to_string(port);
  }
  void stop() {
    if (server == nullptr) return;
    server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::seconds(2));
    server->Wait();
    server.reset();
  }
};

constexpr const char* kEchoServerFlag = "--dchan_bench_echo_server";

// The echo server's own process (this binary, re-executed with
// kEchoServerFlag): serves until SIGTERM.
int EchoServerMain() {
  EchoServer echo;
  return dchan::bench::ServeUntilSignalled(
      "remote_bench echo server",
      [&] {
        echo.start();
        return echo.address;
      },
      [&] { echo.stop(); });
}

// The baselines' server runs in a process of its own, as the broker does,
// so that a raw stream pays what a client-to-broker stream pays: two
// processes, each with its own gRPC threads. roundtrip/grpc_inprocess
// measures the same server inside this process.
ChildProcess g_echo_process;
std::string g_echo_address;

// A connection of its own, as each dchan::Client has.
std::unique_ptr<Echo::Stub> EchoStub(
    const std::string& address = g_echo_address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                 std::chrono::seconds(5))) {
    throw std::runtime_error("cannot reach the echo server");
  }
  return Echo::NewStub(channel);
}

// ---------------------------------------------------------------------------
// Harness.

using dchan::bench::BatchTimes;
using dchan::bench::RunBatch;

struct Batch {
  std::vector<std::function<void()>> workers;
  std::function<void()> driver;
  std::function<void()> after;
  bool time_driver_only = false;
};

// Drives `state` in batches of `batch` ops; `make_batch(n, b)` fills in the
// participants of one batch of n ops.
template <class MakeBatch>
void RunBatched(benchmark::State& state, int64_t batch, MakeBatch make_batch) {
  while (state.KeepRunningBatch(batch)) {
    Batch b;
    make_batch(batch, b);
    const BatchTimes t = RunBatch(b.workers, b.driver, b.after);
    state.SetIterationTime(b.time_driver_only ? t.driver : t.all);
  }
  state.SetItemsProcessed(state.iterations());
}

dchan::Client Connect() { return dchan::Client::connect(g_broker_address); }

// ---------------------------------------------------------------------------
// Workloads.

// The diagnostic one-process form: thread B and its Client in this process.
void BM_RemotePingPongOneProcess(benchmark::State& state) {
  dchan::Client a = Connect();
  dchan::Client b = Connect();
  const std::string n1 = UniqueName("ping"), n2 = UniqueName("pong");
  dchan::Chan<std::string> ping_a = a.chan<std::string>(n1);
  dchan::Chan<std::string> pong_a = a.chan<std::string>(n2);
  dchan::Chan<std::string> ping_b = b.chan<std::string>(n1);
  dchan::Chan<std::string> pong_b = b.chan<std::string>(n2);
  Latencies lat;
  RunBatched(state, kRoundTripBatch, [&](int64_t n, Batch& batch) {
    batch.workers.push_back([=]() mutable {
      for (int64_t i = 0; i <= n; ++i) pong_b.send(*ping_b.recv());
    });
    batch.driver = [&, n]() mutable {
      // One untimed warm-up round trip: B may not have reached its recv().
      ping_a.send(Payload());
      benchmark::DoNotOptimize(pong_a.recv());
      for (int64_t i = 0; i < n; ++i) {
        const Clock::time_point t0 = Clock::now();
        ping_a.send(Payload());
        benchmark::DoNotOptimize(pong_a.recv());
        lat.add(Clock::now() - t0);
      }
    };
  });
  lat.report(state);
}

// concurrent_consumer == false is a diagnostic: the consumer drains each
// batch only after it (untimed), so the broker and the client process serve
// the sender alone.
void BM_RemoteAckedSend(benchmark::State& state, bool concurrent_consumer) {
  dchan::Client producer = Connect();
  dchan::Client consumer = Connect();
  const std::string name = UniqueName("acked");
  dchan::Chan<std::string> tx = producer.chan<std::string>(name, kBufferCap);
  dchan::Chan<std::string> rx = consumer.chan<std::string>(name, kBufferCap);
  Latencies lat;
  int64_t undrained = 0;
  auto drain = [&] {
    for (; undrained > 0; --undrained) benchmark::DoNotOptimize(rx.recv());
  };
  RunBatched(state, kRoundTripBatch, [&](int64_t n, Batch& batch) {
    drain();  // the previous batch's, before this one's timing starts
    if (concurrent_consumer) {
      batch.workers.push_back([=]() mutable {
        for (int64_t i = 0; i < n; ++i) benchmark::DoNotOptimize(rx.recv());
      });
    } else {
      undrained = n;
    }
    batch.driver = [&, n]() mutable {
      for (int64_t i = 0; i < n; ++i) {
        const Clock::time_point t0 = Clock::now();
        tx.send(Payload());
        lat.add(Clock::now() - t0);
      }
    };
    batch.time_driver_only = true;
  });
  drain();
  lat.report(state);
}

void BM_GrpcRoundTrip(benchmark::State& state, const std::string& address) {
  std::unique_ptr<Echo::Stub> stub = EchoStub(address);
  grpc::ClientContext context;
  auto stream = stub->Pipe(&context);
  Msg out;
  out.set_payload(Payload());
  Msg in;
  auto round_trip = [&] {
    if (!stream->Write(out) || !stream->Read(&in)) {
      throw std::runtime_error("echo stream broke");
    }
  };
  round_trip();  // warm-up: sets the call up
  Latencies lat;
  RunBatched(state, kRoundTripBatch, [&](int64_t n, Batch& batch) {
    batch.driver = [&, n] {
      for (int64_t i = 0; i < n; ++i) {
        const Clock::time_point t0 = Clock::now();
        round_trip();
        lat.add(Clock::now() - t0);
      }
    };
  });
  stream->WritesDone();
  const grpc::Status st = stream->Finish();
  if (!st.ok()) state.SkipWithError(st.error_message().c_str());
  lat.report(state);
}

// The partner process, seen from the benchmark: this binary re-executed with
// kPartnerFlag and `args` (see PartnerMain), its stdin and stdout piped to
// this process. Its destructor closes the partner's stdin (the partner's
// loop ends there) and waits for it.
class Partner {
 public:
  explicit Partner(const std::vector<std::string>& args);

  // Asks a lock partner to lock.
  void request_lock() {
    const char cmd = 'L';
    process_.write_all(&cmd, 1);
  }

  // Asks a drain partner to receive `n` values.
  void request_values(int64_t n) { process_.write_all(&n, sizeof n); }

  // The steady clock (ns) the partner reported next: when a lock partner's
  // lock() returned, when a drain partner received its last value.
  int64_t reported_ns() {
    int64_t ns = 0;
    process_.read_exact(&ns, sizeof ns);
    return ns;
  }

  ChildProcess& process() { return process_; }

 private:
  ChildProcess process_;
};

// Splits n ops over k threads.
int64_t Share(int64_t n, int k, int i) { return n / k + (i < n % k ? 1 : 0); }

// The senders' Client in this process, the receivers' in a partner process
// (a drain partner with `receivers` threads). The batch ends when the
// partner reports its last receive through its stdout pipe (one pipe
// wake-up, tens of µs, inside the timed span of a batch of 2048 sends).
void BM_RemoteOneWay(benchmark::State& state, int senders, int receivers) {
  dchan::Client tx_client = Connect();
  const std::string name = UniqueName("oneway");
  dchan::Chan<std::string> tx = tx_client.chan<std::string>(name, kBufferCap);
  Partner partner({"drain", g_broker_address, name, std::to_string(kBufferCap),
                   "0", "0", std::to_string(kPayloadBytes),
                   std::to_string(receivers)});
  std::optional<ExitIfItDies> watchdog(std::in_place, partner.process(),
                                       "remote_bench",
                                       "the drain partner process exited");
  partner.request_values(receivers);  // warm-up: the partner opens
  for (int i = 0; i < receivers; ++i) tx.send(Payload());
  partner.reported_ns();
  RunBatched(state, kOneWayBatch, [&](int64_t n, Batch& batch) {
    partner.request_values(n);
    for (int s = 0; s < senders; ++s) {
      batch.workers.push_back([=]() mutable {
        for (int64_t i = Share(n, senders, s); i > 0; --i) tx.send(Payload());
      });
    }
    batch.after = [&] { partner.reported_ns(); };
  });
  watchdog.reset();
}

// BM_RemoteOneWay with the receivers' Client in this process (diagnostic).
void BM_RemoteOneWayOneProcess(benchmark::State& state, int senders,
                               int receivers) {
  dchan::Client tx_client = Connect();
  dchan::Client rx_client = Connect();
  const std::string name = UniqueName("oneway");
  dchan::Chan<std::string> tx = tx_client.chan<std::string>(name, kBufferCap);
  dchan::Chan<std::string> rx = rx_client.chan<std::string>(name, kBufferCap);
  RunBatched(state, kOneWayBatch, [&](int64_t n, Batch& batch) {
    for (int s = 0; s < senders; ++s) {
      batch.workers.push_back([=]() mutable {
        for (int64_t i = Share(n, senders, s); i > 0; --i) tx.send(Payload());
      });
    }
    for (int r = 0; r < receivers; ++r) {
      batch.workers.push_back([=]() mutable {
        for (int64_t i = Share(n, receivers, r); i > 0; --i) {
          benchmark::DoNotOptimize(rx.recv());
        }
      });
    }
  });
}

void BM_GrpcOneWay(benchmark::State& state, int senders) {
  std::unique_ptr<Echo::Stub> stub = EchoStub();
  Msg msg;
  msg.set_payload(Payload());
  // One client-streaming call per batch. Members are destroyed bottom-up:
  // the writer before the context it uses.
  struct SinkCall {
    grpc::ClientContext context;
    Ack ack;
    std::mutex mu;  // one outstanding Write at a time
    std::unique_ptr<grpc::ClientWriter<Msg>> writer;
  };
  RunBatched(state, kOneWayBatch, [&](int64_t n, Batch& batch) {
    auto call = std::make_shared<SinkCall>();
    call->writer = stub->Sink(&call->context, &call->ack);
    for (int s = 0; s < senders; ++s) {
      batch.workers.push_back([=, &msg] {
        for (int64_t i = Share(n, senders, s); i > 0; --i) {
          std::lock_guard<std::mutex> lock(call->mu);
          call->writer->Write(msg);
        }
      });
    }
    batch.after = [=, &state] {
      call->writer->WritesDone();
      const grpc::Status st = call->writer->Finish();
      if (!st.ok() || call->ack.count() != static_cast<uint64_t>(n)) {
        state.SkipWithError("the sink did not ack every message");
      }
    };
  });
}

// ---------------------------------------------------------------------------
// Streaming throughput and bandwidth (issue 7): one producer, one consumer.

benchmark::internal::Benchmark* Register(
    const std::string& name, std::function<void(benchmark::State&)> fn);

constexpr std::size_t kStreamCap = 4096;
constexpr int64_t kStreamBatch = 1 << 16;
constexpr int64_t kBandwidthBatch = 1024;
constexpr std::size_t kBandwidthBytes = 64 << 10;
constexpr int kRawBatch = 100;  // payloads per Write, app-batched baseline

// One sender thread on a Client in this process, one receiver on another
// Client in a partner process (the production shape: two Clients in one
// process share gRPC's process-wide poller, see BENCHMARKS.md "Session
// 22"), `bytes` per value, through a buffered channel; the sender's handle
// pipelines with `window` (0: acked sends), the receiver's fetches up to
// `batch` values (reading ahead if `ahead`).
void BM_RemoteStream(benchmark::State& state, std::size_t window,
                     std::size_t batch, std::size_t bytes, int64_t per_batch,
                     bool ahead = false) {
  dchan::Client tx_client = Connect();
  const std::string name = UniqueName("stream");
  dchan::Chan<std::string> tx =
      tx_client.chan<std::string>(name, kStreamCap, {.send_window = window});
  Partner partner({"drain", g_broker_address, name, std::to_string(kStreamCap),
                   std::to_string(batch), ahead ? "1" : "0",
                   std::to_string(bytes), "1"});
  // The partner's receives wait without a deadline: if it dies, the program
  // must end rather than hang.
  std::optional<ExitIfItDies> watchdog(std::in_place, partner.process(),
                                       "remote_bench",
                                       "the drain partner process exited");
  const std::string payload(bytes, 'x');
  // Sends `n` values; the time from the first send to the partner's last
  // receive. The sends are all answered (flush) before it returns.
  auto send = [&](int64_t n) {
    partner.request_values(n);
    const int64_t t0 = NowNs();
    for (int64_t i = 0; i < n; ++i) tx.send(payload);
    dchan::flush(tx);  // every send answered: none failed
    return std::chrono::nanoseconds(partner.reported_ns() - t0);
  };
  send(std::min<int64_t>(per_batch, 1024));  // warm-up: the partner opens
  while (state.KeepRunningBatch(per_batch)) {
    state.SetIterationTime(
        std::chrono::duration<double>(send(per_batch)).count());
  }
  watchdog.reset();
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

// BM_RemoteStream with the receiver a thread of this process, on a second
// Client (diagnostic).
void BM_RemoteStreamOneProcess(benchmark::State& state, std::size_t window,
                               std::size_t batch, std::size_t bytes,
                               int64_t per_batch) {
  dchan::Client tx_client = Connect();
  dchan::Client rx_client = Connect();
  const std::string name = UniqueName("stream");
  dchan::Chan<std::string> tx =
      tx_client.chan<std::string>(name, kStreamCap, {.send_window = window});
  dchan::Chan<std::string> rx =
      rx_client.chan<std::string>(name, kStreamCap, {.recv_batch = batch});
  const std::string payload(bytes, 'x');
  RunBatched(state, per_batch, [&](int64_t n, Batch& b) {
    b.workers.push_back([=, &payload]() mutable {
      for (int64_t i = 0; i < n; ++i) tx.send(payload);
      dchan::flush(tx);  // every send answered: none failed
    });
    b.workers.push_back([=]() mutable {
      for (int64_t i = 0; i < n; ++i) benchmark::DoNotOptimize(rx.recv());
    });
  });
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

// The raw baseline: one thread, one client-streaming call per batch, `per`
// payloads of `bytes` per Write (per == 1: Sink, one Msg per Write).
void BM_GrpcStream(benchmark::State& state, int per, std::size_t bytes,
                   int64_t per_batch) {
  std::unique_ptr<Echo::Stub> stub = EchoStub();
  const std::string payload(bytes, 'x');
  Msg one;
  one.set_payload(payload);
  MsgBatch many;
  for (int i = 0; i < per; ++i) many.add_payloads(payload);
  RunBatched(state, per_batch, [&](int64_t n, Batch& b) {
    b.driver = [&, n] {
      grpc::ClientContext context;
      Ack ack;
      bool ok = true;
      if (per == 1) {
        auto w = stub->Sink(&context, &ack);
        for (int64_t i = 0; i < n && ok; ++i) ok = w->Write(one);
        ok = w->WritesDone() && ok;
        ok = w->Finish().ok() && ok;
      } else {
        auto w = stub->SinkBatch(&context, &ack);
        for (int64_t i = 0; i < n && ok; i += per) {
          if (n - i < per) {
            MsgBatch tail;
            for (int64_t j = i; j < n; ++j) tail.add_payloads(payload);
            ok = w->Write(tail);
          } else {
            ok = w->Write(many);
          }
        }
        ok = w->WritesDone() && ok;
        ok = w->Finish().ok() && ok;
      }
      if (!ok || ack.count() != static_cast<uint64_t>(n)) {
        state.SkipWithError("the sink did not ack every message");
      }
    };
  });
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

void RegisterStreamBenchmarks() {
  // Unbatched (acked sends, one value per receive), then opt-in batching.
  Register("stream/remote/0,1", [](benchmark::State& st) {
    BM_RemoteStream(st, 0, 1, kPayloadBytes, kOneWayBatch);
  });
  for (auto [w, b] :
       {std::pair<int, int>{256, 256}, {1024, 1024}, {4096, 4096}}) {
    Register("stream/remote/" + std::to_string(w) + "," + std::to_string(b),
             [w, b](benchmark::State& st) {
               BM_RemoteStream(st, w, b, kPayloadBytes, kStreamBatch);
             });
  }
  // The same with read-ahead on the receiver's handle (recv_ahead).
  Register("stream/remote/256,256+ahead", [](benchmark::State& st) {
    BM_RemoteStream(st, 256, 256, kPayloadBytes, kStreamBatch, true);
  });
  Register("stream/remote_one_process/256,256", [](benchmark::State& st) {
    BM_RemoteStreamOneProcess(st, 256, 256, kPayloadBytes, kStreamBatch);
  });
  Register("stream/grpc/per_write", [](benchmark::State& st) {
    BM_GrpcStream(st, 1, kPayloadBytes, kOneWayBatch * 8);
  });
  Register("stream/grpc/batched", [](benchmark::State& st) {
    BM_GrpcStream(st, kRawBatch, kPayloadBytes, kStreamBatch);
  });
  // 64 KiB values: a window of 16 and batches of 16, 1 MiB each way.
  // Diagnostic rows: batches of 4 (the row until session 23, 15-18%
  // slower unpinned with the consumer in its own process), and window 64.
  Register("bandwidth/remote", [](benchmark::State& st) {
    BM_RemoteStream(st, 16, 16, kBandwidthBytes, kBandwidthBatch);
  });
  Register("bandwidth/remote/16,4", [](benchmark::State& st) {
    BM_RemoteStream(st, 16, 4, kBandwidthBytes, kBandwidthBatch);
  });
  Register("bandwidth/remote/64,16", [](benchmark::State& st) {
    BM_RemoteStream(st, 64, 16, kBandwidthBytes, kBandwidthBatch);
  });
  Register("bandwidth/remote_one_process", [](benchmark::State& st) {
    BM_RemoteStreamOneProcess(st, 16, 16, kBandwidthBytes, kBandwidthBatch);
  });
  Register("bandwidth/grpc", [](benchmark::State& st) {
    BM_GrpcStream(st, 1, kBandwidthBytes, kBandwidthBatch);
  });
}

// ---------------------------------------------------------------------------
// Locks.

void BM_RemoteLockUnlock(benchmark::State& state, bool keep) {
  dchan::Client client = Connect();
  dchan::Mutex m = client.mutex(UniqueName("lock"), {.keep = keep});
  m.lock();  // warm-up: opens the lock on the broker
  m.unlock();
  Latencies lat;
  RunBatched(state, kRoundTripBatch, [&](int64_t n, Batch& batch) {
    batch.driver = [&, n] {
      for (int64_t i = 0; i < n; ++i) {
        const Clock::time_point t0 = Clock::now();
        m.lock();
        m.unlock();
        lat.add(Clock::now() - t0);
      }
    };
  });
  lat.report(state);
}

// Two Clients take turns on one lock (see lock_turns in the file comment).
void BM_RemoteLockTurns(benchmark::State& state, bool keep) {
  dchan::Client a = Connect();
  dchan::Client b = Connect();
  const std::string name = UniqueName("lock");
  dchan::Mutex ma = a.mutex(name, {.keep = keep});
  dchan::Mutex mb = b.mutex(name);
  Latencies lat;
  RunBatched(state, kRoundTripBatch, [&](int64_t n, Batch& batch) {
    batch.driver = [&, n] {
      for (int64_t i = 0; i < n; ++i) {
        const Clock::time_point t0 = Clock::now();
        ma.lock();
        ma.unlock();
        mb.lock();
        mb.unlock();
        lat.add(Clock::now() - t0);
      }
    };
  });
  lat.report(state);
}

constexpr const char* kPartnerFlag = "--dchan_bench_partner";

// The partner's side of lock_handoff (runs in the re-executed binary): for
// each 'L' byte on stdin, lock() (queued behind the benchmark), write the
// steady clock at the grant (8 bytes) to stdout, unlock(). Ends at EOF.
int LockPartnerMain(const std::string& address, const std::string& lock_name) {
  dchan::Client client = dchan::Client::connect(address);
  dchan::Mutex m = client.mutex(lock_name);
  char cmd = 0;
  while (read(STDIN_FILENO, &cmd, 1) == 1 && cmd == 'L') {
    m.lock();
    const int64_t granted = NowNs();
    if (write(STDOUT_FILENO, &granted, sizeof granted) !=
        static_cast<ssize_t>(sizeof granted)) {
      return 1;
    }
    m.unlock();
  }
  return 0;
}

// The partner's side of oneway/remote, stream/remote and bandwidth/remote:
// receives values of `bytes` on broker channel `name` (buffered, capacity
// `cap`) in batches of up to `batch` (0: one value per receive; with
// read-ahead if `ahead` is "1"), on
// `threads` receiver threads started once (not inside a timed batch); for
// each count n (8 bytes) on stdin, they receive n values between them, and
// the steady clock (ns) at the last one's arrival goes to stdout. Ends at
// EOF.
int DrainPartnerMain(const std::string& address, const std::string& name,
                     const std::string& cap, const std::string& batch,
                     const std::string& ahead, const std::string& bytes,
                     const std::string& threads) {
  dchan::Client client = dchan::Client::connect(address);
  dchan::Chan<std::string> rx = client.chan<std::string>(
      name, std::stoul(cap),
      {.recv_batch = std::stoul(batch), .recv_ahead = ahead == "1"});
  const std::size_t size = std::stoul(bytes);
  const int k = std::stoi(threads);
  // Round r: each receiver takes its share of n; the last to finish has
  // left the latest arrival in last_ns.
  std::mutex mu;
  std::condition_variable cv;
  int64_t round = 0, n = 0, last_ns = 0;
  int finished = 0;
  bool bad = false, stop = false;
  std::vector<std::thread> receivers;
  for (int r = 0; r < k; ++r) {
    receivers.emplace_back([&, r] {
      for (int64_t seen = 0;; ++seen) {
        int64_t share;
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return round > seen || stop; });
          if (stop) return;
          share = Share(n, k, r);
        }
        bool ok = true;
        for (int64_t i = share; i > 0; --i) {
          std::optional<std::string> v = rx.recv();
          ok = ok && v.has_value() && v->size() == size;
        }
        const int64_t at = NowNs();
        std::lock_guard<std::mutex> lock(mu);
        bad = bad || !ok;
        last_ns = std::max(last_ns, at);
        if (++finished == k) cv.notify_all();
      }
    });
  }
  int rc = 0;
  int64_t count = 0;
  while (rc == 0 && read(STDIN_FILENO, &count, sizeof count) ==
                        static_cast<ssize_t>(sizeof count)) {
    int64_t at;
    {
      std::unique_lock<std::mutex> lock(mu);
      n = count;
      finished = 0;
      last_ns = 0;
      ++round;
      cv.notify_all();
      cv.wait(lock, [&] { return finished == k; });
      if (bad) rc = 1;
      at = last_ns;
    }
    if (rc == 0 && write(STDOUT_FILENO, &at, sizeof at) !=
                       static_cast<ssize_t>(sizeof at)) {
      rc = 1;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_all();
  for (std::thread& t : receivers) t.join();
  return rc;
}

// The partner's side of pingpong/remote: sends every value received on
// `ping` back on `pong` until `ping` is closed.
int EchoPartnerMain(const std::string& address, const std::string& ping_name,
                    const std::string& pong_name) {
  dchan::Client client = dchan::Client::connect(address);
  dchan::Chan<std::string> ping = client.chan<std::string>(ping_name);
  dchan::Chan<std::string> pong = client.chan<std::string>(pong_name);
  while (std::optional<std::string> v = ping.recv()) pong.send(*std::move(v));
  return 0;
}

// argv: kPartnerFlag, then "lock" ADDRESS LOCK, "echo" ADDRESS PING PONG or
// "drain" ADDRESS CHAN CAP BATCH AHEAD BYTES THREADS.
int PartnerMain(int argc, char** argv) {
  std::thread([] {}).join();  // real atomics (see main)
  const std::string role = argc > 2 ? argv[2] : "";
  if (role == "lock" && argc == 5) return LockPartnerMain(argv[3], argv[4]);
  if (role == "echo" && argc == 6) {
    return EchoPartnerMain(argv[3], argv[4], argv[5]);
  }
  if (role == "drain" && argc == 10) {
    return DrainPartnerMain(argv[3], argv[4], argv[5], argv[6], argv[7],
                            argv[8], argv[9]);
  }
  std::fprintf(stderr, "remote_bench partner: bad arguments\n");
  return 2;
}

Partner::Partner(const std::vector<std::string>& args) {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) throw std::runtime_error("readlink /proc/self/exe failed");
  std::vector<std::string> argv = {std::string(exe, len), kPartnerFlag};
  argv.insert(argv.end(), args.begin(), args.end());
  process_.start(argv, ChildProcess::Stdin::kPipe);
}

// B is a partner process (EchoPartnerMain) with a Client of its own, as the
// issue asks ("between two processes"): two Clients in one process share
// gRPC's process-wide poller, whose thread reads for both and hands each
// answer over to the other thread (see BENCHMARKS.md, "Session 18").
void BM_RemotePingPong(benchmark::State& state) {
  dchan::Client a = Connect();
  const std::string n1 = UniqueName("ping"), n2 = UniqueName("pong");
  dchan::Chan<std::string> ping = a.chan<std::string>(n1);
  dchan::Chan<std::string> pong = a.chan<std::string>(n2);
  Partner partner({"echo", g_broker_address, n1, n2});
  // The round trips wait without a deadline: if the partner dies, the
  // program must end rather than hang.
  std::optional<ExitIfItDies> watchdog(std::in_place, partner.process(),
                                       "remote_bench",
                                       "the echo partner process exited");
  // Untimed warm-up: the partner connects and opens both channels.
  ping.send(Payload());
  benchmark::DoNotOptimize(pong.recv());
  Latencies lat;
  RunBatched(state, kRoundTripBatch, [&](int64_t n, Batch& batch) {
    batch.driver = [&, n] {
      for (int64_t i = 0; i < n; ++i) {
        const Clock::time_point t0 = Clock::now();
        ping.send(Payload());
        benchmark::DoNotOptimize(pong.recv());
        lat.add(Clock::now() - t0);
      }
    };
  });
  watchdog.reset();
  ping.close();  // the partner's loop ends
  lat.report(state);
}

// Polls the broker's Inspect service until lock `name` has a queued locker.
void AwaitQueuedLocker(dchan::v1::Inspect::Stub& inspect,
                       const std::string& name) {
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(20);
  for (;;) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(5));
    dchan::v1::ListObjectsResponse resp;
    if (inspect.ListObjects(&ctx, dchan::v1::ListObjectsRequest(), &resp)
            .ok()) {
      for (const dchan::v1::ObjectInfo& o : resp.objects()) {
        if (o.name() == name && o.queued_lockers() > 0) return;
      }
    }
    if (Clock::now() > deadline) {
      throw std::runtime_error("the partner never queued on the lock");
    }
  }
}

void BM_RemoteLockHandoff(benchmark::State& state) {
  const std::string name = UniqueName("handoff");
  dchan::Client client = Connect();
  dchan::Mutex m = client.mutex(name);
  auto inspect = dchan::v1::Inspect::NewStub(grpc::CreateChannel(
      g_broker_address, grpc::InsecureChannelCredentials()));
  Partner partner({"lock", g_broker_address, name});
  auto one_handoff = [&]() -> Clock::duration {
    m.lock();
    partner.request_lock();
    AwaitQueuedLocker(*inspect, name);
    const int64_t t0 = NowNs();
    m.unlock();
    return std::chrono::nanoseconds(partner.reported_ns() - t0);
  };
  one_handoff();  // warm-up: the partner connects and opens the lock
  Latencies lat;
  while (state.KeepRunningBatch(kHandoffBatch)) {
    Clock::duration total{};
    for (int64_t i = 0; i < kHandoffBatch; ++i) {
      const Clock::duration d = one_handoff();
      lat.add(d);
      total += d;
    }
    state.SetIterationTime(std::chrono::duration<double>(total).count());
  }
  state.SetItemsProcessed(state.iterations());
  lat.report(state);
}

benchmark::internal::Benchmark* Register(
    const std::string& name, std::function<void(benchmark::State&)> fn) {
  return benchmark::RegisterBenchmark(name.c_str(), std::move(fn))
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == kEchoServerFlag) {
    return EchoServerMain();
  }
  if (argc >= 2 && std::string(argv[1]) == kPartnerFlag) {
    try {
      return PartnerMain(argc, argv);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "remote_bench partner: %s\n", e.what());
      return 1;
    }
  }
  // glibc uses real atomics only once a second thread has existed.
  std::thread([] {}).join();
  signal(SIGPIPE, SIG_IGN);

  Register("pingpong/remote", BM_RemotePingPong);
  Register("acked_send/remote",
           [](benchmark::State& st) { BM_RemoteAckedSend(st, true); });
  Register("roundtrip/grpc",
           [](benchmark::State& st) { BM_GrpcRoundTrip(st, g_echo_address); });
  for (int s : {1, 4, 16, 64}) {
    Register("oneway/remote/" + std::to_string(s),
             [s](benchmark::State& st) { BM_RemoteOneWay(st, s, s); });
    Register("oneway/grpc/" + std::to_string(s),
             [s](benchmark::State& st) { BM_GrpcOneWay(st, s); });
  }
  Register("lock_unlock/remote",
           [](benchmark::State& st) { BM_RemoteLockUnlock(st, false); });
  Register("lock_unlock/remote_keep",
           [](benchmark::State& st) { BM_RemoteLockUnlock(st, true); });
  Register("lock_turns/remote",
           [](benchmark::State& st) { BM_RemoteLockTurns(st, false); });
  Register("lock_turns/remote_keep",
           [](benchmark::State& st) { BM_RemoteLockTurns(st, true); });
  Register("lock_handoff/remote", BM_RemoteLockHandoff);
  RegisterStreamBenchmarks();
  // Diagnostics.
  Register("acked_send_alone/remote",
           [](benchmark::State& st) { BM_RemoteAckedSend(st, false); });
  Register("pingpong/remote_one_process", BM_RemotePingPongOneProcess);
  Register("oneway/remote/16x1",
           [](benchmark::State& st) { BM_RemoteOneWay(st, 16, 1); });
  Register("oneway/remote_one_process/16",
           [](benchmark::State& st) { BM_RemoteOneWayOneProcess(st, 16, 16); });
  Register("roundtrip/grpc_inprocess", [](benchmark::State& st) {
    // Started for this row alone: a callback server's threads poll the whole
    // process's sockets (gRPC's epoll1 poller is process-wide), so left
    // running they would read the other rows' client streams, handing every
    // answer over to the waiting thread (see BENCHMARKS.md, "Session 18").
    EchoServer echo;
    echo.start();
    BM_GrpcRoundTrip(st, echo.address);
    echo.stop();
  });

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  const char* broker_path = std::getenv("DCHAN_BENCH_BROKER");
  int rc = 0;
  try {
    // The broker first, before this process has gRPC's threads (fork).
    g_broker.start({broker_path != nullptr ? broker_path : DCHAN_BROKER_PATH,
                    "--listen=127.0.0.1:0"});
    g_broker_address = dchan::bench::ReadListenAddress(g_broker);
    g_echo_process.start({"/proc/self/exe", kEchoServerFlag});
    g_echo_address = dchan::bench::ReadListenAddress(g_echo_process);
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "remote_bench: %s\n", e.what());
    rc = 1;
  }
  g_echo_process.stop();
  g_broker.stop();
  benchmark::Shutdown();
  return rc;
}
