#include "broker_process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "dchan/v1/inspect.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

extern char** environ;

#ifndef DCHAN_BROKER_PATH
#error "DCHAN_BROKER_PATH must name the dchan-broker binary"
#endif

namespace dchan::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

milliseconds remaining(steady_clock::time_point deadline) {
  const auto left = deadline - steady_clock::now();
  if (left <= steady_clock::duration::zero()) return milliseconds(0);
  return std::chrono::ceil<milliseconds>(left);
}

// Closes the fd (if open) and marks it closed.
void close_fd(int& fd) noexcept {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Runs fork() on one thread that lives as long as the process: a child's
// PR_SET_PDEATHSIG fires when the *thread* that forked it exits, so forking
// on a test's short-lived std::thread would kill the child with it.
class Forker {
 public:
  static Forker& get() {
    static Forker* forker = new Forker;  // never destroyed: nor its thread
    return *forker;
  }

  // Runs `fork_child` (which forks and returns the pid, or -1 with errno)
  // on the forker thread; returns its result, errno as it left it.
  pid_t run(const std::function<pid_t()>& fork_child) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return job_ == nullptr; });
    job_ = &fork_child;
    done_ = false;
    cv_.notify_all();
    cv_.wait(lock, [&] { return done_; });
    job_ = nullptr;
    cv_.notify_all();
    errno = error_;
    return pid_;
  }

 private:
  Forker() {
    std::thread([this] { loop(); }).detach();
  }

  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return job_ != nullptr && !done_; });
      pid_ = (*job_)();
      error_ = errno;
      done_ = true;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<pid_t()>* job_ = nullptr;  // set: one to run
  bool done_ = false;
  pid_t pid_ = -1;
  int error_ = 0;
};

}  // namespace

std::vector<std::string> ProcessResult::lines() const {
  std::vector<std::string> v = absl::StrSplit(out, '\n', absl::SkipEmpty());
  return v;
}

std::ostream& operator<<(std::ostream& os, const ProcessResult& r) {
  os << "[exit_code=" << r.exit_code << " signal=" << r.term_signal
     << (r.timed_out ? " TIMED OUT (killed)" : "") << " after "
     << std::chrono::duration_cast<milliseconds>(r.elapsed).count()
     << " ms]\n--- stdout ---\n"
     << r.out << "--- stderr ---\n"
     << r.err << "--------------";
  return os;
}

Process Process::spawn(const std::string& path,
                       const std::vector<std::string>& args) {
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    throw std::runtime_error(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw std::runtime_error(absl::StrCat("pipe2: ", std::strerror(e)));
  }

  // The child writes exec's errno here if exec fails; it closes at exec.
  int exec_pipe[2];
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) {
      ::close(fd);
    }
    throw std::runtime_error(absl::StrCat("pipe2: ", std::strerror(e)));
  }

  std::vector<std::string> argv_storage;
  argv_storage.reserve(args.size() + 1);
  argv_storage.push_back(path);
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  Process p;
  p.started_ = steady_clock::now();
  const pid_t parent = ::getpid();
  // The child dies with this process (PR_SET_PDEATHSIG), so that a test
  // that crashes or is killed leaves no broker or worker behind. Between
  // fork and exec it makes async-signal-safe calls only.
  p.pid_ = Forker::get().run([&]() -> pid_t {
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) {
      _exit(127);  // the parent is gone already (or cannot be followed)
    }
    const int devnull = ::open("/dev/null", O_RDONLY);
    // dup2 onto 0, 1 and 2 clears close-on-exec there; the originals close
    // at exec because they are O_CLOEXEC.
    if (devnull < 0 || ::dup2(devnull, 0) < 0 || ::dup2(out_pipe[1], 1) < 0 ||
        ::dup2(err_pipe[1], 2) < 0) {
      _exit(127);
    }
    ::execve(path.c_str(), argv.data(), environ);
    const int e = errno;
    (void)!::write(exec_pipe[1], &e, sizeof e);
    _exit(127);
  });
  const int fork_error = errno;
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(exec_pipe[1]);
  int exec_error = 0;
  if (p.pid_ > 0) {
    // EOF: exec succeeded (the pipe closed at exec).
    while (::read(exec_pipe[0], &exec_error, sizeof exec_error) < 0 &&
           errno == EINTR) {
    }
  }
  ::close(exec_pipe[0]);
  if (p.pid_ <= 0 || exec_error != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    if (p.pid_ > 0) {
      int status = 0;
      while (::waitpid(p.pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
    p.pid_ = -1;
    throw std::runtime_error(
        absl::StrCat(exec_error != 0 ? "exec " : "fork ", path, ": ",
                     std::strerror(exec_error != 0 ? exec_error : fork_error)));
  }
  p.out_fd_ = out_pipe[0];
  p.err_fd_ = err_pipe[0];
  return p;
}

Process::Process(Process&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      reaped_(std::exchange(other.reaped_, false)),
      out_fd_(std::exchange(other.out_fd_, -1)),
      err_fd_(std::exchange(other.err_fd_, -1)),
      started_(other.started_),
      result_(std::move(other.result_)) {}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    kill_and_reap();
    close_pipes();
    pid_ = std::exchange(other.pid_, -1);
    reaped_ = std::exchange(other.reaped_, false);
    out_fd_ = std::exchange(other.out_fd_, -1);
    err_fd_ = std::exchange(other.err_fd_, -1);
    started_ = other.started_;
    result_ = std::move(other.result_);
  }
  return *this;
}

Process::~Process() {
  kill_and_reap();
  close_pipes();
}

void Process::kill_and_reap() noexcept {
  if (pid_ <= 0 || reaped_) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

void Process::close_pipes() noexcept {
  close_fd(out_fd_);
  close_fd(err_fd_);
}

bool Process::pump(milliseconds budget) {
  pollfd fds[2];
  int n = 0;
  if (out_fd_ >= 0) fds[n++] = {out_fd_, POLLIN, 0};
  if (err_fd_ >= 0) fds[n++] = {err_fd_, POLLIN, 0};
  if (n == 0) return false;
  const int ready = ::poll(fds, n, static_cast<int>(budget.count()));
  if (ready <= 0) return true;  // timeout or EINTR: try again later
  for (int i = 0; i < n; ++i) {
    if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    const bool is_out = fds[i].fd == out_fd_;
    char buf[4096];
    const ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
    if (got > 0) {
      (is_out ? result_.out : result_.err)
          .append(buf, static_cast<size_t>(got));
    } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
      close_fd(is_out ? out_fd_ : err_fd_);
    }
  }
  return out_fd_ >= 0 || err_fd_ >= 0;
}

bool Process::try_reap() {
  if (reaped_) return true;
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r != pid_) return false;
  reaped_ = true;
  result_.elapsed = steady_clock::now() - started_;
  if (WIFEXITED(status)) {
    result_.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result_.exit_code = -1;
    result_.term_signal = WTERMSIG(status);
  }
  return true;
}

bool Process::wait_for_output(const std::string& text, milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  while (result_.out.find(text) == std::string::npos) {
    if (out_fd_ < 0) return false;
    const milliseconds left = remaining(deadline);
    if (left.count() == 0) return false;
    pump(std::min(left, milliseconds(100)));
  }
  return true;
}

std::optional<std::string> Process::first_line(milliseconds timeout) {
  if (!wait_for_output("\n", timeout)) return std::nullopt;
  return result_.out.substr(0, result_.out.find('\n'));
}

void Process::read_available() { pump(milliseconds(0)); }

bool Process::running() { return pid_ > 0 && !try_reap(); }

void Process::signal(int sig) {
  if (pid_ > 0 && !reaped_) ::kill(pid_, sig);
}

ProcessResult Process::wait(milliseconds timeout) {
  if (pid_ <= 0) return result_;  // moved from: never kill(-1, ...)
  const auto deadline = steady_clock::now() + timeout;
  while (!try_reap()) {
    const milliseconds left = remaining(deadline);
    if (left.count() == 0) {
      result_.timed_out = true;
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      reaped_ = true;
      result_.elapsed = steady_clock::now() - started_;
      result_.exit_code = -1;
      result_.term_signal = SIGKILL;
      break;
    }
    // Read while waiting, so that a chatty child never blocks on a full
    // pipe; sleep briefly once both pipes are at EOF.
    if (!pump(std::min(left, milliseconds(20)))) {
      std::this_thread::sleep_for(std::min(left, milliseconds(5)));
    }
  }
  // The child is gone: drain what it left in the pipes (bounded, in case a
  // child of its own still holds them).
  const auto drain_deadline = steady_clock::now() + milliseconds(2000);
  while (pump(std::min(remaining(drain_deadline), milliseconds(50))) &&
         remaining(drain_deadline).count() > 0) {
  }
  close_pipes();
  return result_;
}

std::vector<ProcessResult> wait_all(std::vector<Process>& ps,
                                    milliseconds bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  std::vector<ProcessResult> results;
  for (Process& p : ps) {
    const auto left = std::chrono::duration_cast<milliseconds>(
        deadline - std::chrono::steady_clock::now());
    results.push_back(p.wait(std::max(left, milliseconds(0))));
  }
  return results;
}

BrokerProcess::BrokerProcess(std::vector<std::string> extra_args)
    : process_([&] {
        std::vector<std::string> args = {"--listen=127.0.0.1:0"};
        args.insert(args.end(), extra_args.begin(), extra_args.end());
        return Process::spawn(DCHAN_BROKER_PATH, args);
      }()) {
  // "dchan-broker listening on 127.0.0.1:PORT (in-memory)"
  const std::optional<std::string> line =
      process_.first_line(std::chrono::seconds(20));
  constexpr std::string_view kPrefix = "dchan-broker listening on ";
  if (line && line->rfind(kPrefix, 0) == 0) {
    const std::string rest = line->substr(kPrefix.size());
    const std::string hostport = rest.substr(0, rest.find(' '));
    const size_t colon = hostport.rfind(':');
    if (colon != std::string::npos &&
        absl::SimpleAtoi(hostport.substr(colon + 1), &port_) && port_ > 0) {
      address_ = absl::StrCat("127.0.0.1:", port_);
      return;
    }
  }
  std::ostringstream what;
  what << "dchan-broker did not print its startup line; got: "
       << line.value_or("(nothing)") << "\n"
       << process_.wait(milliseconds(1000));
  throw std::runtime_error(what.str());
}

BrokerProcess::~BrokerProcess() {
  if (!process_.running()) {
    if (ended_by_test_) return;
    const ProcessResult r = process_.wait(std::chrono::milliseconds(0));
    if (r.exit_code != 0) {
      ADD_FAILURE() << "dchan-broker exited by itself during the test\n" << r;
    }
    return;
  }
  process_.signal(SIGCONT);
  const ProcessResult r = stop(kStopBound);
  if (r.exit_code != 0) {
    ADD_FAILURE() << "dchan-broker did not exit 0 after SIGTERM at the end "
                     "of the test (a leak report, if any, is in its stderr)\n"
                  << r;
  }
}

ProcessResult BrokerProcess::kill(int sig) {
  ended_by_test_ = true;
  process_.signal(sig);
  return process_.wait(std::chrono::seconds(10));
}

ProcessResult BrokerProcess::stop(milliseconds timeout) {
  ended_by_test_ = true;
  process_.signal(SIGTERM);
  return process_.wait(timeout);
}

namespace {

std::unique_ptr<dchan::v1::Inspect::Stub> inspect_stub(
    const std::string& address) {
  return dchan::v1::Inspect::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

std::optional<dchan::v1::ObjectInfo> find_object(const std::string& address,
                                                 const std::string& name) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  dchan::v1::ListObjectsResponse resp;
  const grpc::Status s = inspect_stub(address)->ListObjects(
      &ctx, dchan::v1::ListObjectsRequest(), &resp);
  if (!s.ok()) return std::nullopt;
  for (const dchan::v1::ObjectInfo& o : resp.objects()) {
    if (o.name() == name) return o;
  }
  return std::nullopt;
}

}  // namespace

std::optional<ChanInfo> BrokerProcess::chan_info(const std::string& name) {
  if (!process_.running()) return std::nullopt;
  const std::optional<dchan::v1::ObjectInfo> o = find_object(address_, name);
  if (!o) return std::nullopt;
  ChanInfo info;
  info.type_name = o->type_name();
  info.len = o->len();
  info.cap = o->cap();
  info.closed = o->closed();
  info.blocked_senders = o->blocked_senders();
  info.blocked_receivers = o->blocked_receivers();
  return info;
}

std::optional<ObjectState> BrokerProcess::object_state(
    const std::string& name) {
  if (!process_.running()) return std::nullopt;
  const std::optional<dchan::v1::ObjectInfo> o = find_object(address_, name);
  if (!o) return std::nullopt;
  ObjectState st;
  st.type_name = o->type_name();
  st.holder_sessions.assign(o->holder_sessions().begin(),
                            o->holder_sessions().end());
  st.token = o->token();
  st.queued_lockers = o->queued_lockers();
  st.count = o->count();
  st.blocked_waiters = o->blocked_waiters();
  st.failure = o->failure();
  st.has_value = o->has_value();
  return st;
}

bool BrokerProcess::wait_for_object(
    const std::string& name,
    const std::function<bool(const ObjectState&)>& pred, milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  for (;;) {
    process_.read_available();  // keep the broker's pipes from filling
    const std::optional<ObjectState> st = object_state(name);
    if (st && pred(*st)) return true;
    if (remaining(deadline).count() == 0) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
}

std::optional<std::vector<SessionState>> BrokerProcess::sessions() {
  if (!process_.running()) return std::nullopt;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  dchan::v1::ListSessionsResponse resp;
  const grpc::Status s = inspect_stub(address_)->ListSessions(
      &ctx, dchan::v1::ListSessionsRequest(), &resp);
  if (!s.ok()) return std::nullopt;
  std::vector<SessionState> out;
  for (const dchan::v1::SessionInfo& si : resp.sessions()) {
    SessionState st;
    st.id = si.id();
    st.peer = si.peer();
    st.client_name = si.client_name();
    st.ttl_ms = si.ttl_ms();
    st.locks_held = si.locks_held();
    st.open_handles = si.open_handles();
    out.push_back(std::move(st));
  }
  return out;
}

bool BrokerProcess::wait_for_sessions(
    const std::function<bool(const std::vector<SessionState>&)>& pred,
    milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  for (;;) {
    process_.read_available();
    const std::optional<std::vector<SessionState>> ss = sessions();
    if (ss && pred(*ss)) return true;
    if (remaining(deadline).count() == 0) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
}

bool BrokerProcess::wait_for_chan(
    const std::string& name, const std::function<bool(const ChanInfo&)>& pred,
    milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  for (;;) {
    process_.read_available();  // keep the broker's pipes from filling
    const std::optional<ChanInfo> info = chan_info(name);
    if (info && pred(*info)) return true;
    if (remaining(deadline).count() == 0) return false;
    std::this_thread::sleep_for(milliseconds(20));
  }
}

}  // namespace dchan::testing
