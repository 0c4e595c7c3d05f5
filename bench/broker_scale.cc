// bench/broker_scale.cc — what a dchan-broker process costs as clients and
// blocked remote operations grow (issue 7, "Scale"): its thread count and
// resident memory (/proc/PID/status: Threads, VmRSS) when idle, with 1, 100
// and 1,000 idle sessions, and with 100,000 blocked remote receivers.
//
// The program starts its own `dchan-broker --listen=127.0.0.1:0` (the binary
// built next to it; DCHAN_BENCH_BROKER=PATH overrides) and speaks the wire
// protocol (proto/dchan/v1/broker.proto) through the generated stub, so no
// client thread is needed per blocked operation: a blocked receive is one
// RecvRequest frame that the broker has not answered yet.
//
//   sessions   each on a TCP connection of its own (as each dchan::Client
//              is), each with the channel "crowd" (unbuffered, "bytes")
//              open; counted by the broker's Inspect ListSessions before
//              reading /proc.
//   waiters    the first --waiter_sessions sessions (default 100) each send
//              --waiters_per_session (default 1,000) blocking receives on
//              "crowd" in one batch; read once Inspect shows that many
//              blocked receivers.
//
// Per-session and per-waiter bytes are RSS differences (1,000 sessions vs
// idle; waiters vs 1,000 sessions), so they include gRPC's per-connection
// buffers and the allocator's slack. Prints one JSON object on stdout.
// Needs about 2,200 file descriptors (each connection is a socket in both
// processes); the program raises its soft RLIMIT_NOFILE, which the broker
// inherits.
//
// Usage: broker_scale [--sessions=1,100,1000] [--waiter_sessions=100]
//                     [--waiters_per_session=1000]
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "dchan/v1/inspect.grpc.pb.h"
#include "grpcpp/grpcpp.h"

#ifndef DCHAN_BROKER_PATH
#error "DCHAN_BROKER_PATH (the dchan-broker binary) must be defined"
#endif

namespace {

namespace v1 = ::dchan::v1;
using Clock = std::chrono::steady_clock;

constexpr char kChannel[] = "crowd";
constexpr auto kBound = std::chrono::seconds(120);

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "broker_scale: %s\n", what.c_str());
  std::exit(1);
}

struct ProcStatus {
  int64_t threads = -1;
  int64_t rss_kib = -1;
};

// "Threads:" and "VmRSS:" of /proc/PID/status.
ProcStatus ReadProcStatus(pid_t pid) {
  ProcStatus s;
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Threads:", 0) == 0) {
      s.threads = std::strtoll(line.c_str() + 8, nullptr, 10);
    } else if (line.rfind("VmRSS:", 0) == 0) {
      s.rss_kib = std::strtoll(line.c_str() + 6, nullptr, 10);  // "... kB"
    }
  }
  if (s.threads <= 0 || s.rss_kib <= 0) {
    Die("cannot read /proc/" + std::to_string(pid) + "/status");
  }
  return s;
}

// A channel with its own TCP connection (gRPC otherwise shares one among
// channels with equal arguments).
std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

// One Session stream, kept open until Close (no thread of its own).
class Session {
 public:
  explicit Session(const std::string& address)
      : stub_(v1::Broker::NewStub(Connect(address))) {
    ctx_.set_deadline(std::chrono::system_clock::now() + kBound * 4);
    stream_ = stub_->Session(&ctx_);
    v1::ClientBatch b;
    v1::ClientFrame* f = b.add_frames();
    f->set_id(1);
    v1::OpenRequest* o = f->mutable_open();
    o->set_name(kChannel);
    o->set_kind(v1::OBJECT_KIND_CHANNEL);
    o->set_type_name("bytes");
    o->set_capacity(0);
    v1::ServerBatch answer;
    if (!stream_->Write(b) || !stream_->Read(&answer) ||
        answer.frames_size() != 1 || answer.frames(0).code() != 0) {
      Die("opening the channel failed: " + answer.DebugString());
    }
    handle_ = answer.frames(0).open().handle();
  }

  // `n` blocking receives, ids 100 ... 100 + n - 1, in one batch.
  void block_receivers(int n) {
    v1::ClientBatch b;
    for (int i = 0; i < n; ++i) {
      v1::ClientFrame* f = b.add_frames();
      f->set_id(100 + static_cast<uint64_t>(i));
      f->mutable_recv()->set_handle(handle_);
    }
    if (!stream_->Write(b)) Die("the session stream broke");
  }

  // Ends the call (the broker withdraws what is pending).
  void close() {
    ctx_.TryCancel();
    stream_->Finish();
  }

 private:
  std::unique_ptr<v1::Broker::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ClientBatch, v1::ServerBatch>>
      stream_;
  uint64_t handle_ = 0;
};

// Polls the Inspect service until `done(objects, sessions)`, within kBound.
template <class Pred>
void AwaitBroker(const std::string& address, const char* what, Pred done) {
  auto stub = v1::Inspect::NewStub(Connect(address));
  const Clock::time_point deadline = Clock::now() + kBound;
  for (;;) {
    v1::ListObjectsResponse objects;
    v1::ListSessionsResponse sessions;
    grpc::ClientContext c1, c2;
    c1.set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(10));
    c2.set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(10));
    if (stub->ListObjects(&c1, v1::ListObjectsRequest(), &objects).ok() &&
        stub->ListSessions(&c2, v1::ListSessionsRequest(), &sessions).ok() &&
        done(objects, sessions)) {
      return;
    }
    if (Clock::now() > deadline)
      Die(std::string("timed out waiting for ") + what);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

uint64_t BlockedReceivers(const v1::ListObjectsResponse& objects) {
  for (const v1::ObjectInfo& o : objects.objects()) {
    if (o.name() == kChannel) return o.blocked_receivers();
  }
  return 0;
}

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  std::size_t at = 0;
  while (at <= s.size()) {
    const std::size_t comma = std::min(s.find(',', at), s.size());
    const int v = std::atoi(s.substr(at, comma - at).c_str());
    if (v <= 0) Die("bad --sessions list: " + s);
    out.push_back(v);
    at = comma + 1;
  }
  if (!std::is_sorted(out.begin(), out.end())) Die("--sessions must grow");
  return out;
}

std::string Json(const char* name, const ProcStatus& s, int64_t n) {
  return std::string("{\"what\":\"") + name + "\",\"n\":" + std::to_string(n) +
         ",\"threads\":" + std::to_string(s.threads) +
         ",\"rss_kib\":" + std::to_string(s.rss_kib) + "}";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> steps = {1, 100, 1000};
  int waiter_sessions = 100;
  int per_session = 1000;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const std::string f = std::string(flag) + "=";
      return a.rfind(f, 0) == 0 ? argv[i] + f.size() : nullptr;
    };
    if (const char* v = value("--sessions")) {
      steps = ParseList(v);
    } else if (const char* v = value("--waiter_sessions")) {
      waiter_sessions = std::atoi(v);
    } else if (const char* v = value("--waiters_per_session")) {
      per_session = std::atoi(v);
    } else {
      Die("unknown argument " + a +
          " (usage: broker_scale [--sessions=1,100,1000] "
          "[--waiter_sessions=100] [--waiters_per_session=1000])");
    }
  }
  if (waiter_sessions <= 0 || per_session <= 0 ||
      waiter_sessions > steps.back()) {
    Die("--waiter_sessions must be in 1..the largest --sessions, "
        "--waiters_per_session positive");
  }
  // Two sockets per session across both processes, plus slack.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    const rlim_t want = static_cast<rlim_t>(steps.back()) * 2 + 256;
    if (nofile.rlim_cur < want) {
      nofile.rlim_cur = std::min(want, nofile.rlim_max);
      setrlimit(RLIMIT_NOFILE, &nofile);
    }
  }

  const char* path = std::getenv("DCHAN_BENCH_BROKER");
  dchan::bench::ChildProcess broker;
  broker.start(
      {path != nullptr ? path : DCHAN_BROKER_PATH, "--listen=127.0.0.1:0"});
  // "dchan-broker listening on HOST:PORT (in-memory)"
  std::string address;
  try {
    address = dchan::bench::ReadListenAddress(broker);
  } catch (const std::exception& e) {
    Die(e.what());
  }
  const pid_t pid = broker.pid();

  std::vector<std::string> rows;
  AwaitBroker(address, "the broker to serve", [](const auto&, const auto& s) {
    return s.sessions_size() == 0;
  });
  const ProcStatus idle = ReadProcStatus(pid);
  rows.push_back(Json("idle", idle, 0));

  std::vector<std::unique_ptr<Session>> sessions;
  ProcStatus most = idle;
  for (const int n : steps) {
    while (static_cast<int>(sessions.size()) < n) {
      sessions.push_back(std::make_unique<Session>(address));
    }
    AwaitBroker(address, "the sessions", [n](const auto&, const auto& s) {
      return s.sessions_size() == n;
    });
    most = ReadProcStatus(pid);
    rows.push_back(Json("sessions", most, n));
  }

  const int64_t waiters = static_cast<int64_t>(waiter_sessions) * per_session;
  for (int i = 0; i < waiter_sessions; ++i) {
    sessions[i]->block_receivers(per_session);
  }
  AwaitBroker(address, "the blocked receivers",
              [waiters](const auto& o, const auto&) {
                return BlockedReceivers(o) == static_cast<uint64_t>(waiters);
              });
  const ProcStatus with_waiters = ReadProcStatus(pid);
  rows.push_back(Json("waiters", with_waiters, waiters));

  const double per_session_bytes =
      (most.rss_kib - idle.rss_kib) * 1024.0 / steps.back();
  const double per_waiter_bytes =
      (with_waiters.rss_kib - most.rss_kib) * 1024.0 / waiters;

  for (auto& s : sessions) s->close();
  sessions.clear();
  broker.stop();

  std::printf("{\"broker\":\"%s\",\"steps\":[", address.c_str());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::printf("%s%s", i ? "," : "", rows[i].c_str());
  }
  std::printf(
      "],\"waiter_sessions\":%d,\"bytes_per_session\":%.0f,"
      "\"bytes_per_waiter\":%.0f}\n",
      waiter_sessions, per_session_bytes, per_waiter_bytes);
  return 0;
}
