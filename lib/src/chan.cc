#include "dchan/chan.h"

namespace dchan {

const char* to_string(ChanStatus status) noexcept {
  switch (status) {
    case ChanStatus::kOk:
      return "ok";
    case ChanStatus::kWouldBlock:
      return "would block";
    case ChanStatus::kTimeout:
      return "timeout";
    case ChanStatus::kClosed:
      return "closed";
  }
  return "unknown";
}

}  // namespace dchan
