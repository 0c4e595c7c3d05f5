// remote_pipeline: fan-out and fan-in over broker channels.
//
//   remote_pipeline --broker=HOST:PORT [--n=100] [--workers=3]
//
//   source ──"nums"──┬─ squarer-0 ─┐
//                    ├─ squarer-1 ─┼──"squares"──▶ sink (main)
//                    └─ squarer-2 ─┘
//
// Every stage has its own Client, as if each ran in its own process on its
// own machine. The source sends 1..N on the unbuffered "nums" and closes it.
// The squarers share "nums" (fan-out: each number reaches exactly one) and
// send into one buffered "squares" (fan-in). Who closes "squares"? Go's
// answer: a closer waits for every squarer — here on the broker WaitGroup
// "squarers" (add(workers) before they start, done() from each) — then
// closes it. The sink ranges over "squares" until it is closed.
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "dchan/client.h"
#include "job.h"  // job::flag

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string broker = job::flag(argc, argv, "broker", "127.0.0.1:7070");
  const int64_t n = std::stoll(job::flag(argc, argv, "n", "100"));
  const int workers = std::stoi(job::flag(argc, argv, "workers", "3"));
  auto connect = [&](const std::string& name) {
    return dchan::Client::connect(broker, {.name = name});
  };

  dchan::Client sink = connect("sink");
  dchan::WaitGroup squarers = sink.wait_group("squarers");
  squarers.add(workers);  // before any squarer can call done()
  auto squares = sink.chan<int64_t>("squares", 16);

  std::vector<std::thread> stages;
  stages.emplace_back([c = connect("source"), n]() mutable {
    auto nums = c.chan<int64_t>("nums");
    for (int64_t x = 1; x <= n; ++x) nums.send(x);
    nums.close();
  });
  for (int w = 0; w < workers; ++w) {
    stages.emplace_back([c = connect("squarer-" + std::to_string(w))] {
      dchan::Client client = c;
      auto out = client.chan<int64_t>("squares", 16);
      int count = 0;
      for (int64_t x : client.chan<int64_t>("nums")) {
        out.send(x * x);
        ++count;
      }
      client.wait_group("squarers").done();
      std::printf("%s: squared %d numbers\n", client.name().c_str(), count);
    });
  }
  stages.emplace_back([c = connect("closer")] {
    dchan::Client client = c;
    client.wait_group("squarers").wait();
    client.chan<int64_t>("squares", 16).close();
  });

  int64_t received = 0, sum = 0;
  for (int64_t sq : squares) {
    ++received;
    sum += sq;
  }
  for (std::thread& t : stages) t.join();
  const bool right = received == n && sum == n * (n + 1) * (2 * n + 1) / 6;
  std::printf("remote_pipeline: %lld squares from %d squarers, sum %lld: %s\n",
              static_cast<long long>(received), workers,
              static_cast<long long>(sum), right ? "ok" : "WRONG");
  return right ? 0 : 1;
}
