// sync_test_util.h — shared pieces of the integration tests of broker locks,
// wait groups and atomic values (remote_lock_test.cc and its siblings):
// worker processes with a short session TTL, the fenced resource process,
// a scratch directory, and output parsing.
//
// Thread safety: none beyond what each piece says; a test uses these from
// its own thread.
#ifndef DCHAN_INTEGRATION_TESTS_SYNC_TEST_UTIL_H_
#define DCHAN_INTEGRATION_TESTS_SYNC_TEST_UTIL_H_

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "fence_client.h"

#ifndef DCHAN_WORKER_PATH
#error "DCHAN_WORKER_PATH must name the dchan-test-worker binary"
#endif
#ifndef DCHAN_FENCE_PATH
#error "DCHAN_FENCE_PATH must name the dchan-fenced-resource binary"
#endif

namespace dchan::testing {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;

// The session TTL every test client asks for, and the broker flags that
// allow it (the broker's default minimum would allow it too; stated here so
// that the tests do not depend on that default).
constexpr milliseconds kTtl(1000);
inline std::vector<std::string> short_ttl_broker_args() {
  return {"--min_session_ttl_ms=100", "--session_ttl_ms=1000"};
}
// Slack on top of the TTL for "the broker noticed a lost session": a
// liveness bound for a shared, noisy machine, not a performance claim.
constexpr milliseconds kLossSlack = seconds(10);
// A worker that has not finished in this long is broken (killed, test fails).
constexpr milliseconds kWorkerBound = seconds(30);
// How long a broker-side condition (e.g. "a locker is queued") may take.
constexpr milliseconds kBrokerStateBound = seconds(20);

// A dchan-test-worker in `mode` against `broker`, with the short TTL.
inline Process sync_worker(const std::string& mode, const BrokerProcess& broker,
                           std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {mode, "--broker=" + broker.address(),
                                   absl::StrCat("--ttl_ms=", kTtl.count())};
  args.insert(args.end(), extra.begin(), extra.end());
  return Process::spawn(DCHAN_WORKER_PATH, args);
}

// A Client of this test process with the short TTL and a name.
inline Client connect_client(const BrokerProcess& broker,
                             const std::string& name) {
  ClientOptions options;
  options.session_ttl = kTtl;
  options.name = name;
  return Client::connect(broker.address(), options);
}

inline std::vector<std::string> lines_of(const std::string& out) {
  std::vector<std::string> v = absl::StrSplit(out, '\n', absl::SkipEmpty());
  return v;
}

inline bool has_line(const std::string& out, const std::string& line) {
  for (const std::string& l : lines_of(out)) {
    if (l == line) return true;
  }
  return false;
}

inline bool has_line_starting(const std::string& out,
                              const std::string& prefix) {
  for (const std::string& l : lines_of(out)) {
    if (absl::StartsWith(l, prefix)) return true;
  }
  return false;
}

// The rest of the first line that starts with `prefix`.
inline std::optional<std::string> after_prefix(const std::string& out,
                                               const std::string& prefix) {
  for (const std::string& l : lines_of(out)) {
    if (absl::StartsWith(l, prefix)) return l.substr(prefix.size());
  }
  return std::nullopt;
}

// How many lines equal `line`.
inline int count_lines(const std::string& out, const std::string& line) {
  int n = 0;
  for (const std::string& l : lines_of(out)) n += l == line ? 1 : 0;
  return n;
}

// The token of a "locked TOKEN" or "locked TOKEN at NS" line; 0 if none.
inline uint64_t locked_token(const std::string& out) {
  const std::optional<std::string> rest = after_prefix(out, "locked ");
  uint64_t token = 0;
  if (!rest || !absl::SimpleAtoi(rest->substr(0, rest->find(' ')), &token)) {
    return 0;
  }
  return token;
}

// NS of a "locked TOKEN at NS" line; 0 if none.
inline int64_t locked_at_ns(const std::string& out) {
  const std::optional<std::string> rest = after_prefix(out, "locked ");
  if (!rest) return 0;
  const size_t at = rest->find(" at ");
  int64_t ns = 0;
  if (at == std::string::npos || !absl::SimpleAtoi(rest->substr(at + 4), &ns)) {
    return 0;
  }
  return ns;
}

// CLOCK_MONOTONIC in ns: one clock for every process on the machine.
inline int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             steady_clock::now().time_since_epoch())
      .count();
}

// "n=10 min=.. p50=.. p99=.. max=.. ms" for delays in milliseconds (p99 of
// a handful of trials is their maximum; printed, never asserted).
inline std::string describe_delays(std::vector<double> ms) {
  if (ms.empty()) return "n=0";
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) {
    return ms[std::min(ms.size() - 1, static_cast<size_t>(q * ms.size()))];
  };
  return absl::StrFormat("n=%d min=%.1f p50=%.1f p99=%.1f max=%.1f ms",
                         ms.size(), ms.front(), at(0.50), at(0.99), ms.back());
}

// A dchan-fenced-resource child on 127.0.0.1 (see fenced_resource.cc).
class FencedResource {
 public:
  // Spawns it and reads its port. Throws std::runtime_error if it does not
  // report one within 20 s.
  FencedResource() : process_(Process::spawn(DCHAN_FENCE_PATH, {})) {
    const std::optional<std::string> line =
        process_.first_line(std::chrono::seconds(20));
    const std::string prefix = "fenced-resource listening on 127.0.0.1:";
    if (!line || !absl::StartsWith(*line, prefix) ||
        !absl::SimpleAtoi(line->substr(prefix.size()), &port_)) {
      throw std::runtime_error("dchan-fenced-resource did not report a port: " +
                               line.value_or("(nothing)"));
    }
  }

  int port() const noexcept { return port_; }
  std::string port_flag() const { return absl::StrCat("--fence=", port_); }

  // Every write attempt so far, in arrival order: "ACCEPTED T P" or
  // "REJECTED T P". Empty if it cannot be asked.
  std::vector<std::string> log() {
    const std::optional<std::string> answer = fence_request(port_, "LOG");
    if (!answer) return {};
    std::vector<std::string> lines = lines_of(*answer);
    if (!lines.empty() && lines.back() == "END") lines.pop_back();
    return lines;
  }

 private:
  Process process_;
  int port_ = 0;
};

// A fresh directory under TMPDIR (or /tmp), removed with its contents.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ =
        std::string(base != nullptr ? base : "/tmp") + "/dchan-it-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed for " + templ);
    }
    path_ = templ;
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }

  // PATH/name.
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace dchan::testing

#endif  // DCHAN_INTEGRATION_TESTS_SYNC_TEST_UTIL_H_
