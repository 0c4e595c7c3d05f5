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
  info.set_len(st.len);
  info.set_cap(st.cap);
  info.set_closed(st.closed);
  info.set_blocked_senders(st.blocked_senders);
  info.set_blocked_receivers(st.blocked_receivers);
}

}  // namespace dchan::server
