// dchan-fenced-resource: a stand-in for a storage service that honours
// fencing tokens, for dchan's lock tests. A lock holder stamps every write
// with its lock's fencing token; the resource refuses any write whose token
// is lower than the highest it has seen, so a holder that lost its lock
// without knowing (frozen, partitioned) cannot overwrite the work of the
// holder that came after it.
//
//   dchan-fenced-resource [--timeout_s=S]
//
// Listens on 127.0.0.1 only, on a port the kernel picks, and prints
// "fenced-resource listening on 127.0.0.1:PORT" as its first line. Serves a
// line protocol; every request is one line, answered in order:
//
//   WRITE <token> <payload>  "OK" if token >= the highest token seen (it
//                            becomes the highest), else
//                            "REJECTED token T < highest H"
//   HIGHEST                  "HIGHEST H" (0 before the first write)
//   LOG                      one line per WRITE so far, in arrival order:
//                            "ACCEPTED <token> <payload>" or
//                            "REJECTED <token> <payload>", then "END"
//   anything else            "ERROR <what>"
//
// One thread, poll() over the listener and the connections. Runs until
// killed (or SIGTERM), or for at most --timeout_s (default 120) so that it
// can never outlive a broken test. Exit codes: 0 stopped by SIGTERM/SIGINT;
// 2 bad arguments or cannot listen; 5 timeout.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace {

volatile sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

struct Attempt {
  bool accepted;
  uint64_t token;
  std::string payload;
};

class Resource {
 public:
  // The answer to one request line (without its newline).
  std::string handle(const std::string& line) {
    if (line.rfind("WRITE ", 0) == 0) {
      const std::string rest = line.substr(6);
      const size_t sp = rest.find(' ');
      const std::string token_text =
          sp == std::string::npos ? rest : rest.substr(0, sp);
      const std::string payload =
          sp == std::string::npos ? "" : rest.substr(sp + 1);
      uint64_t token = 0;
      if (!absl::SimpleAtoi(token_text, &token)) {
        return absl::StrCat("ERROR bad token '", token_text, "'");
      }
      if (token < highest_) {
        log_.push_back({false, token, payload});
        return absl::StrCat("REJECTED token ", token, " < highest ", highest_);
      }
      highest_ = token;
      log_.push_back({true, token, payload});
      return "OK";
    }
    if (line == "HIGHEST") return absl::StrCat("HIGHEST ", highest_);
    if (line == "LOG") {
      std::string out;
      for (const Attempt& a : log_) {
        absl::StrAppend(&out, a.accepted ? "ACCEPTED " : "REJECTED ", a.token,
                        " ", a.payload, "\n");
      }
      return out + "END";
    }
    return absl::StrCat("ERROR unknown request '", line, "'");
  }

 private:
  uint64_t highest_ = 0;
  std::vector<Attempt> log_;
};

struct Conn {
  int fd;
  std::string in;
};

// Writes all of `data` (blocking socket); false on error.
bool write_all(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n =
        ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t timeout_s = 120;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--timeout_s=", 0) != 0 ||
        !absl::SimpleAtoi(a.substr(12), &timeout_s)) {
      std::fprintf(stderr, "usage: dchan-fenced-resource [--timeout_s=S]\n");
      return 2;
    }
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (lfd < 0 ||
      ::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(lfd, 64) != 0 ||
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::fprintf(stderr, "dchan-fenced-resource: cannot listen: %s\n",
                 std::strerror(errno));
    return 2;
  }
  std::printf("fenced-resource listening on 127.0.0.1:%d\n",
              ntohs(addr.sin_port));
  std::fflush(stdout);

  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  Resource resource;
  std::vector<Conn> conns;
  while (!g_stop) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "dchan-fenced-resource: timeout after %llds\n",
                   static_cast<long long>(timeout_s));
      return 5;
    }
    std::vector<pollfd> fds;
    fds.push_back({lfd, POLLIN, 0});
    for (const Conn& c : conns) fds.push_back({c.fd, POLLIN, 0});
    const int ready = ::poll(fds.data(), fds.size(), 100);
    if (ready <= 0) continue;  // timeout, or EINTR (a signal: g_stop)
    if (fds[0].revents & POLLIN) {
      const int cfd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (cfd >= 0) conns.push_back({cfd, ""});
    }
    // fds[i + 1] is conns[i] for the connections polled this round (an
    // accepted one was appended after them).
    std::vector<Conn> alive;
    for (size_t i = 0; i < conns.size(); ++i) {
      Conn& c = conns[i];
      bool open = true;
      if (i + 1 < fds.size() && (fds[i + 1].revents & (POLLIN | POLLHUP))) {
        char buf[4096];
        const ssize_t n = ::read(c.fd, buf, sizeof buf);
        if (n > 0) {
          c.in.append(buf, static_cast<size_t>(n));
          size_t nl;
          while (open && (nl = c.in.find('\n')) != std::string::npos) {
            std::string line = c.in.substr(0, nl);
            c.in.erase(0, nl + 1);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            open = write_all(c.fd, resource.handle(line) + "\n");
          }
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          open = false;
        }
      }
      if (open) {
        alive.push_back(std::move(c));
      } else {
        ::close(c.fd);
      }
    }
    conns = std::move(alive);
  }
  for (const Conn& c : conns) ::close(c.fd);
  ::close(lfd);
  return 0;
}
