// dchan-test-worker: one process's part in dchan's integration tests. Each
// mode connects to a broker, opens one channel and does one thing with it,
// printing what happened on stdout (one line per fact, flushed at once):
//
//   produce  --broker=ADDR --chan=NAME --cap=N --from=A --count=K
//            [--delay_ms=D]
//            opens the channel, prints "ready", sleeps D ms (default 0),
//            sends the int64 values A..A+K-1; prints "sent K"
//   consume  --broker=ADDR --chan=NAME --cap=N
//            receives (range-for) until the channel is closed and drained;
//            prints "count C sum S sumsq Q" (Q: sum of squares)
//   close    --broker=ADDR --chan=NAME --cap=N
//            closes the channel; prints "closed"
//   recv-one --broker=ADDR --chan=NAME --cap=N [--type=int64|string]
//            prints "ready", blocks on one recv, prints "got V" or "closed"
//   recv-for --broker=ADDR --chan=NAME --cap=N --ms=M [--again=1]
//            prints "ready", then one recv_for(M ms): prints "timeout",
//            "got V" or "closed"; with --again=1 then one blocking recv,
//            printed the same way
//   send-for --broker=ADDR --chan=NAME --cap=N --ms=M [--value=V]
//            [--again=1]
//            prints "ready", then one send_for(V, M ms): prints "sent",
//            "timeout" or "closed"; with --again=1 then one blocking send of
//            V+1, printing "sent" once it returns
//   try-recv --broker=ADDR --chan=NAME --cap=N
//            one try_recv: prints "would block", "got V" or "closed"
//   rendezvous-send --broker=ADDR --chan=NAME [--cap=0] [--value=V]
//            prints "ready", sends V (default 42), then prints
//            "sent-at NS": the steady clock (CLOCK_MONOTONIC, comparable
//            across processes) when send returned
//   open     --broker=ADDR --chan=NAME --cap=N [--type=int64|string]
//            opens the channel; prints "opened cap N"
//
// Every mode also takes --timeout_s=S (default 60): a watchdog that ends the
// process with exit code 5 if it is still running then, so that no worker
// can outlive a broken test.
//
// Exit codes: 0 done; 2 bad arguments; 3 a dchan::Error, after printing
// "error CODE MESSAGE" (CODE as absl::StatusCodeToString: UNAVAILABLE,
// INVALID_ARGUMENT, ...); 4 any other exception; 5 watchdog.
#include <unistd.h>

#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "dchan/client.h"

namespace {

// A line on stdout, flushed at once so that the test sees it even if the
// process is killed right after.
__attribute__((format(printf, 1, 2))) void say(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vprintf(fmt, ap);
  va_end(ap);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class Args {
 public:
  // Parses --key=value arguments; false (after a message) on anything else.
  bool parse(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      const std::string a = argv[i];
      const size_t eq = a.find('=');
      if (a.rfind("--", 0) != 0 || eq == std::string::npos) {
        std::fprintf(stderr, "dchan-test-worker: bad argument '%s'\n", argv[i]);
        return false;
      }
      values_[a.substr(2, eq - 2)] = a.substr(eq + 1);
    }
    return true;
  }

  std::string str(const std::string& key, const std::string& def = "") {
    used_[key] = true;
    auto it = values_.find(key);
    return it == values_.end() ? def : it->second;
  }

  int64_t num(const std::string& key, int64_t def) {
    const std::string s = str(key);
    if (s.empty()) return def;
    int64_t v = 0;
    if (!absl::SimpleAtoi(s, &v)) {
      std::fprintf(stderr, "dchan-test-worker: --%s=%s is not a number\n",
                   key.c_str(), s.c_str());
      std::exit(2);
    }
    return v;
  }

  // Exits 2 if an argument was given that the mode did not read.
  void check_all_used() {
    for (const auto& [k, v] : values_) {
      if (!used_.count(k)) {
        std::fprintf(stderr, "dchan-test-worker: unknown flag --%s\n",
                     k.c_str());
        std::exit(2);
      }
    }
  }

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> used_;
};

template <class T>
void print_value(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    say("got %s", v.c_str());
  } else {
    say("got %lld", static_cast<long long>(v));
  }
}

template <class T>
int recv_one(dchan::Client& client, const std::string& name, size_t cap) {
  dchan::Chan<T> ch = client.chan<T>(name, cap);
  say("ready");
  std::optional<T> v = ch.recv();
  if (v.has_value()) {
    print_value(*v);
  } else {
    say("closed");
  }
  return 0;
}

template <class T>
int open_only(dchan::Client& client, const std::string& name, size_t cap) {
  dchan::Chan<T> ch = client.chan<T>(name, cap);
  say("opened cap %zu", ch.cap());
  return 0;
}

int run(const std::string& mode, Args& args) {
  const std::string broker = args.str("broker");
  const std::string name = args.str("chan");
  const int64_t cap = args.num("cap", 0);
  const std::string type = args.str("type", "int64");
  const int64_t timeout_s = args.num("timeout_s", 60);
  int64_t from = 0, count = 0, value = 42, delay_ms = 0;
  if (mode == "produce") {
    from = args.num("from", 0);
    count = args.num("count", 0);
    delay_ms = args.num("delay_ms", 0);
  }
  if (mode == "rendezvous-send" || mode == "send-for") {
    value = args.num("value", 42);
  }
  int64_t ms = 0;
  bool again = false;
  if (mode == "recv-for" || mode == "send-for") {
    ms = args.num("ms", 0);
    again = args.num("again", 0) != 0;
  }
  args.check_all_used();
  if (broker.empty() || name.empty() || cap < 0 ||
      (type != "int64" && type != "string")) {
    std::fprintf(stderr,
                 "dchan-test-worker: needs --broker, --chan, --cap >= 0, "
                 "--type=int64|string\n");
    return 2;
  }

  std::thread([timeout_s] {
    std::this_thread::sleep_for(std::chrono::seconds(timeout_s));
    std::fprintf(stderr,
                 "dchan-test-worker: watchdog: still running after %llds\n",
                 static_cast<long long>(timeout_s));
    std::fflush(stderr);
    std::fflush(stdout);
    ::_exit(5);
  }).detach();

  dchan::Client client = dchan::Client::connect(broker);
  const size_t ucap = static_cast<size_t>(cap);

  if (mode == "produce") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(name, ucap);
    say("ready");
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    for (int64_t v = from; v < from + count; ++v) ch.send(v);
    say("sent %lld", static_cast<long long>(count));
    return 0;
  }
  if (mode == "consume") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(name, ucap);
    int64_t n = 0, sum = 0, sumsq = 0;
    for (int64_t v : ch) {
      ++n;
      sum += v;
      sumsq += v * v;
    }
    say("count %lld sum %lld sumsq %lld", static_cast<long long>(n),
        static_cast<long long>(sum), static_cast<long long>(sumsq));
    return 0;
  }
  if (mode == "close") {
    if (type == "string") {
      client.chan<std::string>(name, ucap).close();
    } else {
      client.chan<int64_t>(name, ucap).close();
    }
    say("closed");
    return 0;
  }
  if (mode == "recv-one") {
    return type == "string" ? recv_one<std::string>(client, name, ucap)
                            : recv_one<int64_t>(client, name, ucap);
  }
  if (mode == "recv-for") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(name, ucap);
    say("ready");
    dchan::RecvResult<int64_t> r = ch.recv_for(std::chrono::milliseconds(ms));
    if (r.status == dchan::ChanStatus::kOk) {
      print_value(*r.value);
    } else if (r.status == dchan::ChanStatus::kTimeout) {
      say("timeout");
    } else if (r.status == dchan::ChanStatus::kClosed) {
      say("closed");
    } else {
      say("status %s", dchan::to_string(r.status));
    }
    if (again) {
      std::optional<int64_t> v = ch.recv();
      if (v.has_value()) {
        print_value(*v);
      } else {
        say("closed");
      }
    }
    return 0;
  }
  if (mode == "send-for") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(name, ucap);
    say("ready");
    const dchan::ChanStatus st =
        ch.send_for(value, std::chrono::milliseconds(ms));
    say("%s", st == dchan::ChanStatus::kOk ? "sent" : dchan::to_string(st));
    if (again) {
      ch.send(value + 1);
      say("sent");
    }
    return 0;
  }
  if (mode == "try-recv") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(name, ucap);
    dchan::RecvResult<int64_t> r = ch.try_recv();
    if (r.status == dchan::ChanStatus::kOk) {
      print_value(*r.value);
    } else {
      say("%s", dchan::to_string(r.status));
    }
    return 0;
  }
  if (mode == "rendezvous-send") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(name, ucap);
    say("ready");
    ch.send(value);
    const int64_t t = steady_now_ns();
    say("sent-at %lld", static_cast<long long>(t));
    return 0;
  }
  if (mode == "open") {
    return type == "string" ? open_only<std::string>(client, name, ucap)
                            : open_only<int64_t>(client, name, ucap);
  }
  std::fprintf(stderr, "dchan-test-worker: unknown mode '%s'\n", mode.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: dchan-test-worker MODE --broker=ADDR --chan=NAME "
                 "[--cap=N] [...]\n");
    return 2;
  }
  Args args;
  if (!args.parse(argc, argv, 2)) return 2;
  try {
    return run(argv[1], args);
  } catch (const dchan::Error& e) {
    say("error %s %s", absl::StatusCodeToString(e.code()).c_str(), e.what());
    return 3;
  } catch (const std::exception& e) {
    say("exception %s", e.what());
    return 4;
  }
}
