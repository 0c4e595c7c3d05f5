// dchan/client.h — channels hosted by a dchan-broker, as plain dchan::Chan<T>.
//
//   dchan::Client client = dchan::Client::connect("broker.example:7070");
//   dchan::Chan<std::string> jobs = client.chan<std::string>("jobs", 100);
//   jobs.send("build");                 // same type, same semantics as local
//
// A Client is a cheap, copyable handle to one session with one broker: one
// gRPC stream shared by every object it hands out, on which all operations
// of all threads are multiplexed (frames queued while a write is in flight
// leave together as one message). The session ends when the last copy of
// the Client and of every Chan it handed out is gone.
//
// Semantics of a broker channel are Go's, as for a local channel (see
// <dchan/chan.h>): an unbuffered send returns once a receiver in some process
// has the value; a buffered send once the broker holds it; close() closes it
// for every process. A timed or non-blocking operation that gives up is
// withdrawn on the broker: a withdrawn receive consumed nothing, a withdrawn
// send delivered nothing.
//
// Failures: every operation throws dchan::Error with kUnavailable once the
// broker is lost (connection refused or reset, or no keepalive answer within
// keepalive_time + keepalive_timeout), also one that is blocked at that
// moment — never a hang. Broker-side refusals keep the broker's status code
// (kInvalidArgument for a type or capacity mismatch, naming both sides).
//
// Thread safety: Client and the handles it returns may be used from any
// number of threads.
#ifndef DCHAN_CLIENT_H_
#define DCHAN_CLIENT_H_

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "dchan/chan.h"
#include "dchan/codec.h"
#include "dchan/error.h"
#include "dchan/select.h"
#include "google/protobuf/message_lite.h"

namespace dchan {

struct ClientOptions {
  // How long connect() waits for the broker.
  std::chrono::milliseconds connect_timeout{5000};
  // Keepalive pings on the connection, also while idle: a broker that does
  // not answer one within keepalive_timeout is considered lost.
  std::chrono::milliseconds keepalive_time{1000};
  std::chrono::milliseconds keepalive_timeout{2000};
};

namespace detail {
class Connection;
std::shared_ptr<RemoteChan> open_remote_chan(
    const std::shared_ptr<Connection>& conn, const std::string& name,
    const std::string& type_name, std::size_t capacity);
}  // namespace detail

class Client {
 public:
  // Connects to the broker at `target` ("host:port"). Throws dchan::Error
  // (kUnavailable) if it cannot be reached within options.connect_timeout.
  static Client connect(const std::string& target);
  static Client connect(const std::string& target, ClientOptions options);

  // Opens the broker channel `name` with element type T (its
  // Codec<T>::type_name()) and `capacity`, creating it on first open. Throws
  // dchan::Error: kInvalidArgument when it exists with another element type
  // or capacity, kUnavailable when the broker is lost.
  template <class T>
  Chan<T> chan(const std::string& name, std::size_t capacity = 0) {
    static_assert(kHasCodec<T>,
                  "a broker channel's element type needs a dchan::Codec<T>");
    return detail::make_remote_chan<T>(
        detail::open_remote_chan(conn_, name, Codec<T>::type_name(), capacity));
  }

  // The broker address this client talks to.
  const std::string& target() const noexcept;

 private:
  explicit Client(std::shared_ptr<detail::Connection> conn)
      : conn_(std::move(conn)) {}
  std::shared_ptr<detail::Connection> conn_;
};

// Protobuf messages travel in their binary encoding; the type name is the
// message's full name.
template <class T>
struct Codec<
    T, std::enable_if_t<std::is_base_of_v<google::protobuf::MessageLite, T>>> {
  static std::string type_name() { return T::default_instance().GetTypeName(); }
  static void encode(const T& v, std::string& out) {
    v.SerializeToString(&out);
  }
  static absl::Status decode(std::string_view bytes, T& out) {
    if (!out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      return absl::DataLossError("dchan: received bytes are not a valid " +
                                 type_name());
    }
    return absl::OkStatus();
  }
};

}  // namespace dchan

#endif  // DCHAN_CLIENT_H_
