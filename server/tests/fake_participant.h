// server/tests/fake_participant.h — a session stand-in for object tests.
#ifndef DCHAN_SERVER_TESTS_FAKE_PARTICIPANT_H_
#define DCHAN_SERVER_TESTS_FAKE_PARTICIPANT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "object.h"

namespace dchan::server::fakes {

class FakeParticipant final : public Participant {
 public:
  FakeParticipant(uint64_t id, std::string name)
      : id_(id), name_(std::move(name)) {}

  static std::shared_ptr<FakeParticipant> make(uint64_t id,
                                               std::string name = "") {
    return std::make_shared<FakeParticipant>(id, std::move(name));
  }

  uint64_t id() const noexcept override { return id_; }
  bool live() const noexcept override {
    return live_.load(std::memory_order_acquire);
  }
  std::string describe() const override {
    return absl::StrCat("participant \"", name_, "\" (session ", id_,
                        ", test-peer)");
  }

  // Ends it the way a Session does: live() false first, then the objects
  // are told.
  void kill() { live_.store(false, std::memory_order_release); }
  void end(Object& obj) {
    kill();
    obj.session_ended(*this);
  }

 private:
  const uint64_t id_;
  const std::string name_;
  std::atomic<bool> live_{true};
};

}  // namespace dchan::server::fakes

#endif  // DCHAN_SERVER_TESTS_FAKE_PARTICIPANT_H_
