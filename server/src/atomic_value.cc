#include "atomic_value.h"

#include <utility>

namespace dchan::server {

std::optional<std::string> ValueObject::load() const {
  absl::MutexLock lock(&mu_);
  return value_;
}

std::optional<std::string> ValueObject::swap(std::string value) {
  absl::MutexLock lock(&mu_);
  std::optional<std::string> old = std::move(value_);
  value_ = std::move(value);
  return old;
}

bool ValueObject::compare_and_swap(const std::string& old,
                                   std::string desired) {
  absl::MutexLock lock(&mu_);
  if (!value_.has_value() || *value_ != old) return false;
  *value_ = std::move(desired);
  return true;
}

bool ValueObject::idle() const {
  absl::MutexLock lock(&mu_);
  return !value_.has_value();
}

void ValueObject::describe_kind(v1::ObjectInfo& info) const {
  info.set_type_name(type_name);
  absl::MutexLock lock(&mu_);
  info.set_has_value(value_.has_value());
}

}  // namespace dchan::server
