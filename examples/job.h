// job.h — what job_coordinator.cc and job_worker.cc agree on: the names of
// the batch's broker objects, and a flag reader.
#pragma once

#include <cstddef>
#include <cstring>
#include <string>

namespace job {

inline constexpr char kBatch[] = "batch";      // WaitGroup: one add per worker
inline constexpr char kReady[] = "ready";      // Chan<string>: "I joined"
inline constexpr char kJobs[] = "jobs";        // Chan<int64_t>, unbuffered
inline constexpr char kResults[] = "results";  // Chan<string>: "who job result"
inline constexpr std::size_t kReadyCapacity = 64;
inline constexpr std::size_t kMaxJobs = 10000;  // results' capacity

// The value of --name=VALUE in argv, else `fallback`.
inline std::string flag(int argc, char** argv, const std::string& name,
                        const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
      return argv[i] + prefix.size();
    }
  }
  return fallback;
}

}  // namespace job
