#include "dchan/codec.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dchan {
namespace {

template <class T>
T round_trip(const T& v) {
  std::string bytes;
  Codec<T>::encode(v, bytes);
  T out{};
  EXPECT_TRUE(Codec<T>::decode(bytes, out).ok());
  return out;
}

TEST(Codec, StringsAndByteVectorsRoundTrip) {
  EXPECT_EQ(round_trip(std::string("hello\0world", 11)),
            std::string("hello\0world", 11));
  EXPECT_EQ(round_trip(std::vector<uint8_t>{0, 255, 7}),
            (std::vector<uint8_t>{0, 255, 7}));
  EXPECT_EQ(round_trip(std::vector<char>{}), std::vector<char>{});
  EXPECT_EQ(Codec<std::string>::type_name(), "string");
  EXPECT_EQ(Codec<std::vector<std::byte>>::type_name(), "bytes");
}

TEST(Codec, ArithmeticTypesRoundTripWithFixedNames) {
  EXPECT_EQ(round_trip<int64_t>(std::numeric_limits<int64_t>::min()),
            std::numeric_limits<int64_t>::min());
  EXPECT_EQ(round_trip<uint16_t>(65535), 65535);
  EXPECT_EQ(round_trip<double>(-1.5), -1.5);
  EXPECT_EQ(round_trip<bool>(true), true);
  EXPECT_EQ(Codec<int32_t>::type_name(), "int32");
  EXPECT_EQ(Codec<uint64_t>::type_name(), "uint64");
  EXPECT_EQ(Codec<float>::type_name(), "float32");
  EXPECT_EQ(Codec<double>::type_name(), "float64");
  EXPECT_EQ(Codec<bool>::type_name(), "bool");
}

TEST(Codec, MalformedBytesAreRejectedWithDataLoss) {
  int32_t i = 0;
  EXPECT_EQ(Codec<int32_t>::decode("abc", i).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(Codec<int32_t>::decode("", i).code(), absl::StatusCode::kDataLoss);
  bool b = false;
  EXPECT_EQ(Codec<bool>::decode("\x02", b).code(), absl::StatusCode::kDataLoss);
}

TEST(Codec, TypesWithoutACodecAreDetected) {
  struct NoCodec {};
  EXPECT_FALSE(kHasCodec<NoCodec>);
  EXPECT_TRUE(kHasCodec<std::string>);
  EXPECT_TRUE(kHasCodec<int>);
}

}  // namespace
}  // namespace dchan
