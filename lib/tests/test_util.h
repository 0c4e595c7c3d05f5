// lib/tests/test_util.h — small helpers shared by lib's tests.
#ifndef DCHAN_LIB_TESTS_TEST_UTIL_H_
#define DCHAN_LIB_TESTS_TEST_UTIL_H_

#include <chrono>
#include <memory>
#include <thread>
#include <utility>

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

// A value that counts its copies through `p`. Moving one copies it (a
// moved-from value still counts), so a copy left undestroyed shows in
// p.use_count(). Counted lands on a parked receiver's waiter line, Wide
// does not (see WaitNode::slot).
struct Counted {
  explicit Counted(std::shared_ptr<int> q) : p(std::move(q)) {}
  Counted(const Counted&) = default;
  Counted& operator=(const Counted&) = default;
  bool operator==(const Counted& o) const { return p == o.p; }
  std::shared_ptr<int> p;
};
struct Wide : Counted {
  using Counted::Counted;
  char pad[64] = {};
};

}  // namespace dchan::test_util

#endif  // DCHAN_LIB_TESTS_TEST_UTIL_H_
