// job_worker: one of the workers of job_coordinator.cc's batch; run it on
// any machine that reaches the broker.
//
//   job_worker --broker=HOST:PORT --id=2 [--job_ms=0]
//
// It joins the batch (adds 1 to the broker WaitGroup "batch", then says so
// on "ready"), squares every number it takes from "jobs" (taking --job_ms per
// job) and puts "worker-2 7 49" on "results", until "jobs" is closed; then it
// calls done(). Its add is owed to the batch until then: if this process or
// its host is lost first, the broker fails the batch's wait naming
// "worker-2" (the client's name).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "dchan/client.h"
#include "job.h"

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // one line at a time, also in logs
  const std::string broker = job::flag(argc, argv, "broker", "127.0.0.1:7070");
  const std::string me = "worker-" + job::flag(argc, argv, "id", "1");
  const auto job_time = std::chrono::milliseconds(
      std::stoi(job::flag(argc, argv, "job_ms", "0")));
  try {
    dchan::Client client = dchan::Client::connect(broker, {.name = me});
    dchan::WaitGroup batch = client.wait_group(job::kBatch);
    auto ready = client.chan<std::string>(job::kReady, job::kReadyCapacity);
    auto jobs = client.chan<int64_t>(job::kJobs);
    auto results = client.chan<std::string>(job::kResults, job::kMaxJobs);

    batch.add(1);  // owed until done() below
    ready.send(me);
    int done = 0;
    for (int64_t x : jobs) {
      std::this_thread::sleep_for(job_time);
      results.send(me + " " + std::to_string(x) + " " + std::to_string(x * x));
      std::printf("%s: job %lld done\n", me.c_str(), static_cast<long long>(x));
      ++done;
    }
    batch.done();
    std::printf("%s: jobs closed after %d jobs\n", me.c_str(), done);
  } catch (const dchan::Error& e) {
    std::printf("%s: %s\n", me.c_str(), e.what());
    return 1;
  }
  return 0;
}
