// <dchan/dchan.h> brings every lib type: a small program in Go's style that
// uses them together.
#include "dchan/dchan.h"

#include <atomic>
#include <mutex>

#include "gtest/gtest.h"

namespace dchan {
namespace {

TEST(Dchan, OneIncludeBringsEveryPrimitive) {
  Chan<int> results = make_chan<int>(8);
  WaitGroup wg;
  Mutex mu;
  AtomicValue<int> last;
  int total = 0;
  for (int i = 1; i <= 8; ++i) {
    wg.add(1);
    go([=]() mutable {
      results.send(i * i);
      last.store(i);
      wg.done();
    });
  }
  wg.wait();
  results.close();
  Group g;
  g.go([&] {
    for (int v : results) {
      std::lock_guard<Mutex> hold(mu);
      total += v;
    }
  });
  g.wait();
  EXPECT_EQ(total, 204);
  EXPECT_TRUE(last.load().has_value());
  EXPECT_EQ(select(on_recv(results), on_default()), 0u);  // closed: fires
}

}  // namespace
}  // namespace dchan
