// fence_client.h — talks to a dchan-fenced-resource (fenced_resource.cc)
// over loopback: one request line, its answer.
//
//   std::optional<std::string> r = fence_request(port, "WRITE 7 hello");
//   // "OK" or "REJECTED token 7 < highest 9"
//
// Each call opens its own connection, so any thread or process may use it.
// Every call is bounded by `timeout` (it returns nullopt then, as on any
// socket error).
#ifndef DCHAN_INTEGRATION_TESTS_FENCE_CLIENT_H_
#define DCHAN_INTEGRATION_TESTS_FENCE_CLIENT_H_

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace dchan::testing {

// Sends `request` (one line, without its newline) to the fenced resource at
// 127.0.0.1:`port` and returns the answer without its final newline: one
// line, or for LOG every line up to and including "END".
inline std::optional<std::string> fence_request(
    int port, const std::string& request,
    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return std::nullopt;
  }
  const std::string line = request + "\n";
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n =
        ::send(fd, line.data() + off, line.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    off += static_cast<size_t>(n);
  }
  const std::string end = request == "LOG" ? "END\n" : "\n";
  std::string in;
  for (;;) {
    const size_t at = in.rfind(end);
    if (at != std::string::npos && at + end.size() == in.size() &&
        (end == "\n" || at == 0 || in[at - 1] == '\n')) {
      in.pop_back();
      return in;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    in.append(buf, static_cast<size_t>(n));
  }
}

}  // namespace dchan::testing

#endif  // DCHAN_INTEGRATION_TESTS_FENCE_CLIENT_H_
