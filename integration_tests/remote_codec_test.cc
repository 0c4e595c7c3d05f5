// Element types through a real dchan-broker: a protobuf message (the codec
// <dchan/client.h> adds for every message) and a user's own struct with its
// own dchan::Codec specialisation. Values must round-trip between two
// sessions, and the broker's inspection must name each channel's type as
// its codec does.
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "dchan/v1/inspect.pb.h"
#include "gtest/gtest.h"

namespace dchan_codec_test {

// A user's type, unknown to dchan.
struct Point {
  int32_t x = 0;
  int32_t y = 0;
  std::string label;
};

// The same type name as Point's codec, but bytes that codec cannot read: a
// stand-in for a process built with another version of the type.
struct TruncatedPoint {
  int32_t x = 0;
};

}  // namespace dchan_codec_test

// Point: x and y (4 bytes each, little-endian on the hosts dchan supports),
// then the label's bytes.
template <>
struct dchan::Codec<dchan_codec_test::Point> {
  static std::string type_name() { return "dchan_codec_test.Point"; }
  static void encode(const dchan_codec_test::Point& p, std::string& out) {
    out.resize(8);
    std::memcpy(out.data(), &p.x, 4);
    std::memcpy(out.data() + 4, &p.y, 4);
    out += p.label;
  }
  static absl::Status decode(std::string_view bytes,
                             dchan_codec_test::Point& out) {
    if (bytes.size() < 8) {
      return absl::DataLossError(absl::StrCat(
          "dchan_codec_test.Point needs at least 8 bytes, got ", bytes.size()));
    }
    std::memcpy(&out.x, bytes.data(), 4);
    std::memcpy(&out.y, bytes.data() + 4, 4);
    out.label.assign(bytes.data() + 8, bytes.size() - 8);
    return absl::OkStatus();
  }
};

template <>
struct dchan::Codec<dchan_codec_test::TruncatedPoint> {
  static std::string type_name() { return "dchan_codec_test.Point"; }
  static void encode(const dchan_codec_test::TruncatedPoint& p,
                     std::string& out) {
    out.assign(reinterpret_cast<const char*>(&p.x), 4);
  }
  static absl::Status decode(std::string_view,
                             dchan_codec_test::TruncatedPoint&) {
    return absl::UnimplementedError("send only");
  }
};

namespace dchan::testing {
namespace {

using dchan_codec_test::Point;
using dchan_codec_test::TruncatedPoint;

TEST(RemoteCodec, ProtobufMessagesRoundTripThroughTheBroker) {
  BrokerProcess broker;
  Client sender = Client::connect(broker.address());
  Client receiver = Client::connect(broker.address());
  Chan<v1::ObjectInfo> out = sender.chan<v1::ObjectInfo>("infos", 2);
  Chan<v1::ObjectInfo> in = receiver.chan<v1::ObjectInfo>("infos", 2);

  v1::ObjectInfo a;
  a.set_name("first");
  a.set_kind(v1::OBJECT_KIND_CHANNEL);
  a.set_type_name("int64");
  a.set_cap(7);
  a.set_closed(true);
  a.add_holder_sessions(3);
  a.add_holder_sessions(uint64_t{1} << 40);
  a.set_count(-12);
  a.set_failure(std::string("with a \0 inside", 15));
  out.send(a);
  out.send(v1::ObjectInfo());  // the empty message: zero bytes on the wire

  const std::optional<v1::ObjectInfo> got = in.recv();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->name(), "first");
  EXPECT_EQ(got->kind(), v1::OBJECT_KIND_CHANNEL);
  EXPECT_EQ(got->type_name(), "int64");
  EXPECT_EQ(got->cap(), 7u);
  EXPECT_TRUE(got->closed());
  ASSERT_EQ(got->holder_sessions_size(), 2);
  EXPECT_EQ(got->holder_sessions(0), 3u);
  EXPECT_EQ(got->holder_sessions(1), uint64_t{1} << 40);
  EXPECT_EQ(got->count(), -12);
  EXPECT_EQ(got->failure(), std::string("with a \0 inside", 15));
  EXPECT_EQ(got->SerializeAsString(), a.SerializeAsString());
  const std::optional<v1::ObjectInfo> empty = in.recv();
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->ByteSizeLong(), 0u);

  const std::optional<ChanInfo> info = broker.chan_info("infos");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->type_name, "dchan.v1.ObjectInfo");
  EXPECT_EQ(info->type_name, Codec<v1::ObjectInfo>::type_name());
  EXPECT_EQ(info->cap, 2u);
}

TEST(RemoteCodec, UserCodecValuesRoundTripThroughTheBroker) {
  BrokerProcess broker;
  Client sender = Client::connect(broker.address());
  Client receiver = Client::connect(broker.address());
  Chan<Point> out = sender.chan<Point>("points", 0);
  Chan<Point> in = receiver.chan<Point>("points", 0);

  // Unbuffered: the send returns once the receiver (another session) has
  // the value.
  std::optional<Point> got;
  std::thread t([&] { got = in.recv(); });
  out.send(Point{-5, 1 << 30, "origin"});
  t.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->x, -5);
  EXPECT_EQ(got->y, 1 << 30);
  EXPECT_EQ(got->label, "origin");

  const std::optional<ChanInfo> info = broker.chan_info("points");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->type_name, "dchan_codec_test.Point");

  // Opening it with another element type is refused, naming both types.
  try {
    sender.chan<int32_t>("points", 0);
    ADD_FAILURE() << "opened a Point channel as int32";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument) << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), "dchan_codec_test.Point"))
        << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), "int32")) << e.what();
  }
}

// Bytes the receiver's codec rejects (a sender with the same type name but
// another encoding): the receive throws the codec's status, and the channel
// still works afterwards.
TEST(RemoteCodec, BytesTheCodecRejectsFailTheReceiveWithItsStatus) {
  BrokerProcess broker;
  Client sender = Client::connect(broker.address());
  Client receiver = Client::connect(broker.address());
  Chan<TruncatedPoint> bad = sender.chan<TruncatedPoint>("points", 2);
  Chan<Point> in = receiver.chan<Point>("points", 2);
  bad.send(TruncatedPoint{9});
  try {
    in.recv();
    ADD_FAILURE() << "decoded 4 bytes as a Point";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kDataLoss) << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), "at least 8 bytes, got 4"))
        << e.what();
  }
  sender.chan<Point>("points", 2).send(Point{1, 2, "ok"});
  const std::optional<Point> got = in.recv();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->label, "ok");
}

}  // namespace
}  // namespace dchan::testing
