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

ChannelObject::~ChannelObject() {
  absl::flat_hash_map<uint64_t, PendingOp> parked;
  {
    absl::MutexLock lock(&parked_mu_);
    parked.swap(parked_);
  }
  // Nobody can receive them any more. One that fires meanwhile finds the
  // object gone and does nothing.
  for (auto& [key, op] : parked) op.cancel();
}

void ChannelObject::give_back(const std::shared_ptr<ChannelObject>& obj,
                              std::string value) {
  // Moved from only on kOk.
  const ChanStatus st = obj->chan.try_send(std::move(value));
  if (st == ChanStatus::kOk) return;
  if (st == ChanStatus::kClosed) {
    obj->keep_after_close(std::move(value));
    return;
  }
  // The key is reserved before the send is parked: its completion may run
  // before send_async returns (on this thread or another), and then takes
  // the key out again so that no finished operation is stored.
  uint64_t key;
  {
    absl::MutexLock lock(&obj->parked_mu_);
    key = obj->next_parked_++;
    obj->parked_.try_emplace(key);
  }
  // The parked send gives nothing back if a close fails it: keep a copy.
  auto keep = std::make_shared<std::string>(value);
  PendingOp op = obj->chan.send_async(
      std::move(value),
      [weak = std::weak_ptr<ChannelObject>(obj), key, keep](bool ok) {
        const std::shared_ptr<ChannelObject> o = weak.lock();
        if (o == nullptr) return;  // destroyed: nobody can receive it
        if (!ok) o->keep_after_close(std::move(*keep));
        absl::MutexLock lock(&o->parked_mu_);
        o->parked_.erase(key);
      });
  absl::MutexLock lock(&obj->parked_mu_);
  auto it = obj->parked_.find(key);
  if (it != obj->parked_.end()) it->second = std::move(op);
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
