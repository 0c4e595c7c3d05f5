// A user's worker built against an installed dchan::client: proves that the
// installed headers (dchan/client.h and what it includes) compile and that
// dchan::client links with its exported dependencies (gRPC, protobuf).
// Without arguments it only starts and exits 0; with a broker address it
// sends one value through a channel on that broker and receives it back.
#include <cstdio>
#include <optional>
#include <string>

#include "dchan/client.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("client_consumer: linked against dchan::client: ok\n");
    return 0;
  }
  dchan::Client client = dchan::Client::connect(argv[1]);
  dchan::Chan<std::string> ch = client.chan<std::string>("install_consumer", 1);
  ch.send("hello");
  std::optional<std::string> v = ch.recv();
  if (!v || *v != "hello") return 1;
  std::printf("client_consumer: round trip through %s: ok\n", argv[1]);
  return 0;
}
