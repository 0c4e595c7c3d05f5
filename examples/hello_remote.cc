// hello_remote: two processes, one broker channel.
//
//   dchan-broker &                                  # listens on 0.0.0.0:7070
//   hello_remote recv --broker=127.0.0.1:7070 &     # prints what arrives
//   hello_remote send --broker=127.0.0.1:7070 --count=3
//
// The sender sends `count` greetings on the unbuffered broker channel
// "greetings" (each send returns once the receiver has it), then closes it;
// the receiver prints each greeting and ends when the channel is closed.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "dchan/client.h"

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  std::string broker = "127.0.0.1:7070";
  int count = 3;
  for (int i = 2; i < argc; ++i) {
    if (std::strncmp(argv[i], "--broker=", 9) == 0) broker = argv[i] + 9;
    if (std::strncmp(argv[i], "--count=", 8) == 0)
      count = std::atoi(argv[i] + 8);
  }
  if (mode != "send" && mode != "recv") {
    std::fprintf(stderr,
                 "usage: hello_remote send|recv [--broker=HOST:PORT] "
                 "[--count=N]\n");
    return 2;
  }
  try {
    dchan::Client client = dchan::Client::connect(broker);
    dchan::Chan<std::string> greetings = client.chan<std::string>("greetings");
    if (mode == "send") {
      for (int i = 1; i <= count; ++i) {
        greetings.send("hello " + std::to_string(i) + " from pid " +
                       std::to_string(getpid()));
      }
      greetings.close();
      std::printf("sent %d greetings\n", count);
    } else {
      int n = 0;
      for (std::string g : greetings) {
        std::printf("received: %s\n", g.c_str());
        ++n;
      }
      std::printf("channel closed after %d greetings\n", n);
    }
  } catch (const dchan::Error& e) {
    std::fprintf(stderr, "hello_remote: %s\n", e.what());
    return 1;
  }
  return 0;
}
