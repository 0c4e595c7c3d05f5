// dchan-broker: hosts named channels, locks, wait groups and atomic values
// for dchan clients.
//
//   dchan-broker [--listen=0.0.0.0:7070] [--max_message_bytes=...] ...
//
// Prints one startup line with the address it listens on (the real port when
// --listen asks for port 0), then serves until SIGTERM or SIGINT, when it
// ends every session with UNAVAILABLE and exits 0.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "dchan/detail/waiter.h"
#include "grpcpp/grpcpp.h"
#include "service.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:7070",
          "HOST:PORT to listen on; port 0 picks a free port");
ABSL_FLAG(int32_t, max_message_bytes, 16 << 20,
          "largest gRPC message (one batch of frames) accepted from a client");
ABSL_FLAG(int64_t, max_value_bytes, 4 << 20, "largest channel value");
ABSL_FLAG(int64_t, session_outbox_bytes, 64 << 20,
          "answers queued for a client that does not read before its session "
          "is ended with RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_objects, 100000,
          "most named objects the broker holds; past it, opens of new names "
          "are refused with RESOURCE_EXHAUSTED. An object nobody holds that "
          "is as a fresh open would make it (channel open and empty, lock "
          "free, WaitGroup at zero, AtomicValue never stored) is forgotten "
          "and does not count; its name may then be reopened with another "
          "kind, type or capacity");
ABSL_FLAG(int64_t, max_capacity, 1 << 20, "largest channel capacity");
ABSL_FLAG(int64_t, offer_claim_timeout_ms, 5000,
          "how long a spanning select's offer claim may go unanswered "
          "before it counts as a refusal (see broker.proto, Offers)");
ABSL_FLAG(int64_t, max_pending_per_session, 1000000,
          "most pending operations one session may have");
ABSL_FLAG(int64_t, max_handles_per_session, 100000,
          "most object handles one session may hold open at once (clients "
          "release a handle when its last user is gone)");
ABSL_FLAG(int64_t, session_ttl_ms, 10000,
          "a session from which no frame arrives for this long is ended (its "
          "locks released, its wait group debts settled); a client's Hello "
          "may ask for another TTL");
ABSL_FLAG(int64_t, min_session_ttl_ms, 100,
          "the shortest session TTL a client's Hello may ask for");
ABSL_FLAG(int64_t, max_session_ttl_ms, 600000,
          "the longest session TTL a client's Hello may ask for");
ABSL_FLAG(int32_t, poll_threads, 1,
          "threads that poll the network and run the broker's handlers, 1 "
          "to 64 (each client connection is served by one of them). One "
          "keeps each event on the thread that found it; more let a broker "
          "with many busy clients use more CPUs, at the cost of waking a "
          "thread per event");
ABSL_FLAG(int32_t, keepalive_time_ms, 5000,
          "interval of the broker's keepalive pings on an idle connection");
ABSL_FLAG(int32_t, keepalive_timeout_ms, 5000,
          "a connection whose ping is not answered within this is closed");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "dchan-broker hosts named channels, locks, wait groups and atomic "
      "values for dchan clients.\n"
      "Usage: dchan-broker [--listen=HOST:PORT] [flags]");
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil is built with absl::Mutex deadlock detection on, which
  // records every lock acquisition in a process-wide graph under one global
  // lock: off, as in optimised Abseil builds.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // SIGTERM/SIGINT are taken by sigwait below, so block them in every thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  dchan::server::BrokerOptions options;
  options.registry.max_objects = absl::GetFlag(FLAGS_max_objects);
  const int64_t max_capacity = absl::GetFlag(FLAGS_max_capacity);
  if (max_capacity < 0 ||
      max_capacity >
          static_cast<int64_t>(dchan::detail::ChanCore::kMaxCapacity)) {
    std::fprintf(stderr,
                 "dchan-broker: --max_capacity must be in [0, %zu] (the "
                 "largest buffer a channel can count)\n",
                 dchan::detail::ChanCore::kMaxCapacity);
    return 2;
  }
  options.registry.max_capacity = static_cast<uint64_t>(max_capacity);
  if (absl::GetFlag(FLAGS_offer_claim_timeout_ms) <= 0) {
    std::fprintf(stderr,
                 "dchan-broker: --offer_claim_timeout_ms must be positive\n");
    return 2;
  }
  options.registry.offer_claim_timeout =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_offer_claim_timeout_ms));
  options.session.max_value_bytes = absl::GetFlag(FLAGS_max_value_bytes);
  options.session.max_pending = absl::GetFlag(FLAGS_max_pending_per_session);
  options.session.max_handles = absl::GetFlag(FLAGS_max_handles_per_session);
  options.session_outbox_bytes = absl::GetFlag(FLAGS_session_outbox_bytes);
  const int64_t ttl_ms = absl::GetFlag(FLAGS_session_ttl_ms);
  const int64_t min_ttl_ms = absl::GetFlag(FLAGS_min_session_ttl_ms);
  const int64_t max_ttl_ms = absl::GetFlag(FLAGS_max_session_ttl_ms);
  if (min_ttl_ms <= 0 || min_ttl_ms > ttl_ms || ttl_ms > max_ttl_ms) {
    std::fprintf(stderr,
                 "dchan-broker: need 0 < --min_session_ttl_ms (%lld) <= "
                 "--session_ttl_ms (%lld) <= --max_session_ttl_ms (%lld)\n",
                 static_cast<long long>(min_ttl_ms),
                 static_cast<long long>(ttl_ms),
                 static_cast<long long>(max_ttl_ms));
    return 2;
  }
  options.session.default_ttl = std::chrono::milliseconds(ttl_ms);
  options.session.min_ttl = std::chrono::milliseconds(min_ttl_ms);
  options.session.max_ttl = std::chrono::milliseconds(max_ttl_ms);
  const int32_t poll_threads = absl::GetFlag(FLAGS_poll_threads);
  if (poll_threads < 1 || poll_threads > 64) {
    std::fprintf(stderr, "dchan-broker: --poll_threads must be in [1, 64]\n");
    return 2;
  }
  options.poll_threads = poll_threads;
  dchan::server::BrokerServer broker(options);

  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  broker.add_to(builder);
  // Without this, gRPC sets SO_REUSEPORT and a second broker on the same
  // port would silently take half of the connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxSendMessageSize(-1);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             absl::GetFlag(FLAGS_keepalive_time_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             absl::GetFlag(FLAGS_keepalive_timeout_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Clients ping every second or so while they wait: allow it.
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "dchan-broker: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  broker.start();
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::printf("dchan-broker listening on %s:%d (in-memory)\n", host.c_str(),
              port);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::printf("dchan-broker: %s, shutting down\n",
              sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  broker.shut_down();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->Wait();
  if (!broker.stop_polling()) {
    // Calls gRPC never completed (the message above says how many): leave
    // without tearing down what they may still touch.
    std::fflush(stderr);
    std::_Exit(1);
  }
  return 0;
}
