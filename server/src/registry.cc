#include "registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "atomic_value.h"
#include "lock.h"
#include "wait_group.h"

namespace dchan::server {

absl::StatusOr<std::shared_ptr<Object>> Registry::open(
    const v1::OpenRequest& req) {
  if (absl::Status st = check_request(req); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  auto it = objects_.find(req.name());
  if (it != objects_.end()) {
    if (absl::Status st = check_match(*it->second, req); !st.ok()) return st;
    return it->second;
  }
  if (objects_.size() >= limits_.max_objects) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the broker holds ", objects_.size(), " objects, its limit; \"",
        req.name(), "\" was not created"));
  }
  std::shared_ptr<Object> obj = make_locked(req);
  objects_.emplace(req.name(), obj);
  return obj;
}

absl::StatusOr<std::shared_ptr<ChannelObject>> Registry::open_channel(
    const std::string& name, const std::string& type_name, uint64_t capacity) {
  v1::OpenRequest req;
  req.set_name(name);
  req.set_kind(v1::OBJECT_KIND_CHANNEL);
  req.set_type_name(type_name);
  req.set_capacity(capacity);
  absl::StatusOr<std::shared_ptr<Object>> obj = open(req);
  if (!obj.ok()) return obj.status();
  return std::static_pointer_cast<ChannelObject>(*std::move(obj));
}

absl::Status Registry::check_request(const v1::OpenRequest& req) const {
  const std::string& name = req.name();
  if (name.empty()) return absl::InvalidArgumentError("object name is empty");
  if (name.size() > limits_.max_name_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("object name is ", name.size(), " bytes; the limit is ",
                     limits_.max_name_bytes));
  }
  switch (req.kind()) {
    case v1::OBJECT_KIND_CHANNEL:
    case v1::OBJECT_KIND_ATOMIC_VALUE: {
      const absl::string_view what =
          req.kind() == v1::OBJECT_KIND_CHANNEL ? "channel" : "AtomicValue";
      if (req.type_name().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " \"", name, "\": element type name is empty"));
      }
      if (req.type_name().size() > limits_.max_type_name_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, " \"", name, "\": type name is ", req.type_name().size(),
            " bytes; the limit is ", limits_.max_type_name_bytes));
      }
      if (req.kind() == v1::OBJECT_KIND_CHANNEL &&
          req.capacity() > limits_.max_capacity) {
        return absl::InvalidArgumentError(absl::StrCat(
            "channel \"", name, "\": capacity ", req.capacity(),
            " is over the broker's limit of ", limits_.max_capacity));
      }
      return absl::OkStatus();
    }
    case v1::OBJECT_KIND_MUTEX:
    case v1::OBJECT_KIND_RW_MUTEX:
    case v1::OBJECT_KIND_WAIT_GROUP:
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "open \"", name, "\": unsupported object kind ",
          v1::ObjectKind_IsValid(req.kind()) ? v1::ObjectKind_Name(req.kind())
                                             : absl::StrCat(req.kind())));
  }
}

absl::Status Registry::check_match(const Object& existing,
                                   const v1::OpenRequest& req) {
  const std::string& name = req.name();
  if (existing.kind() != req.kind()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", name, "\" is ", kind_with_article(existing.kind()),
                     ", not ", kind_with_article(req.kind())));
  }
  switch (existing.kind()) {
    case v1::OBJECT_KIND_CHANNEL: {
      const auto& c = static_cast<const ChannelObject&>(existing);
      if (c.type_name != req.type_name() || c.capacity != req.capacity()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "channel \"", name, "\" exists as chan ", c.type_name,
            " with capacity ", c.capacity, "; this open asked for chan ",
            req.type_name(), " with capacity ", req.capacity()));
      }
      return absl::OkStatus();
    }
    case v1::OBJECT_KIND_ATOMIC_VALUE: {
      const auto& v = static_cast<const ValueObject&>(existing);
      if (v.type_name != req.type_name()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "AtomicValue \"", name, "\" exists with type ", v.type_name,
            "; this open asked for type ", req.type_name()));
      }
      return absl::OkStatus();
    }
    case v1::OBJECT_KIND_WAIT_GROUP: {
      const auto& wg = static_cast<const WaitGroupObject&>(existing);
      if (wg.forgive() != req.forgive()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "WaitGroup \"", name, "\" exists with forgive=",
            wg.forgive() ? "true" : "false", "; this open asked for forgive=",
            req.forgive() ? "true" : "false"));
      }
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();
  }
}

std::shared_ptr<Object> Registry::make_locked(const v1::OpenRequest& req) {
  switch (req.kind()) {
    case v1::OBJECT_KIND_CHANNEL:
      return std::make_shared<ChannelObject>(req.name(), req.type_name(),
                                             req.capacity(),
                                             limits_.offer_claim_timeout);
    case v1::OBJECT_KIND_MUTEX:
    case v1::OBJECT_KIND_RW_MUTEX:
      return std::make_shared<LockObject>(req.name(), req.kind(),
                                          forgotten_token_);
    case v1::OBJECT_KIND_WAIT_GROUP:
      return std::make_shared<WaitGroupObject>(req.name(), req.forgive());
    case v1::OBJECT_KIND_ATOMIC_VALUE:
      return std::make_shared<ValueObject>(req.name(), req.type_name());
    default:
      return nullptr;  // refused by check_request()
  }
}

bool Registry::forget_if_idle(const std::string& name) {
  std::shared_ptr<Object> doomed;  // destroyed with mu_ free
  {
    absl::MutexLock lock(&mu_);
    auto it = objects_.find(name);
    if (it == objects_.end()) return false;
    // use_count() == 1: ours is the only reference, and no other can be
    // taken while we hold mu_ (see the file comment).
    if (it->second.use_count() != 1) {
      if (it->second->handles() == 0) lingering_.insert(name);
      return false;
    }
    if (!it->second->idle()) return false;
    doomed = forget_locked(it);
    lingering_.erase(name);
  }
  return true;
}

std::size_t Registry::sweep_lingering() {
  std::vector<std::shared_ptr<Object>> doomed;  // destroyed with mu_ free
  absl::MutexLock lock(&mu_);
  for (auto n = lingering_.begin(); n != lingering_.end();) {
    auto it = objects_.find(*n);
    bool keep = false;
    // A handle's drop checks the object again; an object with state (not
    // idle) is kept by design.
    if (it != objects_.end() && it->second->handles() == 0) {
      if (it->second.use_count() != 1) {
        keep = true;
      } else if (it->second->idle()) {
        doomed.push_back(forget_locked(it));
      }
    }
    if (keep) {
      ++n;
    } else {
      lingering_.erase(n++);
    }
  }
  return doomed.size();
}

std::shared_ptr<Object> Registry::forget_locked(
    absl::flat_hash_map<std::string, std::shared_ptr<Object>>::iterator it) {
  if (LockObject::is_kind(it->second->kind())) {
    forgotten_token_ = std::max(
        forgotten_token_, static_cast<const LockObject&>(*it->second).token());
  }
  std::shared_ptr<Object> doomed = std::move(it->second);
  objects_.erase(it);
  return doomed;
}

std::vector<std::shared_ptr<Object>> Registry::objects() const {
  std::vector<std::shared_ptr<Object>> out;
  {
    absl::MutexLock lock(&mu_);
    out.reserve(objects_.size());
    for (const auto& [name, obj] : objects_) out.push_back(obj);
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a->name() < b->name(); });
  return out;
}

std::vector<v1::ObjectInfo> Registry::describe_all() const {
  std::vector<v1::ObjectInfo> out;
  {
    absl::MutexLock lock(&mu_);
    out.resize(objects_.size());
    std::size_t i = 0;
    for (const auto& [name, obj] : objects_) obj->describe(out[i++]);
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.name() < b.name(); });
  return out;
}

std::size_t Registry::size() const {
  absl::MutexLock lock(&mu_);
  return objects_.size();
}

}  // namespace dchan::server
