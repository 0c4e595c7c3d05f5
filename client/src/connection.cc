#include "connection.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "dchan/detail/futex.h"
#include "dchan/error.h"

namespace dchan::detail {
namespace {

[[noreturn]] void throw_status(const absl::Status& status) {
  throw Error(status.code(), std::string(status.message()));
}

// "hostname:pid", the default client name.
std::string default_client_name() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(host[0] != '\0' ? host : "unknown", ":", ::getpid());
}

}  // namespace

Connection::Connection(const std::string& target, const ClientOptions& options)
    : target_(target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
              static_cast<int>(options.keepalive_time.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              static_cast<int>(options.keepalive_timeout.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetMaxReceiveMessageSize(-1);
  // Each Client is its own session: do not share a connection between them.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  channel_ = grpc::CreateCustomChannel(
      target, grpc::InsecureChannelCredentials(), args);
  // One deadline for the whole connect: the transport's readiness and the
  // Hello's answer share options.connect_timeout (each getting all of it
  // could take twice as long). WaitForConnected wants a system_clock time,
  // the Hello a steady one: the same moment on both clocks.
  const Clock::time_point deadline = Clock::now() + options.connect_timeout;
  if (!channel_->WaitForConnected(std::chrono::system_clock::now() +
                                  options.connect_timeout)) {
    throw Error(
        absl::StatusCode::kUnavailable,
        absl::StrCat("dchan: cannot reach the broker at ", target, " within ",
                     options.connect_timeout.count(), " ms"));
  }
  stub_ = v1::Broker::NewStub(channel_);
  stream_ = stub_->Session(&context_);
  background_reader_ = std::thread([this] { background_read_loop(); });
  try {
    hello(options, deadline);
  } catch (...) {
    shut_down();
    throw;
  }
  pinger_ = std::thread([this] { ping_loop(); });
}

Connection::~Connection() { shut_down(); }

void Connection::shut_down() {
  {
    // Requests still to be made or answered under a hold() get the open
    // stream (a lost session ends them, and their holds).
    absl::MutexLock lock(&hold_mu_);
    hold_mu_.Await(absl::Condition(
        +[](std::size_t* holds) { return *holds == 0; }, &holds_));
  }
  if (pinger_.joinable()) {
    {
      absl::MutexLock lock(&ping_mu_);
      ping_stop_ = true;
    }
    pinger_.join();
  }
  {
    // The writer thread writes what is queued, then stops.
    absl::MutexLock lock(&write_mu_);
    writer_stop_ = true;
  }
  if (writer_.joinable()) writer_.join();
  {
    absl::MutexLock lock(&write_mu_);
    // No user thread can be writing: each holds a reference while it does
    // (and the ping and writer threads have stopped). The reader may still
    // answer an offer's claim while it reads the stream to its end: from
    // here on, such late frames are dropped (no Write after WritesDone), and
    // one it is writing now is waited for.
    write_mu_.Await(absl::Condition(
        +[](bool* writing) { return !*writing; }, &writing_));
    if (!writes_failed_) stream_->WritesDone();
    writes_failed_ = true;
  }
  context_.TryCancel();
  // Read the stream to its end (nobody else is left to, unless the
  // background reader holds the role for an asynchronous call): that
  // finishes it and fails what is still outstanding.
  bool read_to_end = false;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    mu_.Await(absl::Condition(
        +[](Connection* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
          return !c->reading_ || c->stream_over_;
        },
        this));
    if (!stream_over_) {
      reading_ = true;
      read_to_end = true;
    }
  }
  if (read_to_end) {
    v1::ServerBatch batch;
    for (;;) {
      read_once(batch);
      absl::MutexLock lock(&mu_);
      if (stream_over_) break;
    }
  }
  background_reader_.join();
}

void Connection::hello(const ClientOptions& options,
                       Clock::time_point deadline) {
  name_ = options.name.empty() ? default_client_name() : options.name;
  v1::ClientFrame f;
  v1::HelloRequest* req = f.mutable_hello();
  req->set_client_name(name_);
  req->set_ttl_ms(
      static_cast<uint64_t>(std::max<int64_t>(0, options.session_ttl.count())));
  // Others (the background reader) read for it: the wait is timed.
  auto call = std::make_shared<Call>();
  start(call, f);
  if (!wait_answered(*call, deadline)) {
    throw Error(absl::StatusCode::kUnavailable,
                absl::StrCat("dchan: the broker at ", target_,
                             " did not answer the session's Hello within "
                             "the connect timeout of ",
                             options.connect_timeout.count(), " ms"));
  }
  if (!call->error.ok()) throw_status(call->error);
  const v1::ServerFrame& answer = call->answer;
  if (answer.code() != 0) {
    throw Error(
        static_cast<absl::StatusCode>(answer.code()),
        absl::StrCat("dchan: the broker at ", target_,
                     " refused the session's Hello: ", answer.message()));
  }
  if (!answer.has_hello() || answer.hello().ttl_ms() == 0) {
    throw Error(absl::StatusCode::kInternal,
                absl::StrCat("dchan: the broker at ", target_,
                             " answered the Hello without a session TTL"));
  }
  session_id_ = answer.hello().session_id();
  ttl_ = std::chrono::milliseconds(answer.hello().ttl_ms());
}

void Connection::note_heard(Clock::time_point sent) noexcept {
  const Clock::rep t = sent.time_since_epoch().count();
  Clock::rep seen = heard_.load(std::memory_order_relaxed);
  while (seen < t &&
         !heard_.compare_exchange_weak(seen, t, std::memory_order_relaxed)) {
  }
}

bool Connection::check_session() noexcept {
  if (ttl_.count() == 0) return false;  // not open yet (in the constructor)
  const Clock::time_point now = Clock::now();
  const Clock::time_point heard(
      Clock::duration(heard_.load(std::memory_order_relaxed)));
  if (now - heard < ttl_) return false;
  lose_session(absl::UnavailableError(absl::StrCat(
      "dchan: lost the session with the broker at ", target_,
      ": nothing heard from it for ",
      std::chrono::duration_cast<std::chrono::milliseconds>(now - heard)
          .count(),
      " ms (session TTL ", ttl_.count(), " ms)")));
  return true;
}

void Connection::ping_loop() {
  const Clock::duration interval =
      std::max<Clock::duration>(ttl_ / 4, std::chrono::milliseconds(1));
  Clock::time_point next_ping = Clock::now() + interval;
  for (;;) {
    const Clock::time_point now = Clock::now();
    const Clock::time_point expiry =
        Clock::time_point(
            Clock::duration(heard_.load(std::memory_order_relaxed))) +
        ttl_;
    if (now >= expiry) {
      if (check_session()) return;
      continue;  // an answer arrived meanwhile
    }
    if (now >= next_ping) {
      v1::ClientFrame ping;
      ping.mutable_ping();
      try {
        // The reader notes the answer's arrival (note_heard).
        call_async(ping, [](const absl::Status&, v1::ServerFrame&) {});
      } catch (const Error&) {
        return;  // the stream is broken: nothing left to keep alive
      }
      next_ping = now + interval;
    }
    const Clock::time_point wake = std::min(next_ping, expiry);
    absl::MutexLock lock(&ping_mu_);
    if (ping_mu_.AwaitWithTimeout(absl::Condition(&ping_stop_),
                                  absl::FromChrono(wake - now))) {
      return;
    }
  }
}

void Connection::lose_session(const absl::Status& why) {
  {
    absl::MutexLock lock(&mu_);
    // Later calls fail at once — also one a stop callback makes while
    // notify_lost runs on this thread. A lock operation that fails so while
    // its lock is believed held reports the loss (kAborted) all the same.
    if (broken_.ok()) broken_ = why;
  }
  notify_lost(why);
  context_.TryCancel();  // the reader fails the pending calls with `why`
}

void Connection::notify_lost(const absl::Status& why) {
  std::vector<std::stop_source> to_stop;
  {
    absl::MutexLock lock(&shared_mu_);
    if (!lost_.ok()) return;
    lost_ = why;
    for (auto& [key, shared] : shared_) {
      shared.observer->session_lost(why, &to_stop);
    }
  }
  for (std::stop_source& s : to_stop) s.request_stop();
}

absl::Status Connection::lost() {
  absl::MutexLock lock(&shared_mu_);
  return lost_;
}

std::shared_ptr<void> Connection::find_shared(const std::string& key) {
  absl::MutexLock lock(&shared_mu_);
  auto it = shared_.find(key);
  return it == shared_.end() ? nullptr : it->second.object.lock();
}

std::shared_ptr<void> Connection::share(
    const std::string& key, std::shared_ptr<void> object,
    std::shared_ptr<SessionObserver> observer) {
  absl::MutexLock lock(&shared_mu_);
  Shared& slot = shared_[key];
  if (std::shared_ptr<void> live = slot.object.lock()) return live;
  // Empty, or left by an object whose destructor will unshare() its own
  // observer only.
  slot.object = object;
  slot.observer = std::move(observer);
  return object;
}

void Connection::unshare(const std::string& key,
                         const SessionObserver* observer) noexcept {
  absl::MutexLock lock(&shared_mu_);
  auto it = shared_.find(key);
  if (it != shared_.end() && it->second.observer.get() == observer) {
    shared_.erase(it);
  }
}

uint64_t Connection::call_async(v1::ClientFrame& frame, Callback on_answer) {
  auto call = std::make_shared<Call>();
  call->on_answer = std::move(on_answer);
  return start(call, frame);
}

uint64_t Connection::call_quiet(v1::ClientFrame& frame, Callback on_answer) {
  auto call = std::make_shared<Call>();
  call->on_answer = std::move(on_answer);
  call->self_reading = true;  // nobody waits: not for the background reader
  call->quiet = true;
  const uint64_t id = start(call, frame);
  absl::MutexLock lock(&mu_);
  // Unless refused (or failed) already. An answer read before this that
  // would have confirmed it only delays the confirmation to the next one.
  if (!call->settled) quiet_.emplace(call->queued.load(), call);
  return id;
}

uint64_t Connection::call_offer(v1::ClientFrame& frame, ClaimCallback on_claim,
                                Callback on_answer) {
  auto call = std::make_shared<Call>();
  call->on_answer = std::move(on_answer);
  call->on_claim = std::move(on_claim);
  return start(call, frame);
}

void Connection::cancel(uint64_t id) noexcept {
  v1::ClientFrame f;
  f.mutable_cancel()->set_target(id);
  try {
    // The cancel's own answer says nothing the target's answer does not:
    // NOT_FOUND only means the target's answer won the race.
    call_async(f, [](const absl::Status&, v1::ServerFrame&) {});
  } catch (...) {
    // The broker is lost: the target fails with it.
  }
}

void Connection::release(uint64_t handle, Callback on_answer) noexcept {
  v1::ClientFrame f;
  f.mutable_release()->set_handle(handle);
  if (!on_answer) on_answer = [](const absl::Status&, v1::ServerFrame&) {};
  try {
    call_async(f, std::move(on_answer));
  } catch (...) {
    // The session is gone, and its handles with it.
  }
}

void Connection::hold() noexcept {
  absl::MutexLock lock(&hold_mu_);
  ++holds_;
}

void Connection::unhold() noexcept {
  absl::MutexLock lock(&hold_mu_);
  --holds_;
}

void Connection::finish(Call& call, const absl::Status& error,
                        bool by_its_reader) {
  if (call.on_answer) {
    std::move(call.on_answer)(error, call.answer);
    return;
  }
  call.error = error;
  call.state.store(kAnswered, std::memory_order_release);
  if (!by_its_reader) futex_wake_all(call.state);
}

void Connection::send_pipelined(uint64_t handle, std::string value,
                                const std::shared_ptr<PipelinedSends>& sink) {
  {
    absl::MutexLock lock(&write_mu_);
    OpenSend& o = open_send_;
    // A queued frame means a writer is at it or has been woken: nothing
    // else to do.
    if (o.request != nullptr && o.handle == handle && o.sink == sink.get() &&
        o.bytes + value.size() <= kMaxBatchBytes / 2 && !writes_failed_) {
      o.bytes += value.size();
      o.request->add_more_values(std::move(value));
      o.values->fetch_add(1, std::memory_order_release);
      return;
    }
  }
  OpenSend open;
  open.handle = handle;
  open.sink = sink.get();
  open.values = std::make_shared<std::atomic<uint32_t>>(1);
  open.bytes = value.size();
  v1::ClientFrame f;
  v1::SendRequest* req = f.mutable_send();
  req->set_handle(handle);
  req->set_value(std::move(value));
  auto call = std::make_shared<Call>();
  // The count is read once the answer arrives: after the frame was written,
  // so after its last value was appended (under write_mu_).
  call->on_answer = [sink, values = open.values](const absl::Status& lost,
                                                 v1::ServerFrame& answer) {
    sink->answered(lost, answer, values->load(std::memory_order_acquire));
  };
  start(call, f, /*hand_off=*/true, &open);
}

uint64_t Connection::start(const std::shared_ptr<Call>& call,
                           v1::ClientFrame& frame, bool hand_off,
                           OpenSend* open, bool* write_later) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) throw_status(broken_);
    id = next_id_++;
    frame.set_id(id);
    call->id = id;
    calls_.emplace(id, call);
    if (!call->self_reading) ++background_needed_;
  }
  enqueue(std::move(frame), hand_off, open, call.get(), write_later);
  return id;
}

void Connection::enqueue(v1::ClientFrame frame, bool hand_off, OpenSend* open,
                         Call* call, bool* write_later) {
  {
    absl::MutexLock lock(&write_mu_);
    if (call != nullptr) call->queued.store(++queued_);
    write_queue_.push_back(std::move(frame));
    // Only the last frame queued may take more values.
    if (open != nullptr && !writes_failed_) {
      open_send_ = std::move(*open);
      open_send_.request = write_queue_.back().mutable_send();
    } else {
      open_send_ = OpenSend();
    }
    if (writing_) return;  // the writer in progress takes it along
    writing_ = true;
    if (hand_off && !writer_stop_) {
      if (!writer_started_) {
        writer_started_ = true;
        writer_ = std::thread([this] { writer_loop(); });
      }
      write_handed_ = true;
      return;
    }
    if (write_later != nullptr) {
      *write_later = true;  // the caller calls write_deferred()
      return;
    }
  }
  // A synchronous caller's frame may wait for woken callers' frames.
  if (call != nullptr && call->in_call) linger_for_woken();
  write_queued();
}

void Connection::linger_for_woken() const {
  if (woken_.load(std::memory_order_relaxed) <= 0) return;
  const Clock::time_point until = Clock::now() + kLinger;
  do {
    std::this_thread::yield();
  } while (woken_.load(std::memory_order_relaxed) > 0 && Clock::now() < until);
}

void Connection::writer_loop() {
  for (;;) {
    {
      absl::MutexLock lock(&write_mu_);
      write_mu_.Await(absl::Condition(
          +[](Connection* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->write_mu_) {
            return c->write_handed_ || c->writer_stop_;
          },
          this));
      if (!write_handed_) return;  // stopping, nothing handed over
      write_handed_ = false;
    }
    write_queued();
  }
}

void Connection::write_queued() {
  v1::ClientBatch batch;
  for (;;) {
    {
      absl::MutexLock lock(&write_mu_);
      open_send_ = OpenSend();  // what the writer takes is sealed
      if (write_queue_.empty() || writes_failed_) {
        write_queue_.clear();
        writing_ = false;
        return;
      }
      // Up to kMaxBatchBytes per message (a larger frame goes alone), so
      // that a batch never exceeds the broker's --max_message_bytes.
      batch.Clear();
      std::size_t bytes = 0, taken = 0;
      while (taken < write_queue_.size()) {
        const std::size_t size = write_queue_[taken].ByteSizeLong();
        if (taken > 0 && bytes + size > kMaxBatchBytes) break;
        bytes += size;
        batch.add_frames()->Swap(&write_queue_[taken]);
        ++taken;
      }
      write_queue_.erase(write_queue_.begin(), write_queue_.begin() + taken);
      ++written_.writes;
      written_.frames += taken;
    }
    if (!stream_->Write(batch)) {
      // The stream is broken; the reader sees it end and fails every call.
      absl::MutexLock lock(&write_mu_);
      writes_failed_ = true;
    }
  }
}

Connection::WriteCounts Connection::write_counts() {
  absl::MutexLock lock(&write_mu_);
  return written_;
}

std::size_t Connection::pending_calls() {
  absl::MutexLock lock(&mu_);
  return calls_.size();
}

v1::ServerFrame Connection::call(v1::ClientFrame& frame, Deadline deadline) {
  auto call = std::make_shared<Call>();
  call->in_call = true;
  // A thread blocked in Read cannot honour a deadline: only untimed (and
  // non-blocking, answered at once) calls read for themselves.
  call->self_reading =
      deadline == Deadline::max() || deadline == Deadline::min();
  const uint64_t id = start(call, frame);
  if (call->self_reading) {
    wait_reading(call);
  } else if (!wait_answered(*call, deadline)) {
    // Withdraw it; the broker then answers CANCELLED, or the result if the
    // operation completed first.
    cancel(id);
    wait_answered(*call, Deadline::max());
  }
  return take_answer(*call);
}

v1::ServerFrame Connection::take_answer(Call& call) {
  if (call.counted_woken) woken_.fetch_sub(1, std::memory_order_relaxed);
  if (!call.error.ok()) throw_status(call.error);
  if (call.answer.code() != 0) {
    throw Error(static_cast<absl::StatusCode>(call.answer.code()),
                call.answer.message());
  }
  return std::move(call.answer);
}

std::shared_ptr<Connection::Call> Connection::call_later(v1::ClientFrame& frame,
                                                         bool* write_later) {
  *write_later = false;
  auto call = std::make_shared<Call>();
  // Not in_call: nobody is about to return from call() with its answer,
  // so writers do not linger for it.
  call->self_reading = true;
  start(call, frame, /*hand_off=*/false, /*open=*/nullptr, write_later);
  return call;
}

void Connection::write_deferred() { write_queued(); }

v1::ServerFrame Connection::answer_of(const std::shared_ptr<Call>& call) {
  wait_reading(call);
  return take_answer(*call);
}

void Connection::detach(const std::shared_ptr<Call>& call, Callback on_answer) {
  {
    absl::MutexLock lock(&mu_);
    if (!call->settled) {
      // The reader settles it under mu_, then finds on_answer set.
      call->on_answer = std::move(on_answer);
      call->self_reading = false;
      ++background_needed_;
      return;
    }
  }
  while (call->state.load(std::memory_order_acquire) != kAnswered) {
    futex_wait(call->state, call->state.load(std::memory_order_relaxed));
  }
  std::move(on_answer)(call->error, call->answer);
}

bool Connection::wait_answered(Call& call, Deadline deadline) {
  for (;;) {
    if (call.state.load(std::memory_order_acquire) == kAnswered) return true;
    if (deadline == Deadline::max()) {
      futex_wait(call.state, kWaiting);
    } else if (!futex_wait_until(call.state, kWaiting, deadline)) {
      return call.state.load(std::memory_order_acquire) == kAnswered;
    }
  }
}

void Connection::wait_reading(const std::shared_ptr<Call>& call) {
  v1::ServerBatch batch;
  for (;;) {
    bool take = false;
    {
      absl::MutexLock lock(&mu_);
      if (call->settled) break;
      if (!reading_ && !stream_over_) {
        reading_ = true;
        take = true;
      } else if (!stream_over_) {
        idle_readers_.push_back(call);
      }
      // stream_over_: fail_all settles this call; wait for it below.
    }
    if (!take) {
      uint32_t s;
      while ((s = call->state.load(std::memory_order_acquire)) == kWaiting) {
        futex_wait(call->state, kWaiting);
      }
      if (s == kAnswered) break;
      // Handed the read role (kReader): reading_ stays true for us.
      call->state.store(kWaiting, std::memory_order_relaxed);
    }
    read_once(batch, call.get());
    release_read_role();
  }
  // The answer is published before `settled` is read under mu_, or by the
  // kAnswered store; either way wait for the store.
  while (call->state.load(std::memory_order_acquire) != kAnswered) {
    futex_wait(call->state, call->state.load(std::memory_order_relaxed));
  }
}

void Connection::read_once(v1::ServerBatch& batch, const Call* own) {
  batch.Clear();
  if (!stream_->Read(&batch)) {
    end_stream();
    return;
  }
  for (v1::ServerFrame& f : *batch.mutable_frames()) {
    std::shared_ptr<Call> call;
    if (f.has_offer_claim()) {
      // A question about a pending offer, not its answer: the call stays.
      // Only the reader (this thread) runs a call's callbacks, so on_claim
      // cannot race with on_answer.
      {
        absl::MutexLock lock(&mu_);
        auto it = calls_.find(f.id());
        if (it == calls_.end() || !it->second->on_claim) continue;
        call = it->second;
      }
      v1::ClientFrame answer;
      v1::ClaimAnswer* a = answer.mutable_claim_answer();
      a->set_target(f.id());
      a->set_claim(f.offer_claim().claim());
      a->set_accept(call->on_claim());
      enqueue(std::move(answer));
      continue;
    }
    std::vector<std::shared_ptr<Call>> confirmed;  // quiet calls before it
    {
      absl::MutexLock lock(&mu_);
      auto it = calls_.find(f.id());
      if (it == calls_.end()) continue;
      call = std::move(it->second);
      calls_.erase(it);
      call->settled = true;
      if (!call->self_reading) --background_needed_;
      const uint64_t queued = call->queued.load();
      if (call->quiet) quiet_.erase(queued);
      while (!quiet_.empty() && quiet_.begin()->first < queued) {
        std::shared_ptr<Call> q = std::move(quiet_.begin()->second);
        quiet_.erase(quiet_.begin());
        calls_.erase(q->id);
        q->settled = true;
        confirmed.push_back(std::move(q));
      }
    }
    for (const std::shared_ptr<Call>& q : confirmed) {
      finish(*q, absl::OkStatus());  // q->answer: empty, code 0
    }
    note_heard(call->sent);
    if (call->in_call && call.get() != own) {
      call->counted_woken = true;
      woken_.fetch_add(1, std::memory_order_relaxed);
    }
    call->answer.Swap(&f);
    // This thread's own call: it is reading, not parked on the state, and
    // finds the answer when read_once returns.
    finish(*call, absl::OkStatus(), /*by_its_reader=*/call.get() == own);
  }
}

void Connection::release_read_role() {
  std::shared_ptr<Call> next;
  {
    absl::MutexLock lock(&mu_);
    if (stream_over_) {
      reading_ = false;
      return;
    }
    while (!idle_readers_.empty()) {
      std::shared_ptr<Call> c = std::move(idle_readers_.front());
      idle_readers_.pop_front();
      if (!c->settled) {
        next = std::move(c);
        break;
      }
    }
    // Handing over keeps reading_ set: nobody else may take the role in
    // between. Otherwise the background reader sees reading_ clear (its
    // condition is re-evaluated as mu_ is released).
    if (next == nullptr) reading_ = false;
  }
  if (next != nullptr) {
    next->state.store(kReader, std::memory_order_release);
    futex_wake_all(next->state);
  }
}

void Connection::background_read_loop() {
  v1::ServerBatch batch;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Connection* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
            return c->stream_over_ || c->stopping_ ||
                   (!c->reading_ && c->background_needed_ > 0);
          },
          this));
      if (stream_over_ || stopping_) return;
      reading_ = true;
    }
    read_once(batch);
    release_read_role();
  }
}

void Connection::end_stream() {
  // Stop writers, and wait for a Write in progress (it fails now) before
  // Finish: the sync API allows no Write during Finish.
  {
    absl::MutexLock lock(&write_mu_);
    writes_failed_ = true;
    write_mu_.Await(absl::Condition(
        +[](bool* writing) { return !*writing; }, &writing_));
  }
  const grpc::Status st = stream_->Finish();
  absl::Status lost = absl::UnavailableError(
      absl::StrCat("dchan: lost the broker at ", target_, ": ",
                   st.ok() ? "stream ended" : st.error_message()));
  {
    absl::MutexLock lock(&mu_);
    if (broken_.ok()) broken_ = lost;  // else: lose_session's reason
    lost = broken_;
  }
  notify_lost(lost);  // no-op when the session was declared lost already
  {
    absl::MutexLock lock(&ping_mu_);
    ping_stop_ = true;
  }
  fail_all(lost);
}

void Connection::fail_all(const absl::Status& status) {
  absl::flat_hash_map<uint64_t, std::shared_ptr<Call>> calls;
  std::deque<std::shared_ptr<Call>> idle;
  absl::Status why;
  {
    absl::MutexLock lock(&mu_);
    if (broken_.ok()) broken_ = status;  // else: lose_session's reason
    why = broken_;
    stream_over_ = true;
    calls.swap(calls_);
    quiet_.clear();  // each is in `calls` too
    idle.swap(idle_readers_);
    for (auto& [id, call] : calls) call->settled = true;
    background_needed_ = 0;
  }
  for (auto& [id, call] : calls) finish(*call, why);
}

}  // namespace dchan::detail
