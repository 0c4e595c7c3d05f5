// job_coordinator: hands a batch of N jobs to workers on any machines through
// the broker, waits for the batch with a broker WaitGroup, prints a summary.
//
//   job_coordinator --broker=HOST:PORT [--jobs=10] [--workers=3]
//   job_worker --broker=HOST:PORT --id=1     # ... and --id=2, --id=3
//
//  1. waits until --workers workers have joined: each added 1 to the
//     WaitGroup "batch" before it said so on "ready";
//  2. sends the jobs 1..N on the unbuffered "jobs" (each send returns once a
//     worker has taken the job), then closes it;
//  3. batch.wait() returns once every worker has seen the close and called
//     done() — or throws dchan::Error (kAborted) naming a worker whose
//     process or host was lost before it did: its jobs may be lost too;
//  4. reads the N results and checks the sum of the squares.
// Exit status: 0 the batch is complete and right; 1 it failed (a lost
// worker, a lost broker, a wrong sum); 2 bad usage. One batch per broker:
// "jobs" stays closed.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <sstream>
#include <string>

#include "dchan/client.h"
#include "job.h"

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string broker = job::flag(argc, argv, "broker", "127.0.0.1:7070");
  const int64_t n = std::stoll(job::flag(argc, argv, "jobs", "10"));
  const int workers = std::stoi(job::flag(argc, argv, "workers", "3"));
  if (n < 1 || n > static_cast<int64_t>(job::kMaxJobs) || workers < 1) {
    std::fprintf(stderr,
                 "usage: job_coordinator --broker=HOST:PORT "
                 "[--jobs=1..%zu] [--workers=N]\n",
                 job::kMaxJobs);
    return 2;
  }
  try {
    dchan::Client client =
        dchan::Client::connect(broker, {.name = "coordinator"});
    dchan::WaitGroup batch = client.wait_group(job::kBatch);
    auto ready = client.chan<std::string>(job::kReady, job::kReadyCapacity);
    auto jobs = client.chan<int64_t>(job::kJobs);
    auto results = client.chan<std::string>(job::kResults, job::kMaxJobs);

    for (int i = 0; i < workers; ++i) {
      dchan::RecvResult<std::string> r =
          ready.recv_for(std::chrono::minutes(1));
      if (!r.ok()) {
        std::printf("coordinator: only %d of %d workers joined\n", i, workers);
        return 1;
      }
      std::printf("coordinator: %s joined\n", r.value->c_str());
    }
    for (int64_t x = 1; x <= n; ++x) jobs.send(x);
    jobs.close();
    batch.wait();

    std::map<std::string, int> by_worker;
    int64_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      std::istringstream result(*results.recv());  // all N are there
      std::string who;
      int64_t x = 0, square = 0;
      result >> who >> x >> square;
      ++by_worker[who];
      sum += square;
    }
    std::string counts;
    for (const auto& [who, count] : by_worker) {
      counts +=
          (counts.empty() ? "" : ", ") + who + ": " + std::to_string(count);
    }
    const bool right = sum == n * (n + 1) * (2 * n + 1) / 6;
    std::printf("coordinator: %lld jobs done (%s), sum of squares %lld: %s\n",
                static_cast<long long>(n), counts.c_str(),
                static_cast<long long>(sum), right ? "ok" : "WRONG");
    return right ? 0 : 1;
  } catch (const dchan::Error& e) {
    std::printf("coordinator: batch failed: %s\n", e.what());
    return 1;
  }
}
