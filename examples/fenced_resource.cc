// fenced_resource: a shared resource behind a broker lock and a fence.
//
//   fenced_resource --broker=HOST:PORT [--writers=3] [--writes=5]
//
// A lock alone does not protect a resource across machines: a holder that
// stalls (a GC pause, SIGSTOP, a partition) past its session TTL loses the
// lock to the next process, and may wake up and write anyway. So every write
// carries the lock's fencing token (strictly increasing per lock on the
// broker), and the resource rejects a token lower than the highest it saw.
// Here the resource is a storage thread serving the broker channel "writes";
// each writer has its own Client — its own session, as if it were another
// process — and writes under the lock. A stale writer, which took the lock
// first and "stalled", writes last with its old token: rejected.
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dchan/client.h"
#include "job.h"  // job::flag

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string broker = job::flag(argc, argv, "broker", "127.0.0.1:7070");
  const int writers = std::stoi(job::flag(argc, argv, "writers", "3"));
  const int writes = std::stoi(job::flag(argc, argv, "writes", "5"));
  auto connect = [&](const std::string& name) {
    return dchan::Client::connect(broker, {.name = name});
  };
  // A write request: "TOKEN WRITER"; the answer, on "acks-WRITER": accepted?
  auto write = [](dchan::Client& c, uint64_t token, const std::string& who) {
    c.chan<std::string>("writes").send(std::to_string(token) + " " + who);
    return *c.chan<bool>("acks-" + who).recv();
  };

  std::thread storage([c = connect("storage")]() mutable {
    uint64_t highest = 0;  // the fence
    for (std::string request : c.chan<std::string>("writes")) {
      std::istringstream in(request);
      uint64_t token = 0;
      std::string who;
      in >> token >> who;
      const bool ok = token >= highest;
      if (ok) highest = token;
      std::printf("storage: %s token %s from %s (highest seen %s)\n",
                  ok ? "accepted" : "REJECTED", std::to_string(token).c_str(),
                  who.c_str(), std::to_string(highest).c_str());
      c.chan<bool>("acks-" + who).send(ok);
    }
  });

  dchan::Client stale = connect("stale-writer");
  dchan::Mutex stale_mu = stale.mutex("resource");
  // It takes the lock first, then stalls past its session TTL: the unlock
  // stands in for the broker giving the lock away meanwhile.
  stale_mu.lock();
  const uint64_t stale_token = stale_mu.token();
  stale_mu.unlock();

  std::vector<std::thread> threads;
  std::vector<int> accepted(writers, 0);
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w, c = connect("writer-" + std::to_string(w))] {
      dchan::Client client = c;
      dchan::Mutex mu = client.mutex("resource");
      for (int i = 0; i < writes; ++i) {
        std::lock_guard<dchan::Mutex> hold(mu);
        accepted[w] += write(client, mu.token(), client.name());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const bool stale_ok = write(stale, stale_token, "stale-writer");
  stale.chan<std::string>("writes").close();
  storage.join();

  int total = 0;
  for (int a : accepted) total += a;
  const bool right = total == writers * writes && !stale_ok;
  std::printf("fenced_resource: %d of %d writes accepted, stale write %s: %s\n",
              total, writers * writes, stale_ok ? "ACCEPTED" : "rejected",
              right ? "ok" : "WRONG");
  return right ? 0 : 1;
}
