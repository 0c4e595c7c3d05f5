// lib/tests/test_util.h — small helpers shared by lib's tests.
#ifndef DCHAN_LIB_TESTS_TEST_UTIL_H_
#define DCHAN_LIB_TESTS_TEST_UTIL_H_

#include <chrono>
#include <thread>

namespace dchan::test_util {

// Polls `cond` until it holds or `limit` passes: a liveness bound for "this
// eventually happens" (a thread blocks, a callback runs), never a timing
// assertion.
template <class Cond>
bool eventually(Cond cond,
                std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace dchan::test_util

#endif  // DCHAN_LIB_TESTS_TEST_UTIL_H_
