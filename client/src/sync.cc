// The broker-backed sync objects: locks (detail::RemoteLock, behind remote
// Mutex and RWMutex), wait groups (detail::RemoteWaitGroup) and atomic values
// (detail::RemoteValue), and the Client members that open them.
//
// A lock is held by the session, not by a handle, so its client-side state
// (how often it is held, the stop source of the current acquisition, whether
// it was lost) is kept once per session and name: every handle this Client
// returns for "x" shares one BrokerLock, found again through the
// Connection's registry, which also tells the lock when the session is lost.
//
// An unlock of a lock this client holds does not wait for the broker: the
// client records the release, queues the frame and returns. The session
// stream is ordered, so the broker applies it before any later request of
// this client. It is sent `quiet` (Connection::call_quiet): the broker
// answers it only if it refuses it, and the next answer the stream carries
// to a later request confirms it, so an unlock costs no answer frame and
// wakes no thread. A refusal, or the session's
// loss before the answer, is remembered by the lock's LockState and thrown
// by the next operation on that lock (the loss as kAborted, as for a lock
// lost while held: the release was never confirmed); once no handle is
// left to throw it from, it is logged to stderr.
//
// A Mutex opened with MutexOptions::keep asks the broker for a block of
// fencing tokens with each acquisition (LockRequest.token_block) and, once
// granted, for word when another request waits for the lock (a
// WantedRequest, answered on the reader thread). An unlock then keeps the
// lock in the session; a lock() while it is kept, not wanted and its block
// not used up takes it back locally with the block's next token. When it
// is wanted, the lock is released to the broker: at once if no thread of
// this client holds it (from the answer's callback), else by the holder's
// unlock(), which also releases a used-up block.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "connection.h"
#include "dchan/client.h"
#include "dchan/error.h"

namespace dchan {
namespace detail {
namespace {

using Deadline = RemoteChan::Deadline;
constexpr Deadline kNoDeadline = RemoteChan::kNoDeadline;

// Opens `req`'s object and returns its session-local handle. Throws
// dchan::Error as Connection::call.
uint64_t open_object(Connection& conn, v1::OpenRequest req) {
  v1::ClientFrame f;
  *f.mutable_open() = std::move(req);
  return conn.call(f, kNoDeadline).open().handle();
}

// A timed operation whose deadline has passed already is tried once.
bool is_nonblocking(Deadline deadline) {
  return deadline == RemoteChan::kNonBlocking ||
         (deadline != kNoDeadline &&
          deadline <= std::chrono::steady_clock::now());
}

[[noreturn]] void throw_unexpected(const char* op, int outcome) {
  throw Error(absl::StatusCode::kInternal,
              absl::StrCat("dchan: the broker answered a ", op,
                           " request with outcome ", outcome));
}

// What this client believes about one lock of its session. Shared by the
// BrokerLock and the Connection's registry (which tells it of a loss); it
// owns nothing of the Connection.
class LockState final : public SessionObserver {
 public:
  explicit LockState(std::string name) : name_(std::move(name)) {}

  void session_lost(const absl::Status& why,
                    std::vector<std::stop_source>* to_stop) noexcept override {
    absl::MutexLock lock(&mu_);
    kept_ = false;  // a kept lock that no thread holds is not at stake
    session_gone_ = true;
    if (at_stake_locked() && lost_.ok()) {
      mark_lost_locked(why);
      to_stop->push_back(source_);
    }
  }

  // Throws the kAborted error of a lock lost earlier (every time), else the
  // error an unlock's answer brought since the last call (once).
  void throw_if_failed() {
    std::stop_source source(std::nostopstate);
    absl::Status lost;
    {
      absl::MutexLock lock(&mu_);
      if (lost_.ok()) {
        if (unlock_error_.ok()) return;
        const absl::Status err = std::exchange(unlock_error_, absl::OkStatus());
        throw Error(err.code(), std::string(err.message()));
      }
      lost = lost_;
      source = source_;
    }
    throw_lost(source, lost);
  }

  // Handles `e`, thrown by an operation on this lock: a lost connection
  // while the lock is believed held (or was lost already) is the loss of
  // the lock (kAborted); anything else is rethrown as it is. Must be called
  // from a catch block.
  [[noreturn]] void rethrow(const Error& e) {
    if (e.code() == absl::StatusCode::kUnavailable) {
      std::stop_source source(std::nostopstate);
      absl::Status lost;
      {
        absl::MutexLock lock(&mu_);
        if (lost_.ok() && at_stake_locked()) mark_lost_locked(e.status());
        lost = lost_;
        source = source_;
      }
      if (!lost.ok()) throw_lost(source, lost);
    }
    throw;
  }

  // The broker granted a kept lock (see the file comment) with `token`,
  // reserving `block` tokens.
  void kept_acquired(uint64_t token, uint32_t block) {
    absl::MutexLock lock(&mu_);
    if (!held_locked()) source_ = std::stop_source();
    ++exclusive_;
    token_.store(token, std::memory_order_relaxed);
    kept_ = true;
    kept_held_ = true;
    wanted_ = false;
    kept_token_ = token;
    next_token_ = token + 1;
    block_end_ = token + block;
  }

  // Takes a kept lock back without the broker (true) if it is kept, free,
  // not wanted, and this lock has no failure to report.
  bool relock_kept() {
    absl::MutexLock lock(&mu_);
    if (!kept_ || kept_held_ || wanted_ || !lost_.ok() || !unlock_error_.ok()) {
      return false;
    }
    // Free and kept: nothing else is held (a Mutex has no read locks), and
    // the block has a token left (an unlock releases a used-up one).
    source_ = std::stop_source();
    ++exclusive_;
    kept_held_ = true;
    token_.store(next_token_++, std::memory_order_relaxed);
    return true;
  }

  // What unlock_kept() decided.
  enum class KeptUnlock {
    kNotKept,  // not a kept lock: unlock as usual
    kNotHeld,  // kept, but no thread holds it: misuse
    kKept,     // released locally, still kept
    kRelease,  // released locally; release it on the broker with `*token`
               // (counted as an unconfirmed unlock)
  };
  KeptUnlock unlock_kept(uint64_t* token) {
    absl::MutexLock lock(&mu_);
    if (!kept_) return KeptUnlock::kNotKept;
    if (!kept_held_) return KeptUnlock::kNotHeld;
    kept_held_ = false;
    --exclusive_;
    if (!held_locked()) source_ = std::stop_source(std::nostopstate);
    if (!wanted_ && next_token_ < block_end_) return KeptUnlock::kKept;
    kept_ = false;
    ++unconfirmed_;
    *token = kept_token_;
    return KeptUnlock::kRelease;
  }

  // The broker says another request waits for the kept acquisition
  // `token`. True when the caller must release it on the broker now (it is
  // free; no longer kept); false when that acquisition is over, or a
  // thread holds it (its unlock() releases it).
  // A true return counts a release in flight: the caller must call
  // release_queued() once it has queued it.
  bool wanted(uint64_t token) {
    absl::MutexLock lock(&mu_);
    if (!kept_ || kept_token_ != token) return false;
    wanted_ = true;
    if (kept_held_) return false;
    kept_ = false;
    ++releasing_;
    return true;
  }

  void release_queued() {
    absl::MutexLock lock(&mu_);
    --releasing_;
  }

  // The last handle is going: true (with the acquisition's `*token`) when
  // the lock is kept and free, so that the caller releases it on the
  // broker. A kept lock that a thread holds stays held, as any held lock
  // whose handles are dropped.
  // Waits first until a release wanted() decided is queued: the handle's
  // release, which the caller queues next, must not overtake it (the broker
  // would refuse an unlock through a released handle, and the session
  // would keep the lock). Not once the session is lost: then nothing more
  // reaches the broker, and that release may be stuck in a write that only
  // the loss's end of the stream ends — maybe after this very call.
  bool drop_kept(uint64_t* token) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &LockState::no_release_pending));
    if (!kept_ || kept_held_) return false;
    kept_ = false;
    *token = kept_token_;
    return true;
  }

  // The answer to the release of a kept lock that no thread held (wanted()
  // or drop_kept()): a refusal is reported as an unlock's; the session's
  // loss is not (nothing was held).
  void release_answered(const absl::Status& lost,
                        const v1::ServerFrame& answer) {
    if (!lost.ok() || answer.code() == 0) return;
    absl::MutexLock lock(&mu_);
    const absl::Status err(
        static_cast<absl::StatusCode>(answer.code()),
        absl::StrCat("dchan: the release of kept lock \"", name_,
                     "\" failed on the broker: ", answer.message()));
    if (orphaned_) {
      log_locked(err);
    } else if (unlock_error_.ok()) {
      unlock_error_ = err;
    }
  }

  // The broker granted the lock (`shared`: a read lock) with `token`.
  void acquired(bool shared, uint64_t token) {
    absl::MutexLock lock(&mu_);
    if (!held_locked()) source_ = std::stop_source();
    if (shared) {
      ++shared_;
      // A read hold carries the last exclusive acquisition's token, as a
      // local RWMutex's token() reads the last writer's.
      if (exclusive_ == 0) token_.store(token, std::memory_order_relaxed);
    } else {
      ++exclusive_;
      token_.store(token, std::memory_order_relaxed);
    }
  }

  // The session was lost while the grant was on its way (acquired() came
  // too late for session_lost to see it): mark and report it now.
  [[noreturn]] void lost_on_grant(const absl::Status& why) {
    std::stop_source source(std::nostopstate);
    absl::Status lost;
    {
      absl::MutexLock lock(&mu_);
      if (lost_.ok()) mark_lost_locked(why);
      lost = lost_;
      source = source_;
    }
    throw_lost(source, lost);
  }

  // Starts the release of one hold (`shared`: a read lock) that this client
  // believes it has: records it as released and unconfirmed, and returns
  // the token to send with the unlock (0: no check; the exclusive
  // acquisition's otherwise). nullopt, changing nothing, when it has no
  // such hold as far as it knows (then only the broker can tell: a handle
  // dropped and opened again forgets the holds).
  std::optional<uint64_t> start_unlock(bool shared) {
    absl::MutexLock lock(&mu_);
    int& count = shared ? shared_ : exclusive_;
    if (count == 0) return std::nullopt;
    --count;
    ++unconfirmed_;
    if (!held_locked()) source_ = std::stop_source(std::nostopstate);
    return shared ? 0 : token_.load(std::memory_order_relaxed);
  }

  // The answer to an unlock start_unlock() began: `lost` not OK when the
  // session was lost before it (or it could not be sent), else `answer`
  // (an error answer or OK). Runs on a reader thread: does not block.
  void unlock_answered(const absl::Status& lost,
                       const v1::ServerFrame& answer) {
    absl::MutexLock lock(&mu_);
    --unconfirmed_;
    absl::Status err;
    if (!lost.ok()) {
      // The broker may not have applied it: the lock was held when the
      // session went, as if the unlock had never been called.
      if (lost_.ok()) mark_lost_locked(lost);
      err = lost_;
    } else if (answer.code() != 0) {
      err = absl::Status(
          static_cast<absl::StatusCode>(answer.code()),
          absl::StrCat("dchan: an earlier unlock of lock \"", name_,
                       "\" failed on the broker: ", answer.message()));
      if (unlock_error_.ok()) unlock_error_ = err;
    } else {
      return;
    }
    if (orphaned_) log_locked(err);
  }

  // Unlocks whose answer has not arrived.
  int unconfirmed() const {
    absl::MutexLock lock(&mu_);
    return unconfirmed_;
  }

  // No handle is left to throw an unlock's error from: it is logged
  // instead (those that came already and were not thrown, too).
  void orphan() {
    absl::MutexLock lock(&mu_);
    orphaned_ = true;
    if (!unlock_error_.ok()) log_locked(std::exchange(unlock_error_, {}));
  }

  uint64_t token() const noexcept {
    return token_.load(std::memory_order_relaxed);
  }

  std::stop_token hold_token() const noexcept {
    absl::MutexLock lock(&mu_);
    if (!held_locked() && lost_.ok()) return std::stop_token();
    return source_.get_token();
  }

 private:
  bool held_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return exclusive_ > 0 || shared_ > 0;
  }

  // drop_kept()'s wait is over (see there).
  bool no_release_pending() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return releasing_ == 0 || session_gone_;
  }

  // Whether losing the session now loses a hold: one this client has, or
  // one whose release the broker has not confirmed.
  bool at_stake_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return held_locked() || unconfirmed_ > 0;
  }

  void log_locked(const absl::Status& err) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::fprintf(stderr,
                 "dchan: an unlock of lock \"%s\" failed after its last "
                 "handle was dropped: %s\n",
                 name_.c_str(), err.ToString().c_str());
  }

  void mark_lost_locked(const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    lost_ = absl::AbortedError(absl::StrCat(
        "dchan: lock \"", name_, "\" was lost while held (token ",
        token_.load(std::memory_order_relaxed), "): ", why.message()));
  }

  // Requests the acquisition's stop before reporting the loss, so that a
  // caller that catches the error finds hold_token() stopped.
  [[noreturn]] static void throw_lost(std::stop_source& source,
                                      const absl::Status& lost) {
    source.request_stop();
    throw Error(lost.code(), std::string(lost.message()));
  }

  const std::string name_;
  mutable absl::Mutex mu_;
  // Holds this client believes its session has: counts, not flags (a
  // session may hold several read locks). A release is recorded before its
  // unlock is sent, so before the broker can hand the lock to another
  // thread of this session.
  int exclusive_ ABSL_GUARDED_BY(mu_) = 0;
  int shared_ ABSL_GUARDED_BY(mu_) = 0;
  int unconfirmed_ ABSL_GUARDED_BY(mu_) = 0;        // unlocks not answered yet
  absl::Status unlock_error_ ABSL_GUARDED_BY(mu_);  // not thrown yet
  bool orphaned_ ABSL_GUARDED_BY(mu_) = false;      // see orphan()
  // The current acquisition's (while held; kept once lost).
  std::stop_source source_ ABSL_GUARDED_BY(mu_){std::nostopstate};
  absl::Status lost_ ABSL_GUARDED_BY(mu_);  // kAborted once lost
  // The token of the last exclusive acquisition (written under mu_).
  std::atomic<uint64_t> token_{0};
  // A kept lock (see the file comment): kept_ while the session holds it
  // under acquisition kept_token_; kept_held_ while a thread holds it
  // (counted in exclusive_ too); wanted_ once the broker said another
  // request waits. Local relocks take tokens next_token_ .. block_end_ - 1.
  bool kept_ ABSL_GUARDED_BY(mu_) = false;
  bool kept_held_ ABSL_GUARDED_BY(mu_) = false;
  bool wanted_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t kept_token_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t block_end_ ABSL_GUARDED_BY(mu_) = 0;
  // Releases wanted() decided that are not queued yet, and whether the
  // session is lost (session_lost() ran).
  int releasing_ ABSL_GUARDED_BY(mu_) = 0;
  bool session_gone_ ABSL_GUARDED_BY(mu_) = false;
};

// A lock on the broker: the backend of a remote Mutex (exclusive only) or
// RWMutex, one per session and name.
class BrokerLock final : public RemoteLock {
 public:
  // `token_block` > 1: a kept Mutex (MutexOptions::keep) reserving that
  // many tokens per acquisition.
  BrokerLock(std::shared_ptr<Connection> conn, uint64_t handle, std::string key,
             std::shared_ptr<LockState> state, uint32_t token_block)
      : conn_(std::move(conn)),
        handle_(handle),
        key_(std::move(key)),
        state_(std::move(state)),
        token_block_(token_block) {}

  ~BrokerLock() override {
    conn_->unshare(key_, state_.get());
    if (uint64_t token; state_->drop_kept(&token)) {
      // Ends with the session anyway: nothing to wait for.
      release_kept(*conn_, handle_, token, state_);
    }
    if (state_->unconfirmed() > 0) {
      // Wait for the unlocks' answers (the stream is ordered: they come
      // before the release's), so that an error among them can still be
      // logged and a Client destroyed next does not cut them off.
      v1::ClientFrame f;
      f.mutable_release()->set_handle(handle_);
      try {
        conn_->call(f, kNoDeadline);
      } catch (const Error&) {
        // The session is lost: the unlocks' callbacks report it.
      }
    } else {
      conn_->release(handle_);
    }
    state_->orphan();
  }

  uint32_t token_block() const noexcept { return token_block_; }

  bool lock(bool shared, Deadline deadline) override {
    conn_->check_session();
    if (keeps() && state_->relock_kept()) return true;
    state_->throw_if_failed();
    const bool nonblocking = is_nonblocking(deadline);
    v1::ClientFrame f;
    v1::LockRequest* req = f.mutable_lock();
    req->set_handle(handle_);
    req->set_shared(shared);
    req->set_nonblocking(nonblocking);
    if (keeps()) req->set_token_block(token_block_);
    v1::ServerFrame answer;
    try {
      // A timed request is withdrawn at the deadline; the final answer
      // decides (OK: granted before the withdrawal arrived).
      answer = conn_->call(f, nonblocking ? kNoDeadline : deadline);
    } catch (const Error& e) {
      state_->rethrow(e);
    }
    switch (answer.lock().outcome()) {
      case v1::OUTCOME_OK:
        // Kept only if the broker reserved the block (one that does not
        // know token_block reserves nothing and leaves it unset).
        if (keeps() && answer.lock().token_block() == token_block_) {
          state_->kept_acquired(answer.lock().token(), token_block_);
          ask_wanted(answer.lock().token());
        } else {
          state_->acquired(shared, answer.lock().token());
        }
        if (const absl::Status lost = conn_->lost(); !lost.ok()) {
          state_->lost_on_grant(lost);
        }
        return true;
      case v1::OUTCOME_WOULD_BLOCK:
      case v1::OUTCOME_CANCELLED:
        return false;
      default:
        throw_unexpected("lock", answer.lock().outcome());
    }
  }

  // Returns without waiting for the broker when this client holds the lock
  // (see the file comment).
  void unlock(bool shared) override {
    conn_->check_session();
    state_->throw_if_failed();
    v1::ClientFrame f;
    v1::UnlockRequest* req = f.mutable_unlock();
    req->set_handle(handle_);
    req->set_shared(shared);
    std::optional<uint64_t> token;
    uint64_t kept_token = 0;
    switch (keeps() ? state_->unlock_kept(&kept_token)
                    : LockState::KeptUnlock::kNotKept) {
      case LockState::KeptUnlock::kKept:
        return;
      case LockState::KeptUnlock::kNotHeld:
        // Only this client can tell: the broker holds it for this client.
        throw Error(absl::StatusCode::kFailedPrecondition,
                    "sync: unlock of unlocked mutex");
      case LockState::KeptUnlock::kRelease:
        token = kept_token;
        break;
      case LockState::KeptUnlock::kNotKept:
        token = state_->start_unlock(shared);
        break;
    }
    if (!token.has_value()) {
      // Not held, as far as this client knows: the broker decides and
      // answers misuse (Go's message) at once.
      try {
        conn_->call(f, kNoDeadline);
      } catch (const Error& e) {
        state_->rethrow(e);
      }
      return;
    }
    req->set_token(*token);
    req->set_quiet(true);
    try {
      conn_->call_quiet(f, [state = state_](const absl::Status& lost,
                                            v1::ServerFrame& answer) {
        state->unlock_answered(lost, answer);
      });
    } catch (const Error& e) {
      // Not sent: the session is lost.
      state_->unlock_answered(e.status(), v1::ServerFrame());
      state_->rethrow(e);
    }
  }

  uint64_t token() const noexcept override { return state_->token(); }

  std::stop_token hold_token() const noexcept override {
    return state_->hold_token();
  }

 private:
  bool keeps() const noexcept { return token_block_ > 1; }

  // Asks the broker to say when another request waits for the kept
  // acquisition `token`; the answer's callback releases the lock if no
  // thread holds it then. The callback runs on the Connection's reader
  // thread (or fails with the session), so it may use the Connection.
  void ask_wanted(uint64_t token) {
    v1::ClientFrame f;
    f.mutable_wanted()->set_handle(handle_);
    f.mutable_wanted()->set_token(token);
    try {
      conn_->call_async(
          f, [conn = conn_.get(), handle = handle_, token, state = state_](
                 const absl::Status& lost, v1::ServerFrame& answer) {
            // A lost session reaches the lock through session_lost.
            if (!lost.ok()) return;
            // CANCELLED: that acquisition is over. Anything else is wanted,
            // a refusal too: a client that cannot learn when others wait
            // must not keep the lock.
            if (answer.code() == 0 &&
                answer.wanted().outcome() == v1::OUTCOME_CANCELLED) {
              return;
            }
            if (state->wanted(token)) {
              release_kept(*conn, handle, token, state);
              state->release_queued();
            }
          });
    } catch (const Error&) {
      // Not sent: the session is lost, which lock() reports next.
    }
  }

  // Releases kept acquisition `token`, which no thread holds, on the broker
  // (quiet: answered only if refused). Never throws.
  static void release_kept(Connection& conn, uint64_t handle, uint64_t token,
                           const std::shared_ptr<LockState>& state) noexcept {
    v1::ClientFrame f;
    v1::UnlockRequest* req = f.mutable_unlock();
    req->set_handle(handle);
    req->set_token(token);
    req->set_quiet(true);
    try {
      conn.call_quiet(
          f, [state](const absl::Status& lost, v1::ServerFrame& answer) {
            state->release_answered(lost, answer);
          });
    } catch (const Error&) {
      // The session is lost: the broker released the lock with it.
    }
  }

  const std::shared_ptr<Connection> conn_;
  const uint64_t handle_;
  const std::string key_;  // in the Connection's registry
  const std::shared_ptr<LockState> state_;
  const uint32_t token_block_;
};

// Tokens a kept Mutex reserves per acquisition from the broker: one
// acquisition on the broker per this many local relocks at most.
constexpr uint32_t kKeptTokenBlock = 4096;

// A lock of this Client already open under `name` must have been opened
// with the same keep setting (`token_block`): handles of one name share one
// state.
std::shared_ptr<RemoteLock> checked(std::shared_ptr<BrokerLock> lock,
                                    const std::string& name,
                                    uint32_t token_block) {
  if (lock->token_block() != token_block) {
    throw Error(absl::StatusCode::kInvalidArgument,
                absl::StrCat("dchan: mutex \"", name,
                             "\" is open in this Client with keep = ",
                             lock->token_block() > 1 ? "true" : "false",
                             "; every handle of it must use the same"));
  }
  return lock;
}

std::shared_ptr<RemoteLock> open_remote_lock(
    const std::shared_ptr<Connection>& conn, const std::string& name,
    v1::ObjectKind kind, uint32_t token_block = 0) {
  const std::string key = absl::StrCat(
      kind == v1::OBJECT_KIND_RW_MUTEX ? "rw_mutex:" : "mutex:", name);
  if (std::shared_ptr<void> found = conn->find_shared(key)) {
    return checked(std::static_pointer_cast<BrokerLock>(found), name,
                   token_block);
  }
  v1::OpenRequest req;
  req.set_name(name);
  req.set_kind(kind);
  const uint64_t handle = open_object(*conn, std::move(req));
  auto state = std::make_shared<LockState>(name);
  auto lock =
      std::make_shared<BrokerLock>(conn, handle, key, state, token_block);
  // Another thread may have opened the name meanwhile: one of the two
  // wins, the other's broker handle is released with its BrokerLock.
  return checked(std::static_pointer_cast<BrokerLock>(
                     conn->share(key, std::move(lock), std::move(state))),
                 name, token_block);
}

class BrokerWaitGroup final : public RemoteWaitGroup {
 public:
  BrokerWaitGroup(std::shared_ptr<Connection> conn, uint64_t handle)
      : conn_(std::move(conn)), handle_(handle) {}

  ~BrokerWaitGroup() override { conn_->release(handle_); }

  void add(int delta) override { add_and_count(delta); }

  bool wait(Deadline deadline) override {
    const bool nonblocking = is_nonblocking(deadline);
    v1::ClientFrame f;
    v1::WaitRequest* req = f.mutable_wait();
    req->set_handle(handle_);
    req->set_nonblocking(nonblocking);
    // A failed wait group is an error answer: kAborted naming the lost
    // participant.
    const v1::ServerFrame answer =
        conn_->call(f, nonblocking ? kNoDeadline : deadline);
    switch (answer.wait().outcome()) {
      case v1::OUTCOME_OK:
        return true;
      case v1::OUTCOME_WOULD_BLOCK:
      case v1::OUTCOME_CANCELLED:
        return false;
      default:
        throw_unexpected("wait", answer.wait().outcome());
    }
  }

  // An add of 0 changes nothing and answers the counter.
  int count() override { return add_and_count(0); }

 private:
  int add_and_count(int delta) {
    v1::ClientFrame f;
    v1::AddRequest* req = f.mutable_add();
    req->set_handle(handle_);
    req->set_delta(delta);
    return static_cast<int>(conn_->call(f, kNoDeadline).add().count());
  }

  const std::shared_ptr<Connection> conn_;
  const uint64_t handle_;
};

class BrokerValue final : public RemoteValue {
 public:
  BrokerValue(std::shared_ptr<Connection> conn, uint64_t handle)
      : conn_(std::move(conn)), handle_(handle) {}

  ~BrokerValue() override { conn_->release(handle_); }

  std::optional<std::string> load() override {
    v1::ClientFrame f;
    f.mutable_load()->set_handle(handle_);
    v1::ServerFrame answer = conn_->call(f, kNoDeadline);
    if (!answer.load().has_value()) return std::nullopt;
    return std::move(*answer.mutable_load()->mutable_value());
  }

  std::optional<std::string> swap(const std::string& value) override {
    v1::ClientFrame f;
    v1::SwapRequest* req = f.mutable_swap();
    req->set_handle(handle_);
    req->set_value(value);
    v1::ServerFrame answer = conn_->call(f, kNoDeadline);
    if (!answer.swap().had_value()) return std::nullopt;
    return std::move(*answer.mutable_swap()->mutable_old());
  }

  bool compare_and_swap(const std::string& old,
                        const std::string& desired) override {
    v1::ClientFrame f;
    v1::CompareAndSwapRequest* req = f.mutable_compare_and_swap();
    req->set_handle(handle_);
    req->set_old(old);
    req->set_desired(desired);
    return conn_->call(f, kNoDeadline).compare_and_swap().swapped();
  }

 private:
  const std::shared_ptr<Connection> conn_;
  const uint64_t handle_;
};

}  // namespace

std::shared_ptr<RemoteValue> open_remote_value(
    const std::shared_ptr<Connection>& conn, const std::string& name,
    const std::string& type_name) {
  v1::OpenRequest req;
  req.set_name(name);
  req.set_kind(v1::OBJECT_KIND_ATOMIC_VALUE);
  req.set_type_name(type_name);
  return std::make_shared<BrokerValue>(conn,
                                       open_object(*conn, std::move(req)));
}

}  // namespace detail

Mutex Client::mutex(const std::string& name) {
  return mutex(name, MutexOptions());
}

Mutex Client::mutex(const std::string& name, MutexOptions options) {
  return detail::make_remote_mutex(
      detail::open_remote_lock(conn_, name, v1::OBJECT_KIND_MUTEX,
                               options.keep ? detail::kKeptTokenBlock : 0));
}

RWMutex Client::rw_mutex(const std::string& name) {
  return detail::make_remote_rw_mutex(
      detail::open_remote_lock(conn_, name, v1::OBJECT_KIND_RW_MUTEX));
}

WaitGroup Client::wait_group(const std::string& name,
                             WaitGroupOptions options) {
  v1::OpenRequest req;
  req.set_name(name);
  req.set_kind(v1::OBJECT_KIND_WAIT_GROUP);
  req.set_forgive(options.forgive);
  const uint64_t handle = detail::open_object(*conn_, std::move(req));
  return detail::make_remote_wait_group(
      std::make_shared<detail::BrokerWaitGroup>(conn_, handle));
}

}  // namespace dchan
