// bench/child_process.h — the processes a benchmark starts for itself
// (redis-server, a relay, dchan-broker, a partner that plays B's side), the
// address they report, and a free loopback port to give them. Header-only;
// one thread at a time per ChildProcess, apart from ExitIfItDies' polls.
//
// A child dies with the benchmark (PR_SET_PDEATHSIG), inherits its CPU
// affinity (so `taskset -c 0` pins both), and is stopped by stop() or the
// destructor: its stdin closed if it was a pipe (and 5 s to end at that
// EOF), then SIGTERM, then SIGKILL after 5 s.
#ifndef DCHAN_BENCH_CHILD_PROCESS_H_
#define DCHAN_BENCH_CHILD_PROCESS_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace dchan::bench {

// The steady clock in ns: CLOCK_MONOTONIC, so a figure a partner process
// reports (e.g. when its last receive returned) compares with this
// process's own.
inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { stop(); }

  // Where the child's stdin comes from: ours, or a pipe that write_all()
  // feeds and close_stdin() ends.
  enum class Stdin { kInherit, kPipe };

  // Starts argv[0] (looked up in PATH unless it has a '/') with its stdout
  // on a pipe (see read_line) and its stderr on ours. Throws
  // std::runtime_error if it cannot fork; a failed exec shows as the child
  // exiting with 127.
  void start(const std::vector<std::string>& argv, Stdin in = Stdin::kInherit) {
    stop();
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    int in_fds[2] = {-1, -1};
    if (in == Stdin::kPipe && pipe2(in_fds, O_CLOEXEC) != 0) {
      close(fds[0]);
      close(fds[1]);
      throw std::runtime_error("pipe2 failed");
    }
    std::vector<char*> args;
    for (const std::string& a : argv) {
      args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) {
      for (int fd : {fds[0], fds[1], in_fds[0], in_fds[1]}) {
        if (fd >= 0) close(fd);
      }
      throw std::runtime_error("fork failed");
    }
    if (pid_ == 0) {
      // Child: only async-signal-safe calls until exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      dup2(fds[1], STDOUT_FILENO);
      if (in_fds[0] >= 0) dup2(in_fds[0], STDIN_FILENO);
      execvp(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    out_fd_ = fds[0];
    if (in_fds[0] >= 0) {
      close(in_fds[0]);
      in_fd_ = in_fds[1];
    }
    name_ = argv.empty() ? std::string() : argv[0];
  }

  // Writes `n` bytes to the child's stdin (started with Stdin::kPipe).
  // Throws std::runtime_error if the child is gone.
  void write_all(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = write(in_fd_, p, n);
      if (w <= 0) throw std::runtime_error(name_ + " is gone");
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  // Reads exactly `n` bytes of the child's stdout, however long the child
  // takes (a partner answering a request). Throws std::runtime_error if it
  // exits first.
  void read_exact(void* data, std::size_t n) {
    char* p = static_cast<char*>(data);
    while (n > 0) {
      const ssize_t r = read(out_fd_, p, n);
      if (r <= 0) throw std::runtime_error(name_ + " is gone");
      p += r;
      n -= static_cast<std::size_t>(r);
    }
  }

  // The child's next stdout line (with its '\n'), within 20 s. Throws
  // std::runtime_error if the child exits or stays silent.
  std::string read_line() {
    using Clock = std::chrono::steady_clock;
    std::string line;
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(20);
    while (line.empty() || line.back() != '\n') {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - Clock::now());
      pollfd p{out_fd_, POLLIN, 0};
      if (left.count() <= 0 ||
          poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        throw std::runtime_error(name_ + " printed no line within 20 s");
      }
      char c;
      if (read(out_fd_, &c, 1) != 1) {
        throw std::runtime_error(name_ + " exited before printing a line");
      }
      line.push_back(c);
    }
    return line;
  }

  // True while the child has not exited.
  bool running() {
    int status = 0;
    return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
  }

  pid_t pid() const { return pid_; }

  // Closes its stdin pipe, if it has one, and gives it 5 s to end at that
  // EOF; then SIGTERM, then SIGKILL if it has not exited within 5 s.
  // Idempotent.
  void stop() {
    const bool had_stdin = in_fd_ >= 0;
    if (had_stdin) close(in_fd_);
    in_fd_ = -1;
    if (pid_ > 0) {
      if (!had_stdin || !exited_within(std::chrono::seconds(5))) {
        kill(pid_, SIGTERM);
        if (!exited_within(std::chrono::seconds(5))) {
          kill(pid_, SIGKILL);
          waitpid(pid_, nullptr, 0);
        }
      }
      pid_ = -1;
    }
    if (out_fd_ >= 0) close(out_fd_);
    out_fd_ = -1;
  }

 private:
  // Waits up to `limit` for the child to exit: true if it did (reaped).
  bool exited_within(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (waitpid(pid_, nullptr, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      usleep(2000);
    }
    return true;
  }

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int in_fd_ = -1;
  std::string name_;
};

// Ends the program (exit status 1, "<program>: <what>" on stderr) if
// `child` exits while this object lives, polling every 50 ms: a benchmark
// that waits for its partner process without a deadline would otherwise
// hang when the partner dies.
class ExitIfItDies {
 public:
  ExitIfItDies(ChildProcess& child, std::string program, std::string what)
      : thread_([&child, program = std::move(program),
                 what = std::move(what)](std::stop_token stop) {
          while (!stop.stop_requested()) {
            if (!child.running()) {
              std::fprintf(stderr, "%s: %s\n", program.c_str(), what.c_str());
              std::_Exit(1);
            }
            usleep(50000);
          }
        }) {}

 private:
  std::jthread thread_;  // its destructor stops and joins the polls
};

// The HOST:PORT of the "... listening on HOST:PORT ..." line a server
// prints first (dchan-broker, the relay), read from `child`'s stdout.
// Throws std::runtime_error if the first line is something else.
inline std::string ReadListenAddress(ChildProcess& child) {
  const std::string line = child.read_line();
  const std::string key = "listening on ";
  const std::size_t at = line.find(key);
  if (at == std::string::npos) {
    throw std::runtime_error("unexpected server output: " + line);
  }
  const std::size_t begin = at + key.size();
  return line.substr(begin, line.find_first_of(" \n", begin) - begin);
}

// The child's side of ReadListenAddress, for a server that is this very
// binary re-executed: blocks SIGTERM and SIGINT (before `start` runs, so
// that the threads it starts inherit the mask and only sigwait sees them),
// calls `start`, which starts the server and returns its address or throws,
// prints "<what> listening on <address>", waits for SIGTERM or SIGINT, calls
// `stop` and returns 0. A `start` that throws is reported on stderr: 1.
template <class Start, class Stop>
int ServeUntilSignalled(const char* what, Start start, Stop stop) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::string address;
  try {
    address = start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what());
    return 1;
  }
  std::printf("%s listening on %s\n", what, address.c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  stop();
  return 0;
}

// A loopback TCP port nobody listens on right now (the kernel's pick for an
// ephemeral bind). Another process may take it before the server binds it;
// the server then fails to start, and the caller reports that.
inline int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    throw std::runtime_error("cannot bind a loopback port");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace dchan::bench

#endif  // DCHAN_BENCH_CHILD_PROCESS_H_
