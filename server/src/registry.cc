#include "registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dchan::server {

absl::StatusOr<std::shared_ptr<ChannelObject>> Registry::open_channel(
    const std::string& name, const std::string& type_name, uint64_t capacity) {
  if (name.empty()) return absl::InvalidArgumentError("object name is empty");
  if (name.size() > limits_.max_name_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("object name is ", name.size(), " bytes; the limit is ",
                     limits_.max_name_bytes));
  }
  if (type_name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("channel \"", name, "\": element type name is empty"));
  }
  if (type_name.size() > limits_.max_type_name_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("channel \"", name, "\": type name is ", type_name.size(),
                     " bytes; the limit is ", limits_.max_type_name_bytes));
  }
  if (capacity > limits_.max_capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("channel \"", name, "\": capacity ", capacity,
                     " is over the broker's limit of ", limits_.max_capacity));
  }
  absl::MutexLock lock(&mu_);
  auto it = channels_.find(name);
  if (it != channels_.end()) {
    const ChannelObject& c = *it->second;
    if (c.type_name != type_name || c.capacity != capacity) {
      return absl::InvalidArgumentError(absl::StrCat(
          "channel \"", name, "\" exists as chan ", c.type_name,
          " with capacity ", c.capacity, "; this open asked for chan ",
          type_name, " with capacity ", capacity));
    }
    return it->second;
  }
  if (channels_.size() >= limits_.max_objects) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the broker holds ", channels_.size(),
                     " objects, its limit; \"", name, "\" was not created"));
  }
  auto obj = std::make_shared<ChannelObject>();
  obj->name = name;
  obj->type_name = type_name;
  obj->capacity = capacity;
  obj->chan = make_chan<std::string>(capacity);
  channels_.emplace(name, obj);
  return obj;
}

std::vector<std::shared_ptr<ChannelObject>> Registry::channels() const {
  std::vector<std::shared_ptr<ChannelObject>> out;
  {
    absl::MutexLock lock(&mu_);
    out.reserve(channels_.size());
    for (const auto& [name, obj] : channels_) out.push_back(obj);
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a->name < b->name; });
  return out;
}

std::size_t Registry::size() const {
  absl::MutexLock lock(&mu_);
  return channels_.size();
}

}  // namespace dchan::server
