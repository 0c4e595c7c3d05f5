// dchan/error.h — the one exception type dchan throws.
//
// Every exception thrown by dchan derives from dchan::Error, a
// std::runtime_error that also carries an absl::StatusCode. Go's panics keep
// Go's exact messages ("send on closed channel", "close of closed channel",
// "sync: negative WaitGroup counter", ...) and use kFailedPrecondition; remote
// failures (a later component) carry the broker's or gRPC's code.
//
// Thread safety: an Error is an immutable value; copies may be used from any
// thread.
#ifndef DCHAN_ERROR_H_
#define DCHAN_ERROR_H_

#include <stdexcept>
#include <string>

#include "absl/status/status.h"

namespace dchan {

class Error : public std::runtime_error {
 public:
  Error(absl::StatusCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}

  // The status code that classifies this error.
  absl::StatusCode code() const noexcept { return code_; }

  // The error as an absl::Status (code and message).
  absl::Status status() const { return absl::Status(code_, what()); }

 private:
  absl::StatusCode code_;
};

// Throws the dchan::Error for one of Go's panics: `message` is Go's text,
// the code is kFailedPrecondition. Out of line so that callers' fast paths
// stay small.
namespace detail {
[[noreturn]] void throw_panic(const char* message);
}  // namespace detail

}  // namespace dchan

#endif  // DCHAN_ERROR_H_
