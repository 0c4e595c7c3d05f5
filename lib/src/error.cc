#include "dchan/error.h"

namespace dchan::detail {

void throw_panic(const char* message) {
  throw Error(absl::StatusCode::kFailedPrecondition, message);
}

}  // namespace dchan::detail
