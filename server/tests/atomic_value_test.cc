// ValueObject: load, swap and compare_and_swap on bytes.
#include "atomic_value.h"

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace dchan::server {
namespace {

TEST(AtomicValue, LoadBeforeTheFirstStoreHasNoValue) {
  ValueObject v("v", "int64");
  EXPECT_FALSE(v.load().has_value());
  v1::ObjectInfo info;
  v.describe(info);
  EXPECT_FALSE(info.has_value());
  EXPECT_EQ(info.type_name(), "int64");
  EXPECT_EQ(info.kind(), v1::OBJECT_KIND_ATOMIC_VALUE);
}

TEST(AtomicValue, SwapStoresAndReturnsWhatItReplaced) {
  ValueObject v("v", "string");
  EXPECT_FALSE(v.swap("a").has_value());
  EXPECT_EQ(v.swap("b"), "a");
  EXPECT_EQ(v.load(), "b");
  EXPECT_EQ(v.swap(""), "b");
  EXPECT_EQ(v.load(), "") << "an empty value is a value";
}

TEST(AtomicValue, CompareAndSwapComparesBytesAndNeedsAValue) {
  ValueObject v("v", "string");
  EXPECT_FALSE(v.compare_and_swap("", "x")) << "no value stored yet";
  EXPECT_FALSE(v.load().has_value());
  v.swap("a");
  EXPECT_FALSE(v.compare_and_swap("b", "c"));
  EXPECT_EQ(v.load(), "a");
  EXPECT_TRUE(v.compare_and_swap("a", "c"));
  EXPECT_EQ(v.load(), "c");
  EXPECT_FALSE(v.compare_and_swap(std::string("c\0", 2), "d"));
}

TEST(AtomicValue, ConcurrentCompareAndSwapIncrementsLoseNothing) {
  ValueObject v("n", "int64");
  v.swap("0");
  constexpr int kThreads = 6, kIncrements = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kIncrements;) {
        const std::string old = *v.load();
        if (v.compare_and_swap(old, std::to_string(std::stoi(old) + 1))) ++i;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(v.load(), std::to_string(kThreads * kIncrements));
}

}  // namespace
}  // namespace dchan::server
