#include "registry.h"

#include <string>

#include "gtest/gtest.h"

namespace dchan::server {
namespace {

TEST(Registry, FirstOpenCreatesLaterOpensShare) {
  Registry r;
  auto a = r.open_channel("jobs", "string", 10);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = r.open_channel("jobs", "string", 10);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ((*a)->chan.cap(), 10u);
  EXPECT_EQ(r.size(), 1u);
}

TEST(Registry, MismatchedTypeOrCapacityIsRefusedNamingBoth) {
  Registry r;
  ASSERT_TRUE(r.open_channel("jobs", "string", 10).ok());
  auto t = r.open_channel("jobs", "int64", 10);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("string"), std::string::npos);
  EXPECT_NE(t.status().message().find("int64"), std::string::npos);
  auto c = r.open_channel("jobs", "string", 0);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("capacity 10"), std::string::npos);
  EXPECT_NE(c.status().message().find("capacity 0"), std::string::npos);
}

TEST(Registry, BadNamesAndCapacitiesAreRefused) {
  RegistryLimits limits;
  limits.max_capacity = 100;
  Registry r(limits);
  EXPECT_EQ(r.open_channel("", "string", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.open_channel("x", "", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      r.open_channel(std::string(10000, 'x'), "string", 0).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.open_channel("x", "string", 101).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.size(), 0u);
}

TEST(Registry, AFloodOfOpensStopsAtTheObjectLimit) {
  RegistryLimits limits;
  limits.max_objects = 100;
  Registry r(limits);
  int refused = 0;
  for (int i = 0; i < 1000; ++i) {
    auto c = r.open_channel("c" + std::to_string(i), "string", 0);
    if (!c.ok()) {
      EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
      ++refused;
    }
  }
  EXPECT_EQ(refused, 900);
  EXPECT_EQ(r.size(), 100u);
  // Existing objects can still be opened.
  EXPECT_TRUE(r.open_channel("c7", "string", 0).ok());
}

TEST(Registry, ChannelsAreListedInNameOrder) {
  Registry r;
  ASSERT_TRUE(r.open_channel("b", "string", 0).ok());
  ASSERT_TRUE(r.open_channel("a", "string", 0).ok());
  auto all = r.channels();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]->name, "a");
  EXPECT_EQ(all[1]->name, "b");
}

}  // namespace
}  // namespace dchan::server
