// examples/pipeline.cc — a Go-style pipeline on dchan channels.
//
//   generator ──nums──┬─ square worker 0 ──out[0]──┐
//                     ├─ square worker 1 ──out[1]──┼─ select ─▶ main
//                     └─ square worker 2 ──out[2]──┘     ▲
//                                          dchan::after(5s) (deadline)
//
// The generator sends 1..N and closes `nums`. Each worker ranges over
// `nums` (fan-out: the workers share one channel), squares, sends on its own
// output channel and closes it. main fans the outputs back in with one
// select over every output plus a deadline channel; an output that is
// closed is set to the nil channel, whose case never fires again (the Go
// idiom). It checks the sum and exits 0 only if every square arrived.
#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

#include "dchan/chan.h"
#include "dchan/select.h"

namespace {

constexpr int kN = 10;
constexpr int kWorkers = 3;

// Sends 1..n on a new channel, then closes it.
dchan::Chan<int> generate(int n, std::vector<std::thread>& threads) {
  dchan::Chan<int> out = dchan::make_chan<int>();
  threads.emplace_back([out, n]() mutable {
    for (int i = 1; i <= n; ++i) out.send(i);
    out.close();
  });
  return out;
}

// Squares every value of `in` until it is closed and drained, then closes
// its own output channel.
dchan::Chan<long> square(dchan::Chan<int> in,
                         std::vector<std::thread>& threads) {
  dchan::Chan<long> out = dchan::make_chan<long>(1);
  threads.emplace_back([in, out]() mutable {
    for (int v : in) out.send(static_cast<long>(v) * v);
    out.close();
  });
  return out;
}

}  // namespace

int main() {
  using namespace std::chrono_literals;
  std::vector<std::thread> threads;

  dchan::Chan<int> nums = generate(kN, threads);
  dchan::Chan<long> out[kWorkers];
  for (auto& o : out) o = square(nums, threads);

  auto deadline = dchan::after(5s);
  int open = kWorkers;
  int received = 0;
  long sum = 0;
  bool timed_out = false;
  while (open > 0 && !timed_out) {
    // One receive case per worker output; `w` tells which worker sent.
    auto on_out = [&](int w) {
      return dchan::on_recv(out[w], [&, w](std::optional<long> sq) {
        if (!sq) {  // closed and drained: never select this output again
          out[w] = dchan::Chan<long>();
          --open;
          return;
        }
        std::printf("worker %d: %ld\n", w, *sq);
        sum += *sq;
        ++received;
      });
    };
    static_assert(kWorkers == 3);
    dchan::select(on_out(0), on_out(1), on_out(2),
                  dchan::on_recv(deadline, [&](auto) { timed_out = true; }));
  }
  for (auto& t : threads) t.join();

  constexpr long kWant = static_cast<long>(kN) * (kN + 1) * (2 * kN + 1) / 6;
  std::printf("received %d squares, sum of squares of 1..%d = %ld\n", received,
              kN, sum);
  if (timed_out || received != kN || sum != kWant) {
    std::printf("pipeline: FAILED (%s; want %d squares summing to %ld)\n",
                timed_out ? "timed out" : "wrong result", kN, kWant);
    return 1;
  }
  std::printf("pipeline: ok\n");
  return 0;
}
