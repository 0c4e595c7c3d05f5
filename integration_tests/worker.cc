// dchan-test-worker: one process's part in dchan's integration tests. Each
// mode connects to a broker, opens one channel and does one thing with it,
// printing what happened on stdout (one line per fact, flushed at once):
//
//   produce  --broker=ADDR --chan=NAME --cap=N --from=A --count=K
//            [--delay_ms=D]
//            opens the channel, prints "ready", sleeps D ms (default 0),
//            sends the int64 values A..A+K-1; prints "sent K". With
//            --window=W the handle pipelines its sends
//            (RemoteChanOptions::send_window) and dchan::flush()es before
//            printing "sent K"
//   consume  --broker=ADDR --chan=NAME --cap=N [--batch=B] [--ahead=1]
//            receives (range-for) until the channel is closed and drained;
//            prints "count C sum S sumsq Q" (Q: sum of squares); --batch=B
//            receives in batches (RemoteChanOptions::recv_batch), --ahead=1
//            with read-ahead (recv_ahead)
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
// Spanning selects (a select over a broker channel and a local one):
//
//   span-one --broker=ADDR --chan=NAME --cap=N --role=send|recv [--value=V]
//            prints "ready", then one select over the broker channel (send
//            V, default 42, or receive) and a local channel nobody feeds;
//            prints "sent V", "got V" or "closed"
//   span-loop --broker=ADDR [--send_chan=X --from=A --count=K]
//            [--recv_chan=Y --quit=Q] --done=D [--local=L]
//            [--timeout_every=T]
//            loops on one select over: a send of the next value of
//            A..A+K-1 on the unbuffered broker channel X (until all are
//            sent), a receive on the unbuffered broker channel Y and on the
//            broker channel Q (closed: stop receiving), a receive on a local
//            channel that a local thread feeds L ticks, and every T-th round
//            an after(1..3 ms). A case that did not fire leaves its value to
//            the next round. Once all K are sent it sends 1 on the broker
//            channel D (capacity 16); it ends once all are sent, Q is closed
//            (with Y) and all L ticks arrived. Prints "span sent K recv C
//            sum S sumsq Q local L timeouts T"
//
// Locks, wait groups and atomic values (issue 5). These modes also take
// --ttl_ms=T (ClientOptions::session_ttl; default: the client's) and
// --client_name=N (ClientOptions::name; default: the client's "host:pid"):
//
//   lock-loop --broker=ADDR --lock=NAME --rounds=R --file=PATH --marker=PATH
//            [--go_file=PATH] [--keep=1]
//            opens the broker mutex (with --keep=1: MutexOptions::keep),
//            prints "ready", waits until GO_FILE
//            exists (if given), then R times: lock, create MARKER with
//            O_EXCL (it exists already: another process is inside too, an
//            overlap), read "COUNTER TOKEN WRITER" from FILE (missing or
//            empty: 0 0 0), check that this acquisition's fencing token is
//            above TOKEN (else a regression), yield, write
//            "COUNTER+1 token PID" back, remove MARKER, unlock. Prints
//            "done rounds R overlaps O regressions G handovers H" (H: rounds
//            in which FILE was last written by another process)
//   lock-once --broker=ADDR --lock=NAME [--kind=K] [--fence=PORT]
//            [--payload=P] [--stay=1]
//            prints "ready", locks, prints "locked TOKEN at NS" (NS: the
//            steady clock when lock() returned); with --fence writes
//            "WRITE TOKEN P" to the fenced resource on 127.0.0.1:PORT and
//            prints "fence ANSWER"; unlocks, prints "unlocked"; with
//            --stay=1 then waits, handle and Client open, until killed (or
//            the watchdog)
//   hold-lock --broker=ADDR --lock=NAME [--kind=K] [--fence=PORT]
//            [--go_file=PATH] [--stale_writes=K]
//            locks, prints "locked TOKEN" (and, with --fence, writes
//            "WRITE TOKEN NAME-first" and prints "fence ANSWER"), prints
//            "holding", then waits until GO_FILE exists (without
//            --go_file: until killed or the watchdog). Then, at once, one
//            unlock(), printing "unlock ok" or "unlock error CODE MESSAGE";
//            prints "hold_token stop_requested=0|1"; makes K writes
//            "WRITE TOKEN NAME-stale-I" with its old token, each printing
//            "fence ANSWER"; one try_lock(), printing "try_lock true|false"
//            or "try_lock error CODE MESSAGE". When the hold token is
//            stopped it prints "hold lost-at NS" at once (from the thread
//            that stops it).
//            (lock-once and hold-lock: --kind=mutex (default) takes a broker
//            Mutex; --kind=mutex-keep one opened with MutexOptions::keep;
//            --kind=rw an RWMutex exclusively; --kind=rw-shared an RWMutex
//            shared, whose token is that of the last exclusive acquisition)
//   wg-participant --broker=ADDR --wg=NAME --ready=CHAN --go=CHAN
//            [--forgive=1]
//            add(1) on the broker WaitGroup, prints "added", sends its
//            client name on the chan<string> READY (capacity 16), waits for
//            a value or the close of the chan<int64> GO (unbuffered), then
//            done(); prints "done"
//   cas-loop --broker=ADDR --value=NAME --rounds=R [--go_file=PATH]
//            opens the value, prints "ready", waits until GO_FILE exists (if
//            given), then R times: increments the broker AtomicValue<int64>
//            (which must hold a value) with a load + compare_and_swap retry
//            loop; prints "done rounds R retries N"
//
// Every mode also takes --timeout_s=S (default 60): a watchdog that ends the
// process with exit code 5 if it is still running then, so that no worker
// can outlive a broken test.
//
// Exit codes: 0 done; 2 bad arguments; 3 a dchan::Error, after printing
// "error CODE MESSAGE" (CODE as absl::StatusCodeToString: UNAVAILABLE,
// INVALID_ARGUMENT, ...); 4 any other exception; 5 watchdog.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "dchan/client.h"
#include "fence_client.h"

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

// Ends the process with exit code 5 after `timeout_s` seconds.
void start_watchdog(int64_t timeout_s) {
  std::thread([timeout_s] {
    std::this_thread::sleep_for(std::chrono::seconds(timeout_s));
    std::fprintf(stderr,
                 "dchan-test-worker: watchdog: still running after %llds\n",
                 static_cast<long long>(timeout_s));
    std::fflush(stderr);
    std::fflush(stdout);
    ::_exit(5);
  }).detach();
}

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

// ---------------------------------------------------------------------------
// Locks, wait groups, atomic values.

const char* code_name(const dchan::Error& e) {
  static thread_local std::string s;
  s = absl::StatusCodeToString(e.code());
  return s.c_str();
}

// "COUNTER TOKEN WRITER" in a fixed width, so that a rewrite never needs a
// truncate.
struct Ledger {
  int64_t counter = 0;
  uint64_t token = 0;
  int64_t writer = 0;  // pid
};

bool read_ledger(int fd, Ledger* l) {
  char buf[96] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n < 0) return false;
  if (n == 0) {
    *l = Ledger{};
    return true;
  }
  long long c = 0, w = 0;
  unsigned long long t = 0;
  if (std::sscanf(buf, "%lld %llu %lld", &c, &t, &w) != 3) return false;
  l->counter = c;
  l->token = t;
  l->writer = w;
  return true;
}

bool write_ledger(int fd, const Ledger& l) {
  char buf[96];
  const int n = std::snprintf(buf, sizeof buf, "%020lld %020llu %010lld\n",
                              static_cast<long long>(l.counter),
                              static_cast<unsigned long long>(l.token),
                              static_cast<long long>(l.writer));
  return ::pwrite(fd, buf, static_cast<size_t>(n), 0) == n;
}

// Waits until `path` exists (returns at once for an empty path).
void await_file(const std::string& path) {
  if (path.empty()) return;
  struct stat st;
  while (::stat(path.c_str(), &st) != 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

int lock_loop(dchan::Client& client, const std::string& name, int64_t rounds,
              const std::string& file, const std::string& marker,
              const std::string& go_file, bool keep) {
  dchan::Mutex m = client.mutex(name, {.keep = keep});
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    say("exception open %s: %s", file.c_str(), std::strerror(errno));
    return 4;
  }
  const int64_t me = ::getpid();
  say("ready");
  await_file(go_file);
  int64_t overlaps = 0, regressions = 0, handovers = 0;
  for (int64_t i = 0; i < rounds; ++i) {
    m.lock();
    const uint64_t token = m.token();
    const int mfd =
        ::open(marker.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    const bool own_marker = mfd >= 0;
    if (own_marker) {
      ::close(mfd);
    } else {
      ++overlaps;  // another process is inside the critical section
    }
    Ledger l;
    if (!read_ledger(fd, &l)) {
      say("exception cannot read %s", file.c_str());
      return 4;
    }
    if (token <= l.token) ++regressions;
    if (l.writer != 0 && l.writer != me) ++handovers;
    // Give a process that wrongly got the lock too a chance to interleave.
    std::this_thread::yield();
    l.counter += 1;
    l.token = token;
    l.writer = me;
    if (!write_ledger(fd, l)) {
      say("exception cannot write %s", file.c_str());
      return 4;
    }
    if (own_marker) ::unlink(marker.c_str());
    m.unlock();
  }
  ::close(fd);
  say("done rounds %lld overlaps %lld regressions %lld handovers %lld",
      static_cast<long long>(rounds), static_cast<long long>(overlaps),
      static_cast<long long>(regressions), static_cast<long long>(handovers));
  return 0;
}

std::string fence_write(int64_t port, uint64_t token,
                        const std::string& payload) {
  const std::optional<std::string> answer = dchan::testing::fence_request(
      static_cast<int>(port), absl::StrCat("WRITE ", token, " ", payload));
  return answer.value_or("(no answer)");
}

// The lock of lock-once and hold-lock: a broker Mutex (--kind=mutex, the
// default; --kind=mutex-keep: kept), or an RWMutex taken exclusively
// (--kind=rw) or shared (--kind=rw-shared).
class LockHandle {
 public:
  LockHandle(dchan::Client& client, const std::string& name,
             const std::string& kind)
      : shared_(kind == "rw-shared") {
    if (kind == "mutex" || kind == "mutex-keep") {
      mutex_.emplace(client.mutex(name, {.keep = kind == "mutex-keep"}));
    } else {
      rw_.emplace(client.rw_mutex(name));
    }
  }

  void lock() {
    if (mutex_) {
      mutex_->lock();
    } else if (shared_) {
      rw_->lock_shared();
    } else {
      rw_->lock();
    }
  }
  bool try_lock() {
    if (mutex_) return mutex_->try_lock();
    return shared_ ? rw_->try_lock_shared() : rw_->try_lock();
  }
  void unlock() {
    if (mutex_) {
      mutex_->unlock();
    } else if (shared_) {
      rw_->unlock_shared();
    } else {
      rw_->unlock();
    }
  }
  uint64_t token() const { return mutex_ ? mutex_->token() : rw_->token(); }
  std::stop_token hold_token() const {
    return mutex_ ? mutex_->hold_token() : rw_->hold_token();
  }

 private:
  const bool shared_;
  std::optional<dchan::Mutex> mutex_;
  std::optional<dchan::RWMutex> rw_;
};

bool is_lock_kind(const std::string& kind) {
  return kind == "mutex" || kind == "mutex-keep" || kind == "rw" ||
         kind == "rw-shared";
}

int lock_once(dchan::Client& client, const std::string& name,
              const std::string& kind, int64_t fence,
              const std::string& payload, bool stay) {
  LockHandle m(client, name, kind);
  say("ready");
  m.lock();
  const int64_t at = steady_now_ns();
  const uint64_t token = m.token();
  say("locked %llu at %lld", static_cast<unsigned long long>(token),
      static_cast<long long>(at));
  if (fence > 0) say("fence %s", fence_write(fence, token, payload).c_str());
  m.unlock();
  say("unlocked");
  while (stay) std::this_thread::sleep_for(std::chrono::seconds(1));
  return 0;
}

int hold_lock(dchan::Client& client, const std::string& name,
              const std::string& kind, int64_t fence,
              const std::string& go_file, int64_t stale_writes,
              const std::string& who) {
  LockHandle m(client, name, kind);
  m.lock();
  const uint64_t token = m.token();
  say("locked %llu", static_cast<unsigned long long>(token));
  std::stop_callback on_loss(m.hold_token(), [] {
    say("hold lost-at %lld", static_cast<long long>(steady_now_ns()));
  });
  if (fence > 0) {
    say("fence %s", fence_write(fence, token, who + "-first").c_str());
  }
  say("holding");
  if (go_file.empty()) {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  await_file(go_file);
  // Its first step after the pause: release the lock it believes it holds.
  try {
    m.unlock();
    say("unlock ok");
  } catch (const dchan::Error& e) {
    say("unlock error %s %s", code_name(e), e.what());
  }
  say("hold_token stop_requested=%d", m.hold_token().stop_requested() ? 1 : 0);
  // A careless holder that writes anyway, with its old token.
  for (int64_t i = 0; i < stale_writes; ++i) {
    say("fence %s",
        fence_write(fence, token, absl::StrCat(who, "-stale-", i)).c_str());
  }
  try {
    const bool got = m.try_lock();
    say("try_lock %s", got ? "true" : "false");
  } catch (const dchan::Error& e) {
    say("try_lock error %s %s", code_name(e), e.what());
  }
  return 0;
}

int wg_participant(dchan::Client& client, const std::string& name, bool forgive,
                   const std::string& ready_name, const std::string& go_name,
                   const std::string& who) {
  dchan::WaitGroup wg =
      client.wait_group(name, dchan::WaitGroupOptions{.forgive = forgive});
  dchan::Chan<std::string> ready = client.chan<std::string>(ready_name, 16);
  dchan::Chan<int64_t> go = client.chan<int64_t>(go_name, 0);
  wg.add(1);
  say("added");
  ready.send(who);
  (void)go.recv();  // a value or the close
  wg.done();
  say("done");
  return 0;
}

int cas_loop(dchan::Client& client, const std::string& name, int64_t rounds,
             const std::string& go_file) {
  dchan::AtomicValue<int64_t> v = client.atomic_value<int64_t>(name);
  say("ready");
  await_file(go_file);
  int64_t retries = 0;
  for (int64_t i = 0; i < rounds; ++i) {
    for (;;) {
      const std::optional<int64_t> old = v.load();
      if (!old.has_value()) {
        say("exception the atomic value holds nothing");
        return 4;
      }
      if (v.compare_and_swap(*old, *old + 1)) break;
      ++retries;
    }
  }
  say("done rounds %lld retries %lld", static_cast<long long>(rounds),
      static_cast<long long>(retries));
  return 0;
}

// See span-loop in the file comment.
int span_loop(Args& args) {
  const std::string broker = args.str("broker");
  const std::string send_name = args.str("send_chan");
  const std::string recv_name = args.str("recv_chan");
  const std::string quit_name = args.str("quit");
  const std::string done_name = args.str("done");
  const int64_t from = args.num("from", 0);
  const int64_t count = args.num("count", 0);
  const int64_t local_ticks = args.num("local", 0);
  const int64_t timeout_every = args.num("timeout_every", 0);
  const int64_t timeout_s = args.num("timeout_s", 60);
  args.check_all_used();
  if (broker.empty() || done_name.empty() ||
      (recv_name.empty() != quit_name.empty()) ||
      (send_name.empty() && count != 0)) {
    std::fprintf(stderr,
                 "dchan-test-worker: span-loop needs --broker, --done, "
                 "--recv_chan with --quit, --send_chan with --count\n");
    return 2;
  }
  start_watchdog(timeout_s);
  dchan::Client client = dchan::Client::connect(broker);
  dchan::Chan<int64_t> out, in, quit;  // nil unless given
  if (!send_name.empty()) out = client.chan<int64_t>(send_name, 0);
  if (!recv_name.empty()) {
    in = client.chan<int64_t>(recv_name, 0);
    quit = client.chan<int64_t>(quit_name, 0);
  }
  dchan::Chan<int64_t> done = client.chan<int64_t>(done_name, 16);
  dchan::Chan<int64_t> local = dchan::make_chan<int64_t>(0);
  std::thread ticker([&] {
    for (int64_t i = 0; i < local_ticks; ++i) local.send(i);
  });
  int64_t next = from, got = 0, sum = 0, sumsq = 0, ticks = 0, timeouts = 0;
  bool receiving = !recv_name.empty();
  int64_t round = 0;
  for (;;) {
    const bool sending = next < from + count;
    if (!sending && !receiving && ticks == local_ticks) break;
    std::vector<dchan::Case> cases;
    if (sending) cases.emplace_back(dchan::on_send(out, next, [&] { ++next; }));
    if (receiving) {
      cases.emplace_back(dchan::on_recv(in, [&](std::optional<int64_t> v) {
        if (!v) return;
        ++got;
        sum += *v;
        sumsq += *v * *v;
      }));
      cases.emplace_back(dchan::on_recv(
          quit, [&](std::optional<int64_t>) { receiving = false; }));
    }
    cases.emplace_back(dchan::on_recv(local, [&](std::optional<int64_t> v) {
      if (v) ++ticks;
    }));
    if (timeout_every > 0 && ++round % timeout_every == 0) {
      cases.emplace_back(
          dchan::on_recv(dchan::after(std::chrono::milliseconds(1 + round % 3)),
                         [&](auto) { ++timeouts; }));
    }
    dchan::select(std::span<dchan::Case>(cases));
    if (sending && next == from + count) done.send(1);
  }
  ticker.join();
  say("span sent %lld recv %lld sum %lld sumsq %lld local %lld timeouts %lld",
      static_cast<long long>(next - from), static_cast<long long>(got),
      static_cast<long long>(sum), static_cast<long long>(sumsq),
      static_cast<long long>(ticks), static_cast<long long>(timeouts));
  return 0;
}

bool is_sync_mode(const std::string& mode) {
  return mode == "lock-loop" || mode == "lock-once" || mode == "hold-lock" ||
         mode == "wg-participant" || mode == "cas-loop";
}

int run_sync(const std::string& mode, Args& args) {
  const std::string broker = args.str("broker");
  const int64_t timeout_s = args.num("timeout_s", 60);
  const int64_t ttl_ms = args.num("ttl_ms", 0);
  const std::string client_name = args.str("client_name");
  std::string name;
  int64_t rounds = 0, fence = 0, stale_writes = 0;
  std::string file, marker, payload, go_file, ready, go, kind = "mutex";
  bool forgive = false, keep = false, stay = false;
  if (mode == "lock-loop" || mode == "lock-once" || mode == "hold-lock") {
    name = args.str("lock");
  } else if (mode == "wg-participant") {
    name = args.str("wg");
    ready = args.str("ready");
    go = args.str("go");
    forgive = args.num("forgive", 0) != 0;
  } else {
    name = args.str("value");
  }
  if (mode == "lock-loop" || mode == "cas-loop") {
    rounds = args.num("rounds", 0);
    go_file = args.str("go_file");
  }
  if (mode == "lock-loop") {
    file = args.str("file");
    marker = args.str("marker");
    keep = args.num("keep", 0) != 0;
  }
  if (mode == "lock-once" || mode == "hold-lock") {
    fence = args.num("fence", 0);
    kind = args.str("kind", "mutex");
  }
  if (mode == "lock-once") {
    payload = args.str("payload", "write");
    stay = args.num("stay", 0) != 0;
  }
  if (mode == "hold-lock") {
    go_file = args.str("go_file");
    stale_writes = args.num("stale_writes", 0);
  }
  args.check_all_used();
  if (broker.empty() || name.empty() || rounds < 0 || ttl_ms < 0 ||
      (mode == "lock-loop" && (file.empty() || marker.empty())) ||
      !is_lock_kind(kind) ||
      (mode == "wg-participant" && (ready.empty() || go.empty()))) {
    std::fprintf(stderr, "dchan-test-worker: %s: missing arguments\n",
                 mode.c_str());
    return 2;
  }
  start_watchdog(timeout_s);

  dchan::ClientOptions options;
  if (ttl_ms > 0) options.session_ttl = std::chrono::milliseconds(ttl_ms);
  if (!client_name.empty()) options.name = client_name;
  const std::string who =
      client_name.empty() ? absl::StrCat("pid-", ::getpid()) : client_name;
  dchan::Client client = dchan::Client::connect(broker, options);

  if (mode == "lock-loop") {
    return lock_loop(client, name, rounds, file, marker, go_file, keep);
  }
  if (mode == "lock-once") {
    return lock_once(client, name, kind, fence, payload, stay);
  }
  if (mode == "hold-lock") {
    return hold_lock(client, name, kind, fence, go_file, stale_writes, who);
  }
  if (mode == "wg-participant") {
    return wg_participant(client, name, forgive, ready, go, who);
  }
  return cas_loop(client, name, rounds, go_file);
}

int run(const std::string& mode, Args& args) {
  if (is_sync_mode(mode)) return run_sync(mode, args);
  if (mode == "span-loop") return span_loop(args);
  const std::string broker = args.str("broker");
  const std::string name = args.str("chan");
  const int64_t cap = args.num("cap", 0);
  const std::string type = args.str("type", "int64");
  const int64_t timeout_s = args.num("timeout_s", 60);
  int64_t from = 0, count = 0, value = 42, delay_ms = 0, window = 0, batch = 0;
  if (mode == "produce") {
    from = args.num("from", 0);
    count = args.num("count", 0);
    delay_ms = args.num("delay_ms", 0);
    window = args.num("window", 0);
  }
  bool ahead = false;
  if (mode == "consume") {
    batch = args.num("batch", 0);
    ahead = args.num("ahead", 0) != 0;
  }
  if (mode == "rendezvous-send" || mode == "send-for" || mode == "span-one") {
    value = args.num("value", 42);
  }
  std::string role;
  if (mode == "span-one") role = args.str("role");
  int64_t ms = 0;
  bool again = false;
  if (mode == "recv-for" || mode == "send-for") {
    ms = args.num("ms", 0);
    again = args.num("again", 0) != 0;
  }
  args.check_all_used();
  if (broker.empty() || name.empty() || cap < 0 || window < 0 || batch < 0 ||
      (type != "int64" && type != "string")) {
    std::fprintf(stderr,
                 "dchan-test-worker: needs --broker, --chan, --cap >= 0, "
                 "--type=int64|string\n");
    return 2;
  }

  start_watchdog(timeout_s);

  dchan::Client client = dchan::Client::connect(broker);
  const size_t ucap = static_cast<size_t>(cap);

  if (mode == "produce") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(
        name, ucap, {.send_window = static_cast<size_t>(window)});
    say("ready");
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    for (int64_t v = from; v < from + count; ++v) ch.send(v);
    dchan::flush(ch);
    say("sent %lld", static_cast<long long>(count));
    return 0;
  }
  if (mode == "consume") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(
        name, ucap,
        {.recv_batch = static_cast<size_t>(batch), .recv_ahead = ahead});
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
  if (mode == "span-one") {
    dchan::Chan<int64_t> ch = client.chan<int64_t>(name, ucap);
    dchan::Chan<int64_t> never = dchan::make_chan<int64_t>(0);
    say("ready");
    if (role == "send") {
      dchan::select(
          dchan::on_send(
              ch, value,
              [&] { say("sent %lld", static_cast<long long>(value)); }),
          dchan::on_recv(never, [](auto) { say("local fired"); }));
    } else {
      dchan::select(dchan::on_recv(ch,
                                   [](std::optional<int64_t> v) {
                                     if (v) {
                                       print_value(*v);
                                     } else {
                                       say("closed");
                                     }
                                   }),
                    dchan::on_recv(never, [](auto) { say("local fired"); }));
    }
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
