#include "object.h"

namespace dchan::server {

void Object::describe(v1::ObjectInfo& info) const {
  info.set_name(name_);
  info.set_kind(kind_);
  describe_kind(info);
}

absl::string_view kind_with_article(v1::ObjectKind kind) {
  switch (kind) {
    case v1::OBJECT_KIND_CHANNEL:
      return "a channel";
    case v1::OBJECT_KIND_MUTEX:
      return "a mutex";
    case v1::OBJECT_KIND_RW_MUTEX:
      return "an RWMutex";
    case v1::OBJECT_KIND_WAIT_GROUP:
      return "a WaitGroup";
    case v1::OBJECT_KIND_ATOMIC_VALUE:
      return "an AtomicValue";
    default:
      return "an object of unspecified kind";
  }
}

void ChannelObject::describe_kind(v1::ObjectInfo& info) const {
  const detail::ChanStats st = detail::stats_of(chan);
  info.set_type_name(type_name);
  info.set_len(st.len + after_close_count());
  info.set_cap(st.cap);
  info.set_closed(st.closed);
  info.set_blocked_senders(st.blocked_senders);
  info.set_blocked_receivers(st.blocked_receivers);
}

bool ChannelObject::idle() const {
  if (offers->size() != 0) return false;
  const detail::ChanStats st = detail::stats_of(chan);
  // after_close_ is only filled once closed, so !closed covers it.
  return !st.closed && st.len == 0 && st.blocked_senders == 0 &&
         st.blocked_receivers == 0 && st.watchers == 0;
}

void ChannelObject::keep_after_close(std::string value) {
  absl::MutexLock lock(&after_close_mu_);
  after_close_.push_back(std::move(value));
}

std::optional<std::string> ChannelObject::take_after_close() {
  absl::MutexLock lock(&after_close_mu_);
  if (after_close_.empty()) return std::nullopt;
  std::optional<std::string> v(std::move(after_close_.front()));
  after_close_.pop_front();
  return v;
}

std::size_t ChannelObject::after_close_count() const {
  absl::MutexLock lock(&after_close_mu_);
  return after_close_.size();
}

}  // namespace dchan::server
