// server/src/atomic_value.h — a broker-hosted atomic value
// (OBJECT_KIND_ATOMIC_VALUE): bytes under one mutex, so every operation is
// linearizable. Values are the client codec's bytes; compare_and_swap
// compares bytes. The element type name is fixed at creation and checked
// by every open, like a channel's.
//
// Thread safety: every member may be called concurrently.
#ifndef DCHAN_SERVER_ATOMIC_VALUE_H_
#define DCHAN_SERVER_ATOMIC_VALUE_H_

#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "object.h"

namespace dchan::server {

class ValueObject final : public Object {
 public:
  static bool is_kind(v1::ObjectKind kind) {
    return kind == v1::OBJECT_KIND_ATOMIC_VALUE;
  }

  ValueObject(std::string name, std::string type_name)
      : Object(std::move(name), v1::OBJECT_KIND_ATOMIC_VALUE),
        type_name(std::move(type_name)) {}

  const std::string type_name;

  // The value; nullopt before the first store.
  std::optional<std::string> load() const;
  // Stores `value`; returns the value it replaced.
  std::optional<std::string> swap(std::string value);
  // Stores `desired` if a value is stored and its bytes equal `old`.
  bool compare_and_swap(const std::string& old, std::string desired);

  // Never stored.
  bool idle() const override;

 private:
  void describe_kind(v1::ObjectInfo& info) const override;

  mutable absl::Mutex mu_;
  std::optional<std::string> value_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_ATOMIC_VALUE_H_
