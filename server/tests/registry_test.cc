#include "registry.h"

#include <memory>
#include <string>
#include <vector>

#include "atomic_value.h"
#include "fake_participant.h"
#include "gtest/gtest.h"
#include "lock.h"
#include "wait_group.h"

namespace dchan::server {
namespace {

v1::OpenRequest request(const std::string& name, v1::ObjectKind kind,
                        const std::string& type_name = "",
                        bool forgive = false) {
  v1::OpenRequest req;
  req.set_name(name);
  req.set_kind(kind);
  req.set_type_name(type_name);
  req.set_forgive(forgive);
  return req;
}

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

TEST(Registry, ObjectsOfEveryKindAreListedInNameOrder) {
  Registry r;
  ASSERT_TRUE(r.open_channel("b", "string", 0).ok());
  ASSERT_TRUE(r.open(request("c", v1::OBJECT_KIND_MUTEX)).ok());
  ASSERT_TRUE(r.open_channel("a", "string", 0).ok());
  auto all = r.objects();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0]->name(), "a");
  EXPECT_EQ(all[1]->name(), "b");
  EXPECT_EQ(all[2]->name(), "c");
  EXPECT_EQ(all[2]->kind(), v1::OBJECT_KIND_MUTEX);
}

TEST(Registry, ANameDenotesOneKindAndAnotherKindIsRefusedNamingBoth) {
  Registry r;
  ASSERT_TRUE(r.open_channel("x", "string", 0).ok());
  auto m = r.open(request("x", v1::OBJECT_KIND_MUTEX));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.status().message(), "\"x\" is a channel, not a mutex");

  ASSERT_TRUE(r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP)).ok());
  auto rw = r.open(request("wg", v1::OBJECT_KIND_RW_MUTEX));
  EXPECT_EQ(rw.status().message(), "\"wg\" is a WaitGroup, not an RWMutex");
  auto ch = r.open_channel("wg", "string", 0);
  EXPECT_EQ(ch.status().message(), "\"wg\" is a WaitGroup, not a channel");

  ASSERT_TRUE(r.open(request("m", v1::OBJECT_KIND_MUTEX)).ok());
  auto v = r.open(request("m", v1::OBJECT_KIND_ATOMIC_VALUE, "int64"));
  EXPECT_EQ(v.status().message(), "\"m\" is a mutex, not an AtomicValue");
  EXPECT_EQ(r.size(), 3u);
}

TEST(Registry, AtomicValueTypeMismatchIsRefusedNamingBoth) {
  Registry r;
  ASSERT_TRUE(r.open(request("v", v1::OBJECT_KIND_ATOMIC_VALUE, "int64")).ok());
  auto again = r.open(request("v", v1::OBJECT_KIND_ATOMIC_VALUE, "int64"));
  ASSERT_TRUE(again.ok());
  auto t = r.open(request("v", v1::OBJECT_KIND_ATOMIC_VALUE, "string"));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("int64"), std::string::npos);
  EXPECT_NE(t.status().message().find("string"), std::string::npos);
  EXPECT_EQ(
      r.open(request("w", v1::OBJECT_KIND_ATOMIC_VALUE, "")).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(Registry, WaitGroupForgiveMismatchIsRefusedNamingBoth) {
  Registry r;
  ASSERT_TRUE(r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP, "", true)).ok());
  auto f = r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP, "", false));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("forgive=true"), std::string::npos);
  EXPECT_NE(f.status().message().find("forgive=false"), std::string::npos);
  EXPECT_TRUE(r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP, "", true)).ok());
}

TEST(Registry, UnspecifiedOrUnknownKindIsRefusedAndCreatesNothing) {
  Registry r;
  EXPECT_EQ(r.open(request("x", v1::OBJECT_KIND_UNSPECIFIED)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      r.open(request("x", static_cast<v1::ObjectKind>(99))).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.size(), 0u);
}

TEST(Registry, TheObjectLimitCountsEveryKind) {
  RegistryLimits limits;
  limits.max_objects = 2;
  Registry r(limits);
  ASSERT_TRUE(r.open_channel("c", "string", 0).ok());
  ASSERT_TRUE(r.open(request("m", v1::OBJECT_KIND_MUTEX)).ok());
  EXPECT_EQ(r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP)).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(Registry, AnIdleObjectNobodyHoldsIsForgottenAndItsNameIsFreeAgain) {
  RegistryLimits limits;
  limits.max_objects = 2;
  Registry r(limits);
  ASSERT_TRUE(r.open_channel("a", "string", 0).ok());
  ASSERT_TRUE(r.open(request("b", v1::OBJECT_KIND_MUTEX)).ok());
  ASSERT_EQ(r.open_channel("c", "string", 0).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(r.forget_if_idle("a"));
  EXPECT_TRUE(r.forget_if_idle("b"));
  EXPECT_EQ(r.size(), 0u);
  EXPECT_TRUE(r.open_channel("c", "string", 0).ok());
  // A forgotten name can come back as another kind, type or capacity.
  EXPECT_TRUE(r.open_channel("a", "int64", 7).ok());
  EXPECT_FALSE(r.forget_if_idle("no such name"));
}

TEST(Registry, AnObjectSomeoneHoldsIsNotForgotten) {
  Registry r;
  auto held = r.open_channel("c", "string", 0);
  ASSERT_TRUE(held.ok());
  EXPECT_FALSE(r.forget_if_idle("c"));
  EXPECT_EQ(r.size(), 1u);
  // A pending operation's callback (here: a copy) counts like a handle.
  std::shared_ptr<ChannelObject> copy = *held;
  held->reset();
  EXPECT_FALSE(r.forget_if_idle("c"));
  copy.reset();
  EXPECT_TRUE(r.forget_if_idle("c"));
}

// A reference that outlives the last handle (a pending operation's
// callback, an answer in flight) keeps the object only until it goes: the
// broker's periodic sweep then forgets it, with no further release.
TEST(Registry, AnObjectReferredToPastItsLastHandleIsForgottenByTheSweep) {
  Registry r;
  auto ref = r.open_channel("c", "string", 0);
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(r.sweep_lingering(), 0u);
  EXPECT_FALSE(r.forget_if_idle("c"));  // referred to: noted
  EXPECT_EQ(r.sweep_lingering(), 0u);   // still: kept, still noted
  EXPECT_EQ(r.size(), 1u);
  ref->reset();
  EXPECT_EQ(r.sweep_lingering(), 1u);
  EXPECT_EQ(r.size(), 0u);
  EXPECT_EQ(r.sweep_lingering(), 0u);
  // The name is free again.
  EXPECT_TRUE(r.open_channel("c", "int64", 3).ok());
}

// The sweep leaves alone what a session's handle holds (the handle's drop
// checks it) and what is not in its initial state (kept by design).
TEST(Registry, TheSweepKeepsObjectsWithAHandleOrWithState) {
  Registry r;
  auto held = r.open_channel("held", "string", 0);
  ASSERT_TRUE(held.ok());
  (*held)->add_handle();
  auto buffered = r.open_channel("buffered", "string", 1);
  ASSERT_TRUE(buffered.ok());
  ASSERT_EQ((*buffered)->chan.try_send("v"), ChanStatus::kOk);
  EXPECT_FALSE(r.forget_if_idle("held"));
  EXPECT_FALSE(r.forget_if_idle("buffered"));
  buffered->reset();
  EXPECT_EQ(r.sweep_lingering(), 0u);
  EXPECT_EQ(r.size(), 2u);
  // Once the handle goes, its drop is what forgets the object.
  (*held)->drop_handle();
  held->reset();
  EXPECT_TRUE(r.forget_if_idle("held"));
  EXPECT_EQ(r.size(), 1u);
}

TEST(Registry, ObjectsNotInTheirInitialStateAreKept) {
  Registry r;
  auto who = fakes::FakeParticipant::make(1, "w");
  PendingOp watch;
  {
    auto closed = r.open_channel("closed", "string", 0);
    ASSERT_TRUE(closed.ok());
    (*closed)->chan.close();
    auto buffered = r.open_channel("buffered", "string", 2);
    ASSERT_TRUE(buffered.ok());
    ASSERT_EQ((*buffered)->chan.try_send("v"), ChanStatus::kOk);
    auto waited = r.open_channel("waited", "string", 0);
    ASSERT_TRUE(waited.ok());
    watch = (*waited)->chan.ready_async(false, [] {});
    auto m = r.open(request("locked", v1::OBJECT_KIND_MUTEX));
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(static_cast<LockObject&>(**m).lock(who, false)->granted);
    auto wg = r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP));
    ASSERT_TRUE(wg.ok());
    ASSERT_TRUE(static_cast<WaitGroupObject&>(**wg).add(*who, 1).ok());
    auto v = r.open(request("value", v1::OBJECT_KIND_ATOMIC_VALUE, "string"));
    ASSERT_TRUE(v.ok());
    static_cast<ValueObject&>(**v).swap("stored");
  }
  for (const char* name :
       {"closed", "buffered", "waited", "locked", "wg", "value"}) {
    EXPECT_FALSE(r.forget_if_idle(name)) << name;
  }
  EXPECT_EQ(r.size(), 6u);
  // What a reopen sees is what was left.
  auto closed = r.open_channel("closed", "string", 0);
  ASSERT_TRUE(closed.ok());
  EXPECT_TRUE(detail::stats_of((*closed)->chan).closed);
  auto buffered = r.open_channel("buffered", "string", 2);
  ASSERT_TRUE(buffered.ok());
  EXPECT_EQ((*buffered)->chan.try_recv().value, "v");
  auto wg = r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP));
  ASSERT_TRUE(wg.ok());
  EXPECT_EQ(static_cast<WaitGroupObject&>(**wg).count(), 1);
  // Back in their initial state, they go.
  buffered->reset();
  EXPECT_TRUE(r.forget_if_idle("buffered"));
  ASSERT_TRUE(static_cast<WaitGroupObject&>(**wg).add(*who, -1).ok());
  wg->reset();
  EXPECT_TRUE(r.forget_if_idle("wg"));
  ASSERT_TRUE(watch.cancel());
  EXPECT_TRUE(r.forget_if_idle("waited"));
  closed->reset();
  EXPECT_FALSE(r.forget_if_idle("closed"));
}

TEST(Registry, AFailedWaitGroupIsKept) {
  Registry r;
  auto who = fakes::FakeParticipant::make(1, "w");
  {
    auto wg = r.open(request("wg", v1::OBJECT_KIND_WAIT_GROUP));
    ASSERT_TRUE(wg.ok());
    ASSERT_TRUE(static_cast<WaitGroupObject&>(**wg).add(*who, 1).ok());
    who->end(**wg);  // ends owing: the wait group fails, at zero
    EXPECT_EQ(static_cast<WaitGroupObject&>(**wg).count(), 0);
  }
  EXPECT_FALSE(r.forget_if_idle("wg"));
}

TEST(Registry, ALocksTokensContinueAboveThoseOfForgottenLocks) {
  Registry r;
  auto who = fakes::FakeParticipant::make(1, "w");
  uint64_t last = 0;
  for (int round = 0; round < 3; ++round) {
    auto m = r.open(request("m", v1::OBJECT_KIND_MUTEX));
    ASSERT_TRUE(m.ok());
    auto& lock = static_cast<LockObject&>(**m);
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<LockObject::Request> got = lock.lock(who, false);
      ASSERT_TRUE(got.ok() && got->granted);
      EXPECT_GT(got->token, last);
      last = got->token;
      ASSERT_TRUE(lock.unlock(*who, false, got->token).ok());
    }
    m->reset();
    ASSERT_TRUE(r.forget_if_idle("m"));
  }
  EXPECT_EQ(last, 6u);
}

TEST(Registry, DescribeAllListsEveryObjectInNameOrderAndKeepsNoReference) {
  Registry r;
  ASSERT_TRUE(r.open_channel("b", "string", 3).ok());
  ASSERT_TRUE(r.open(request("a", v1::OBJECT_KIND_MUTEX)).ok());
  const std::vector<v1::ObjectInfo> all = r.describe_all();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name(), "a");
  EXPECT_EQ(all[0].kind(), v1::OBJECT_KIND_MUTEX);
  EXPECT_EQ(all[1].name(), "b");
  EXPECT_EQ(all[1].cap(), 3u);
  // What inspection saw does not keep the objects.
  EXPECT_TRUE(r.forget_if_idle("a"));
  EXPECT_TRUE(r.forget_if_idle("b"));
}

}  // namespace
}  // namespace dchan::server
