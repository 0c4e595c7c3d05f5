// A user's program built against an installed dchan: one producer thread
// sends over an unbuffered channel, main receives and checks every value.
// Exits 0 only if all values arrive in order and the channel closes.
#include <cstdio>
#include <optional>
#include <thread>

#include "dchan/chan.h"

int main() {
  constexpr int kCount = 1000;
  dchan::Chan<int> ch = dchan::make_chan<int>();
  std::thread producer([ch]() mutable {
    for (int i = 0; i < kCount; ++i) ch.send(i * 3);
    ch.close();
  });

  int expected = 0;
  bool ok = true;
  while (std::optional<int> v = ch.recv()) {
    if (*v != expected * 3) {
      std::fprintf(stderr, "consumer: got %d, want %d\n", *v, expected * 3);
      ok = false;
    }
    ++expected;
  }
  producer.join();
  if (expected != kCount) {
    std::fprintf(stderr, "consumer: received %d values, want %d\n", expected,
                 kCount);
    ok = false;
  }
  if (!ok) return 1;
  std::printf("consumer: received %d values over dchan::Chan<int>: ok\n",
              expected);
  return 0;
}
