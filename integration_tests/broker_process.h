// broker_process.h — child processes for dchan's integration tests: a real
// dchan-broker and real worker programs, all over loopback.
//
//   dchan::testing::BrokerProcess broker;             // spawns dchan-broker
//   dchan::testing::Process w = dchan::testing::Process::spawn(
//       kWorkerPath, {"recv-one", "--broker=" + broker.address(), ...});
//   dchan::testing::ProcessResult r = w.wait(std::chrono::seconds(30));
//   EXPECT_EQ(r.exit_code, 0) << r;
//
// Every process is bounded in time and reaped: wait() kills a child that
// outlives its timeout (and says so in the result), a Process destroyed
// while its child runs kills and reaps it, and a BrokerProcess destroyed
// while its broker runs stops it with SIGTERM and expects exit status 0
// (the leak check of sanitizer builds included); a test
// process that dies without that (a crash, SIGKILL) takes its children with
// it (PR_SET_PDEATHSIG). Children get /dev/null as stdin; their stdout and
// stderr are captured through close-on-exec pipes (so that one child never
// holds another's pipe open).
//
// Thread safety: none; a Process or BrokerProcess belongs to one thread (the
// test's). Distinct objects may be used from distinct threads.
#ifndef DCHAN_INTEGRATION_TESTS_BROKER_PROCESS_H_
#define DCHAN_INTEGRATION_TESTS_BROKER_PROCESS_H_

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace dchan::testing {

// How a child ended, and everything it printed.
struct ProcessResult {
  int exit_code = -1;      // the exit status, or -1 if killed by a signal
  int term_signal = 0;     // the signal that ended it, or 0
  bool timed_out = false;  // wait() gave up on it and killed it (SIGKILL)
  std::chrono::steady_clock::duration elapsed{};  // spawn to reap
  std::string out;                                // its stdout
  std::string err;                                // its stderr

  // The lines of `out`, without their newlines.
  std::vector<std::string> lines() const;
};

// For test failure messages: exit status, stdout and stderr.
std::ostream& operator<<(std::ostream& os, const ProcessResult& r);

// One spawned child. Move-only; the destructor kills (SIGKILL) and reaps a
// child that still runs.
class Process {
 public:
  // Starts `path` with `args` (argv[1..]): fork (on one long-lived thread,
  // so that the child's PR_SET_PDEATHSIG SIGKILL fires only when this
  // process ends) and exec. Throws std::runtime_error if it cannot fork or
  // exec.
  static Process spawn(const std::string& path,
                       const std::vector<std::string>& args);

  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process();

  pid_t pid() const noexcept { return pid_; }

  // Reads the child's output until its stdout contains `text`: true once it
  // does, false if the child closed its stdout (or exited) first or
  // `timeout` passed. Does not reap.
  bool wait_for_output(const std::string& text,
                       std::chrono::milliseconds timeout);

  // The first line of stdout: waits up to `timeout` for a newline. nullopt
  // if none came.
  std::optional<std::string> first_line(std::chrono::milliseconds timeout);

  // True while the child has not exited (reaps it if it has; a later wait()
  // still reports how it ended).
  bool running();

  // Sends `sig` to the child if it has not been reaped.
  void signal(int sig);

  // Waits up to `timeout` for the child to exit, reading its output
  // meanwhile, and reaps it. A child still running at the deadline is
  // killed with SIGKILL and reaped, and the result says timed_out. Once
  // reaped, later calls return the same result at once.
  ProcessResult wait(std::chrono::milliseconds timeout);

  // Reads whatever output is ready, without waiting.
  void read_available();

  // Output read so far (stdout), without waiting.
  const std::string& output_so_far() const noexcept { return result_.out; }

 private:
  Process() = default;
  // Reads what the pipes have within `budget`; returns false once both
  // are at EOF.
  bool pump(std::chrono::milliseconds budget);
  // Non-blocking waitpid; records the status. True once reaped.
  bool try_reap();
  void close_pipes() noexcept;
  void kill_and_reap() noexcept;

  pid_t pid_ = -1;
  bool reaped_ = false;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::chrono::steady_clock::time_point started_;
  ProcessResult result_;
};

// Waits for every process in `ps` within one shared `bound` (see
// Process::wait: a child still running at the deadline is killed).
std::vector<ProcessResult> wait_all(std::vector<Process>& ps,
                                    std::chrono::milliseconds bound);

// A snapshot of one broker channel, from the broker's Inspect service.
struct ChanInfo {
  std::string type_name;
  uint64_t len = 0;
  uint64_t cap = 0;
  bool closed = false;
  uint64_t blocked_senders = 0;
  uint64_t blocked_receivers = 0;
};

// A snapshot of one broker lock, wait group or atomic value (Inspect).
struct ObjectState {
  std::string type_name;
  // Locks: the sessions holding it, the token of the last exclusive
  // acquisition, and the queued lock requests.
  std::vector<uint64_t> holder_sessions;
  uint64_t token = 0;
  uint64_t queued_lockers = 0;
  // Wait groups: the counter, blocked waits, and the failure message (empty
  // while it has not failed).
  int64_t count = 0;
  uint64_t blocked_waiters = 0;
  std::string failure;
  // Atomic values: whether a value is stored.
  bool has_value = false;
};

// A snapshot of one broker session (Inspect.ListSessions).
struct SessionState {
  uint64_t id = 0;
  std::string peer;
  std::string client_name;
  uint64_t ttl_ms = 0;
  uint64_t locks_held = 0;
  uint64_t open_handles = 0;
};

// A dchan-broker child listening on 127.0.0.1 on a port it picked.
class BrokerProcess {
 public:
  // Spawns `path` (default: the dchan-broker this build made) with
  // --listen=127.0.0.1:0 and `extra_args`, and waits up to 20 s for its
  // startup line "dchan-broker listening on HOST:PORT ...". Throws
  // std::runtime_error (with the broker's output) if it does not come.
  explicit BrokerProcess(std::vector<std::string> extra_args = {});
  BrokerProcess(const BrokerProcess&) = delete;
  BrokerProcess& operator=(const BrokerProcess&) = delete;
  // A broker still running is stopped as stop() does (resumed first, in
  // case a test froze it), and a test failure is recorded (ADD_FAILURE) if
  // it does not then exit 0 within kStopBound: a broker must shut down
  // cleanly on SIGTERM, and in sanitizer builds its exit status is also
  // the leak check's verdict (LeakSanitizer runs when it returns from
  // main). A broker the test stopped, killed, signalled to end or waited
  // for itself is left alone; one that exited by itself without the test
  // asking (a crash, a sanitizer's abort) is a test failure unless it exited
  // 0.
  ~BrokerProcess();

  // How long the destructor waits for a broker to exit after SIGTERM.
  static constexpr std::chrono::seconds kStopBound{30};

  // "127.0.0.1:PORT".
  const std::string& address() const noexcept { return address_; }
  int port() const noexcept { return port_; }
  // The broker's process id (for /proc/<pid>/status).
  pid_t pid() const noexcept { return process_.pid(); }

  // True while the broker has not exited (reaps it if it has).
  bool running() { return process_.running(); }

  // Waits up to `timeout` for the broker to exit by itself (SIGKILL after
  // it, as Process::wait) and reaps it.
  ProcessResult wait(std::chrono::milliseconds timeout) {
    ended_by_test_ = true;
    return process_.wait(timeout);
  }

  // Reads whatever the broker has printed, without waiting (keeps its pipes
  // from filling while a test runs long).
  void read_available() { process_.read_available(); }

  // Sends `sig` (SIGKILL by default) and reaps the broker.
  ProcessResult kill(int sig = 9);

  // Sends `sig` to the broker without waiting (e.g. SIGSTOP to freeze it).
  void signal(int sig) {
    if (sig != SIGSTOP && sig != SIGCONT) ended_by_test_ = true;
    process_.signal(sig);
  }

  // Graceful stop: SIGTERM, then waits up to `timeout` (SIGKILL after it).
  ProcessResult stop(
      std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Asks the broker (Inspect.ListObjects) about channel `name`: nullopt if
  // it does not host it or cannot be asked.
  std::optional<ChanInfo> chan_info(const std::string& name);

  // Polls chan_info(name) until `pred` holds for it: true then, false after
  // `timeout`.
  bool wait_for_chan(const std::string& name,
                     const std::function<bool(const ChanInfo&)>& pred,
                     std::chrono::milliseconds timeout);

  // Asks the broker about lock, wait group or atomic value `name`: nullopt
  // if it does not host it or cannot be asked.
  std::optional<ObjectState> object_state(const std::string& name);

  // Polls object_state(name) until `pred` holds for it: true then, false
  // after `timeout`.
  bool wait_for_object(const std::string& name,
                       const std::function<bool(const ObjectState&)>& pred,
                       std::chrono::milliseconds timeout);

  // The broker's live sessions; nullopt if it cannot be asked.
  std::optional<std::vector<SessionState>> sessions();

  // Polls sessions() until `pred` holds for them: true then, false after
  // `timeout`.
  bool wait_for_sessions(
      const std::function<bool(const std::vector<SessionState>&)>& pred,
      std::chrono::milliseconds timeout);

 private:
  Process process_;
  // The test killed, stopped, signalled or waited for the broker: its end
  // is the test's business.
  bool ended_by_test_ = false;
  std::string address_;
  int port_ = 0;
};

}  // namespace dchan::testing

#endif  // DCHAN_INTEGRATION_TESTS_BROKER_PROCESS_H_
