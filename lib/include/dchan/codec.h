// dchan/codec.h — how a channel's element type travels as bytes.
//
// A remote channel (one hosted by a dchan-broker) carries values as bytes,
// together with the element type's name, which the broker checks when a
// process opens the channel: two processes can only share a channel if they
// agree on the type name. Codec<T> supplies both:
//
//   template <> struct dchan::Codec<Point> {
//     static std::string type_name() { return "myapp.Point"; }
//     static void encode(const Point& p, std::string& out);
//     static absl::Status decode(std::string_view bytes, Point& out);
//   };
//
// Built in: std::string ("string"), byte vectors (std::vector<uint8_t>,
// std::vector<std::byte>, std::vector<char>: "bytes"), bool ("bool") and the
// fixed-size arithmetic types ("int8" ... "uint64", "float32", "float64",
// little-endian). Protobuf messages: include <dchan/client.h>, which adds
// them (type name: the message's full name).
//
// decode() must reject malformed bytes with a non-OK status (never crash);
// a receive that gets such bytes throws dchan::Error with that status.
//
// Thread safety: codecs are stateless.
#ifndef DCHAN_CODEC_H_
#define DCHAN_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dchan {

// The primary template has no members: a Chan<T> of a type without a codec
// works locally, and fails to compile only where it is made remote.
template <class T, class Enable = void>
struct Codec;

namespace detail {

template <class T>
constexpr const char* arithmetic_type_name() {
  if constexpr (std::is_same_v<T, bool>)
    return "bool";
  else if constexpr (std::is_floating_point_v<T> && sizeof(T) == 4)
    return "float32";
  else if constexpr (std::is_floating_point_v<T> && sizeof(T) == 8)
    return "float64";
  else if constexpr (std::is_signed_v<T> && sizeof(T) == 1)
    return "int8";
  else if constexpr (std::is_signed_v<T> && sizeof(T) == 2)
    return "int16";
  else if constexpr (std::is_signed_v<T> && sizeof(T) == 4)
    return "int32";
  else if constexpr (std::is_signed_v<T> && sizeof(T) == 8)
    return "int64";
  else if constexpr (sizeof(T) == 1)
    return "uint8";
  else if constexpr (sizeof(T) == 2)
    return "uint16";
  else if constexpr (sizeof(T) == 4)
    return "uint32";
  else if constexpr (sizeof(T) == 8)
    return "uint64";
  else
    return nullptr;
}

template <class T>
inline constexpr bool kIsByteVector =
    std::is_same_v<T, std::vector<uint8_t>> ||
    std::is_same_v<T, std::vector<std::byte>> ||
    std::is_same_v<T, std::vector<char>>;

}  // namespace detail

template <>
struct Codec<std::string> {
  static std::string type_name() { return "string"; }
  static void encode(const std::string& v, std::string& out) { out = v; }
  static absl::Status decode(std::string_view bytes, std::string& out) {
    out.assign(bytes.data(), bytes.size());
    return absl::OkStatus();
  }
};

template <class T>
struct Codec<T, std::enable_if_t<detail::kIsByteVector<T>>> {
  static std::string type_name() { return "bytes"; }
  static void encode(const T& v, std::string& out) {
    out.assign(reinterpret_cast<const char*>(v.data()), v.size());
  }
  static absl::Status decode(std::string_view bytes, T& out) {
    out.resize(bytes.size());
    if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
    return absl::OkStatus();
  }
};

template <class T>
struct Codec<T,
             std::enable_if_t<std::is_arithmetic_v<T> &&
                              detail::arithmetic_type_name<T>() != nullptr>> {
  static std::string type_name() { return detail::arithmetic_type_name<T>(); }
  static void encode(const T& v, std::string& out) {
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
                  "dchan's arithmetic codec assumes a little-endian host");
    if constexpr (std::is_same_v<T, bool>) {
      out.assign(1, v ? '\1' : '\0');
    } else {
      out.assign(reinterpret_cast<const char*>(&v), sizeof(T));
    }
  }
  static absl::Status decode(std::string_view bytes, T& out) {
    const std::size_t want = std::is_same_v<T, bool> ? 1 : sizeof(T);
    if (bytes.size() != want) {
      return absl::DataLossError(absl::StrCat("dchan: a ", type_name(),
                                              " value needs ", want,
                                              " bytes, got ", bytes.size()));
    }
    if constexpr (std::is_same_v<T, bool>) {
      if (bytes[0] != '\0' && bytes[0] != '\1') {
        return absl::DataLossError("dchan: a bool value must be 0 or 1");
      }
      out = bytes[0] == '\1';
    } else {
      std::memcpy(&out, bytes.data(), sizeof(T));
    }
    return absl::OkStatus();
  }
};

// True when T has a usable Codec.
template <class T, class = void>
inline constexpr bool kHasCodec = false;
template <class T>
inline constexpr bool
    kHasCodec<T, std::void_t<decltype(Codec<T>::type_name())>> = true;

}  // namespace dchan

#endif  // DCHAN_CODEC_H_
