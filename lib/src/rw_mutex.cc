// dchan::RWMutex: Go's src/sync/rwmutex.go on futex semaphores.
#include "dchan/rw_mutex.h"

#include <atomic>
#include <cstdint>
#include <memory>

#include "dchan/error.h"
#include "dchan/mutex.h"
#include "semaphore.h"

namespace dchan {
namespace detail {

class RWMutexCore {
 public:
  // Go's rwmutexMaxReaders: a writer subtracts it from reader_count_ to
  // announce itself.
  static constexpr int32_t kMaxReaders = 1 << 30;

  // `self` is the handle's pointer to this core: a thread that blocks holds
  // a reference, so that the process may exit (destroying a global handle)
  // while it is parked.
  void lock(const std::shared_ptr<RWMutexCore>& self) {
    std::shared_ptr<RWMutexCore> keep;
    if (!w_.lock_fast()) {  // first, exclude other writers
      keep = self;
      w_.lock_slow_and_bump();
    }
    // Announce the writer; r is how many readers are inside.
    const int32_t r =
        reader_count_.fetch_sub(kMaxReaders, std::memory_order_acq_rel);
    // Wait for them to leave (those that left between the two adds already
    // decremented reader_wait_).
    if (r != 0 &&
        reader_wait_.fetch_add(r, std::memory_order_acq_rel) + r != 0) {
      if (keep == nullptr) keep = self;
      writer_sem_.acquire();
    }
  }

  bool try_lock() noexcept {
    if (!w_.try_lock()) return false;
    int32_t expected = 0;
    if (!reader_count_.compare_exchange_strong(expected, -kMaxReaders,
                                               std::memory_order_acquire,
                                               std::memory_order_relaxed)) {
      w_.unlock();
      return false;
    }
    return true;
  }

  void unlock() {
    const int32_t r =
        reader_count_.fetch_add(kMaxReaders, std::memory_order_release) +
        kMaxReaders;
    if (r >= kMaxReaders) {
      reader_count_.fetch_sub(kMaxReaders, std::memory_order_relaxed);
      throw_panic("sync: Unlock of unlocked RWMutex");
    }
    // Let in the readers that blocked behind this writer, then other writers.
    reader_sem_.release(static_cast<uint32_t>(r));
    w_.unlock();
  }

  void lock_shared(const std::shared_ptr<RWMutexCore>& self) {
    if (reader_count_.fetch_add(1, std::memory_order_acquire) + 1 < 0) {
      std::shared_ptr<RWMutexCore> keep = self;  // as in lock()
      reader_sem_.acquire();  // a writer holds or waits for the lock
    }
  }

  bool try_lock_shared() noexcept {
    int32_t c = reader_count_.load(std::memory_order_relaxed);
    while (c >= 0) {
      if (reader_count_.compare_exchange_weak(
              c, c + 1, std::memory_order_acquire, std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }

  // `self`: see RWMutex::unlock(); only the slow path needs it.
  void unlock_shared(const std::shared_ptr<RWMutexCore>& self) {
    const int32_t r = reader_count_.fetch_sub(1, std::memory_order_release) - 1;
    if (r >= 0) return;
    if (r + 1 == 0 || r + 1 == -kMaxReaders) {
      reader_count_.fetch_add(1, std::memory_order_relaxed);
      throw_panic("sync: RUnlock of unlocked RWMutex");
    }
    // A writer is waiting: the last departing reader lets it in. The writer
    // cannot go on before that, so taking the reference here is in time.
    std::shared_ptr<RWMutexCore> keep = self;
    if (reader_wait_.fetch_sub(1, std::memory_order_acq_rel) - 1 == 0) {
      writer_sem_.release();
    }
  }

  uint64_t token() const noexcept { return w_.token(); }

 private:
  MutexCore w_;  // held while a writer holds or waits for the lock
  std::atomic<int32_t> reader_count_{0};  // readers; < 0: a writer is pending
  std::atomic<int32_t> reader_wait_{0};   // readers the writer waits for
  Semaphore writer_sem_;  // the writer waits here for departing readers
  Semaphore reader_sem_;  // readers wait here for the writer
};

}  // namespace detail

RWMutex::RWMutex() : core_(std::make_shared<detail::RWMutexCore>()) {}

// Each member takes one predictable branch: a local handle (core_ set) or a
// broker-hosted one (remote_ set).
void RWMutex::lock() {
  if (core_ == nullptr) [[unlikely]] {
    remote_->lock(false, detail::RemoteChan::kNoDeadline);
    return;
  }
  core_->lock(core_);
}
bool RWMutex::try_lock() {
  if (core_ == nullptr) [[unlikely]] {
    return remote_->lock(false, detail::RemoteChan::kNonBlocking);
  }
  return core_->try_lock();
}
void RWMutex::unlock() {
  if (core_ == nullptr) [[unlikely]] {
    remote_->unlock(false);
    return;
  }
  // The write unlock lets readers and writers in before it has finished with
  // the state; they may drop the last handle meanwhile.
  std::shared_ptr<detail::RWMutexCore> keep = core_;
  keep->unlock();
}
void RWMutex::lock_shared() {
  if (core_ == nullptr) [[unlikely]] {
    remote_->lock(true, detail::RemoteChan::kNoDeadline);
    return;
  }
  core_->lock_shared(core_);
}
bool RWMutex::try_lock_shared() {
  if (core_ == nullptr) [[unlikely]] {
    return remote_->lock(true, detail::RemoteChan::kNonBlocking);
  }
  return core_->try_lock_shared();
}
void RWMutex::unlock_shared() {
  if (core_ == nullptr) [[unlikely]] {
    remote_->unlock(true);
    return;
  }
  core_->unlock_shared(core_);
}
uint64_t RWMutex::token() const noexcept {
  if (core_ == nullptr) [[unlikely]] {
    return remote_->token();
  }
  return core_->token();
}

}  // namespace dchan
