// chan_test_util.h — shared pieces of the integration tests of broker
// channels (remote_chan_test.cc, remote_select_test.cc,
// remote_pipeline_test.cc): channel worker processes and the parsing of
// their output.
//
// Thread safety: none beyond what each piece says; a test uses these from
// its own thread.
#ifndef DCHAN_INTEGRATION_TESTS_CHAN_TEST_UTIL_H_
#define DCHAN_INTEGRATION_TESTS_CHAN_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "broker_process.h"
#include "gtest/gtest.h"

#ifndef DCHAN_WORKER_PATH
#error "DCHAN_WORKER_PATH must name the dchan-test-worker binary"
#endif

namespace dchan::testing {

// Starts `dchan-test-worker MODE --broker=ADDRESS --chan=CHAN EXTRA...`.
inline Process worker(const std::string& mode, const BrokerProcess& broker,
                      const std::string& chan,
                      std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {mode, "--broker=" + broker.address(),
                                   "--chan=" + chan};
  args.insert(args.end(), extra.begin(), extra.end());
  return Process::spawn(DCHAN_WORKER_PATH, args);
}

// Whether the process printed exactly `line`.
inline bool has_line(const ProcessResult& r, const std::string& line) {
  for (const std::string& l : r.lines()) {
    if (l == line) return true;
  }
  return false;
}

// Whether the process printed a line starting with `prefix`.
inline bool has_line_starting(const ProcessResult& r,
                              const std::string& prefix) {
  for (const std::string& l : r.lines()) {
    if (absl::StartsWith(l, prefix)) return true;
  }
  return false;
}

// The numbers in a "count C sum S sumsq Q" line.
struct Tally {
  int64_t count = 0, sum = 0, sumsq = 0;
};

// Reads the first tally line the process printed; false if there is none.
inline bool parse_tally(const ProcessResult& r, Tally* t) {
  for (const std::string& line : r.lines()) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() == 6 && f[0] == "count" && f[2] == "sum" && f[4] == "sumsq") {
      return absl::SimpleAtoi(f[1], &t->count) &&
             absl::SimpleAtoi(f[3], &t->sum) &&
             absl::SimpleAtoi(f[5], &t->sumsq);
    }
  }
  return false;
}

// Adds up the tallies of `results` into `total`; fails naming the process
// that did not exit 0 or printed no tally.
inline ::testing::AssertionResult sum_tallies(
    const std::vector<ProcessResult>& results, Tally* total) {
  for (const ProcessResult& r : results) {
    Tally t;
    if (r.exit_code != 0 || !parse_tally(r, &t)) {
      return ::testing::AssertionFailure() << "no tally from " << r;
    }
    total->count += t.count;
    total->sum += t.sum;
    total->sumsq += t.sumsq;
  }
  return ::testing::AssertionSuccess();
}

// The tally of the values from, from + 1, ..., from + count - 1.
inline Tally expected_tally(int64_t from, int64_t count) {
  Tally t;
  for (int64_t v = from; v < from + count; ++v) {
    ++t.count;
    t.sum += v;
    t.sumsq += v * v;
  }
  return t;
}

}  // namespace dchan::testing

#endif  // DCHAN_INTEGRATION_TESTS_CHAN_TEST_UTIL_H_
