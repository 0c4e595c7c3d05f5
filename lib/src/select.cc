#include "dchan/select.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"

namespace dchan {
namespace detail {
namespace {

// A per-thread xorshift generator for the poll order: cheap, and good enough
// to make the choice among ready cases uniform.
uint64_t next_random() noexcept {
  thread_local uint64_t x =
      0x9E3779B97F4A7C15ull ^
      reinterpret_cast<uintptr_t>(&x) * 0xBF58476D1CE4E5B9ull;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

// Fills `order` with a uniformly random permutation of 0..size-1
// (Fisher-Yates, "inside-out"). The draws share one 64-bit random number
// while the product of their bounds stays below 2^16 (all of a select of up
// to 8 cases): each draw takes the high bits of r * bound and keeps the low
// bits for the next one (Lemire's reduction, chained), so each draw's bias
// stays below 2^-48 (bound / 2^64 scaled by the bounds before it).
void random_order(absl::InlinedVector<uint32_t, 8>& order) noexcept {
  if (order.size() < 2) {  // no choice to make: no random number either
    if (!order.empty()) order[0] = 0;
    return;
  }
  uint64_t r = next_random();
  uint64_t bounds = 1;  // product of the bounds drawn from r so far
  for (uint32_t i = 0; i < order.size(); ++i) {
    const uint64_t bound = i + 1;
    bounds *= bound;
    if (bounds >= (uint64_t{1} << 16)) {
      r = next_random();
      bounds = bound;
    }
    const unsigned __int128 m = static_cast<unsigned __int128>(r) * bound;
    const uint32_t j = static_cast<uint32_t>(m >> 64);
    r = static_cast<uint64_t>(m);
    order[i] = order[j];
    order[j] = i;
  }
}

// The distinct channels of a select, locked in address order (so that two
// selects over the same channels cannot deadlock).
class LockSet {
 public:
  LockSet() = default;
  LockSet(SelectCase* const* cases, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      if (ChanCore* c = cases[i]->core()) cores_.push_back(c);
    }
    seal();
  }
  // Building one channel at a time: add() them, then seal().
  void add(ChanCore* c) { cores_.push_back(c); }
  void seal() {
    std::sort(cores_.begin(), cores_.end());
    cores_.erase(std::unique(cores_.begin(), cores_.end()), cores_.end());
  }
  bool empty() const noexcept { return cores_.empty(); }
  void lock_all() noexcept {
    for (ChanCore* c : cores_) c->lock();
  }
  // Releases every lock, then fires the readiness watchers they woke:
  // watcher callbacks never run while any channel is locked.
  void unlock_all() noexcept {
    WaitNode* fired = nullptr;
    for (auto it = cores_.rbegin(); it != cores_.rend(); ++it) {
      WaitNode* f = (*it)->release();
      while (f != nullptr) {
        WaitNode* next = f->next;
        f->next = fired;
        fired = f;
        f = next;
      }
    }
    if (fired != nullptr) ChanCore::fire_all(fired, true);
  }

 private:
  absl::InlinedVector<ChanCore*, 8> cores_;
};

// Lock-free: false if case `c`, whose local channel is `core` (c->core(),
// asked once by the caller), has none or was seen unable to proceed on it
// (see ChanCore::may_be_ready).
bool may_be_ready(const SelectCase* c, const ChanCore* core) noexcept {
  return core != nullptr &&
         core->may_be_ready(c->kind() == SelectCase::Kind::kSend);
}

// Tries local case `c` (on `core`) under its own channel's lock alone. Unless
// the result is kWouldBlock, the case's channel side is done (its counterpart,
// if any, completed); the caller runs finish().
ChanStatus try_alone(SelectCase* c, ChanCore* core) {
  if (core->cap_ != 0 && c->try_fast()) return ChanStatus::kOk;
  Fired to_fire;
  core->lock();
  const ChanStatus st = c->try_locked(&to_fire);
  core->unlock();
  if (st != ChanStatus::kWouldBlock) fire(to_fire);
  return st;
}

// Pass 1 of a select: tries each case that may be ready (a lock-free look)
// under its own channel's lock, in `order`. The usual select finds a ready
// case here without locking every channel, nor one that is never ready (a
// quit channel that every worker selects on). kFired or kWouldBlock.
PollOutcome poll_each_alone(SelectCase* const* cases,
                            const absl::InlinedVector<uint32_t, 8>& order) {
  for (uint32_t i : order) {
    ChanCore* core = cases[i]->core();
    if (!may_be_ready(cases[i], core)) continue;
    const ChanStatus st = try_alone(cases[i], core);
    if (st != ChanStatus::kWouldBlock) {
      return {PollOutcome::kFired, i, st == ChanStatus::kOk};
    }
  }
  return {PollOutcome::kWouldBlock};
}

// Set when the calling thread's KeptNodes are destroyed (thread exit): a
// select run by a later destructor of the thread takes the eager path.
thread_local bool t_kept_gone = false;

// A thread's select waiter and nodes, kept from one select to the next
// (lazy withdrawal). Go's select, once woken through one channel, locks
// every other channel again to dequeue from it; the next select locks them
// once more to enqueue. On a channel that every worker selects on and that
// never fires (a quit channel), those locks move the channel's cache line
// between the workers' CPUs four times per select pair. Here a select
// leaves the nodes of its other cases queued, stale (their waiter's
// generation is over), and the thread's next select on the same channel
// re-registers such a node with one compare-and-swap on the node itself
// (WaitNode::arm) instead of taking the channel's lock: the quit channel's
// line stays shared in every worker's cache. Whoever meets a stale node
// takes it out (ChanCore::claim_or_drop); then the re-registration fails,
// and the select queues the node under the lock as usual. A re-registration
// that succeeds needs no new look at the channel: every change that could
// have made the case ready since the node was queued (a sender or receiver
// arriving, a value buffered or room made, a close) meets the node and so
// takes it out.
class KeptNodes {
 public:
  static constexpr std::size_t kNodes = 8;

  KeptNodes() noexcept {
    for (WaitNode& n : nodes_) n.waiter = &lw.w;
  }
  KeptNodes(const KeptNodes&) = delete;
  KeptNodes& operator=(const KeptNodes&) = delete;
  ~KeptNodes() {
    t_kept_gone = true;  // also for a watcher's callback run by an unlink
    detach_all();
  }

  // Assigns a node to every case with a channel (node_of[i]; nullptr for
  // the others): the one already used with that channel and direction, or
  // the least recently used other one, withdrawn first if still queued.
  // False when two cases share a channel and direction, or there are more
  // than kNodes: then this select cannot keep its nodes.
  bool assign(SelectCase* const* cases, std::size_t n, WaitNode** node_of) {
    uint32_t taken = 0;  // bit k: nodes_[k] belongs to this select
    std::size_t unassigned = 0;
    for (std::size_t i = 0; i < n; ++i) {
      node_of[i] = nullptr;
      ChanCore* core = cases[i]->core();
      if (core == nullptr) continue;
      const bool send = cases[i]->kind() == SelectCase::Kind::kSend;
      for (std::size_t k = 0; k < kNodes; ++k) {
        if (nodes_[k].chan != core || nodes_[k].is_send != send) continue;
        if ((taken & (1u << k)) != 0) return false;
        taken |= 1u << k;
        node_of[i] = &nodes_[k];
        break;
      }
      if (node_of[i] == nullptr) ++unassigned;
    }
    assigned_ = taken;
    if (unassigned == 0) return true;
    if (unassigned >
        kNodes - static_cast<std::size_t>(__builtin_popcount(taken)))
      return false;
    for (std::size_t i = 0; i < n; ++i) {
      ChanCore* core = cases[i]->core();
      if (core == nullptr || node_of[i] != nullptr) continue;
      const SelectCase::Kind kind = cases[i]->kind();
      for (std::size_t j = 0; j < i; ++j) {
        if (cases[j]->core() == core && cases[j]->kind() == kind) return false;
      }
      std::size_t victim = kNodes;
      for (std::size_t k = 0; k < kNodes; ++k) {
        if ((taken & (1u << k)) != 0) continue;
        if (settled_arm(nodes_[k]) == 0) {
          victim = k;  // not queued anywhere: free to take
          break;
        }
        if (victim == kNodes || used_at_[k] < used_at_[victim]) victim = k;
      }
      detach(nodes_[victim]);
      fired_last_ &= ~(1u << victim);
      taken |= 1u << victim;
      nodes_[victim].chan = core;
      nodes_[victim].is_send = cases[i]->kind() == SelectCase::Kind::kSend;
      node_of[i] = &nodes_[victim];
    }
    assigned_ = taken;
    return true;
  }

  // The waiter's next generation, re-armed (see Waiter::rearm).
  uint32_t rearm() noexcept {
    if (gen_ == Waiter::kMaxGen) {
      // No queued node may carry a generation of the next round.
      detach_all();
      gen_ = 0;
    }
    lw.w.rearm(++gen_);
    return gen_;
  }
  void mark_used(WaitNode* n) noexcept {
    used_at_[static_cast<std::size_t>(n - nodes_)] = gen_;
  }

  // Whether the last select that used `n` fired through it. Such a case
  // may park in its channel's lone slot (see select_kept); the others keep
  // their nodes queued between selects (a quit channel's).
  bool fired_last(const WaitNode* n) const noexcept {
    return (fired_last_ >> (n - nodes_) & 1) != 0;
  }
  // Records that the select whose nodes the last assign() gave out fired
  // through `fired` (nullptr: a case without a node).
  void note_fired(const WaitNode* fired) noexcept {
    fired_last_ &= ~assigned_;
    if (fired != nullptr) fired_last_ |= 1u << (fired - nodes_);
  }

  // The node's arm once nobody else is taking it out of a queue (see
  // WaitNode::kRemoving: the remover holds the channel's lock for a few
  // instructions). 0 then means the node is the owner's to reuse. Not a
  // bare spin: a preempted remover may share this CPU (review: a bare spin
  // burnt the owner's whole time slice).
  static uint32_t settled_arm(const WaitNode& n) noexcept {
    for (int i = 0;; ++i) {
      const uint32_t a = n.arm.load(std::memory_order_acquire);
      if (a != WaitNode::kRemoving) return a;
      wait_a_few_instructions(i);
    }
  }

  // Takes a kept node out of its channel's queue if it is still there.
  static void detach(WaitNode& n) noexcept {
    uint32_t a = settled_arm(n);
    while (WaitNode::is_kept(a)) {
      // kDetaching: a counterparty that meets the node now leaves its pin
      // to this unlink(), so the channel stays until then.
      if (n.arm.compare_exchange_weak(a, WaitNode::kDetaching,
                                      std::memory_order_acquire,
                                      std::memory_order_acquire)) {
        n.chan->unlink(&n);  // may free the channel (an orphaned one)
        n.arm.store(0, std::memory_order_relaxed);
        return;
      }
      if (a == WaitNode::kRemoving) a = settled_arm(n);
    }
  }

  LandingWaiter lw;   // a receive case's value may land on its line
  bool busy = false;  // a select uses these (one that a callback it runs
                      // starts meanwhile cannot)

 private:
  void detach_all() noexcept {
    for (WaitNode& n : nodes_) detach(n);
  }

  WaitNode nodes_[kNodes];
  uint32_t used_at_[kNodes] = {};  // the generation of each node's last use
  uint32_t fired_last_ = 0;        // bit k: see fired_last(nodes_ + k)
  uint32_t assigned_ = 0;          // bit k: the last assign() gave out k
  uint32_t gen_ = 0;
};

// A select that may wait, with the calling thread's kept nodes (see
// KeptNodes; `node_of` from assign()). Returns the fired case and whether it
// succeeded, its value (a receive) moved into the case; finish() is left to
// the caller.
//
// The nodes are looked up (assign()) before pass 1 although a select that
// finds a case ready in pass 1 does not need them: in a select ping-pong
// (bench/chan_bench.cc), a pass 1 that comes sooner reads the channel line
// that the partner is about to lock to register, more often finds nothing
// and fires its case under the lock in pass 2 instead: 460-480 ns per round
// trip against 417-428 with the lookup first; a fan-in select over four
// buffered channels, which mostly fires in pass 1, pays the lookup (66-69 ns
// per item against 76-78).
PollOutcome select_kept(SelectCase* const* cases, std::size_t n,
                        KeptNodes& kept, WaitNode* const* node_of) {
  absl::InlinedVector<uint32_t, 8> order(n);
  Waiter& w = kept.lw.w;
  for (;;) {
    random_order(order);
    if (const PollOutcome r = poll_each_alone(cases, order);
        r.kind == PollOutcome::kFired) {
      return r;
    }

    // Pass 2. The waiter's new generation is invisible until a node
    // carries it: the cases whose nodes must be queued (not still queued
    // from an earlier select, or taken out since) are polled again under
    // their channels' locks, as in select_poll, and consume directly.
    const uint32_t gen = kept.rearm();
    absl::InlinedVector<bool, 8> queue(n, false);
    // A stale receive node on a buffered channel would send its senders
    // through the lock (kWaiting) until one of them takes it out, as would
    // a stale send node its receivers: the select withdraws those itself
    // once it fired, and keeps only its nodes on unbuffered channels.
    absl::InlinedVector<bool, 8> withdraw(n, false);
    LockSet locks;
    for (std::size_t i = 0; i < n; ++i) {
      WaitNode* node = node_of[i];
      if (node == nullptr) continue;
      kept.mark_used(node);
      withdraw[i] = cases[i]->core()->cap_ != 0;
      // Read by a counterparty only once it claimed the node for `gen`.
      node->slot = cases[i]->park_slot(kept.lw.landing);
      node->case_index = static_cast<uint32_t>(i);
      if (!WaitNode::is_kept(node->arm.load(std::memory_order_relaxed))) {
        queue[i] = true;
        locks.add(node->chan);
      }
    }
    locks.seal();
    locks.lock_all();
    for (uint32_t i : order) {
      if (!queue[i]) continue;
      Fired to_fire;
      const ChanStatus st = cases[i]->try_locked(&to_fire);
      if (st == ChanStatus::kWouldBlock) continue;
      locks.unlock_all();
      fire(to_fire);
      return {PollOutcome::kFired, i, st == ChanStatus::kOk};
    }
    // One case that fired the last time its node was used (a ping-pong's
    // channel, not a quit channel's) may park in its channel's lone slot
    // instead of queueing its node (see ChanCore::lone_): the channel's
    // line and the waiter's are then all a counterparty reads. The select
    // withdraws it itself unless it fires through it, so no lone slot ever
    // refers to a select that is over, nor to a thread that is gone.
    ChanCore* lone = nullptr;
    std::size_t lone_index = n;
    for (std::size_t i = 0; i < n; ++i) {
      if (!queue[i]) continue;
      WaitNode* node = node_of[i];
      const bool send = cases[i]->kind() == SelectCase::Kind::kSend;
      if (lone == nullptr && kept.fired_last(node) &&
          node->chan->lone_free_locked(send) && cases[i]->put_lone(kept.lw)) {
        lone = node->chan;
        lone_index = i;
        lone->set_lone_locked(&kept.lw, send, static_cast<uint32_t>(i), gen);
        continue;
      }
      node->arm.store(WaitNode::kept(gen), std::memory_order_relaxed);
      node->chan->enqueue_locked(node);
      node->chan->pin_locked(node);
    }
    // Re-register the nodes still queued from earlier selects (their
    // channels unlocked: see KeptNodes). A node taken out meanwhile means a
    // change on its channel this select has not looked at: unless a
    // counterparty fired the select already, withdraw and start over.
    bool lost = false;
    for (std::size_t i = 0; i < n && !lost; ++i) {
      WaitNode* node = node_of[i];
      if (node == nullptr || queue[i]) continue;
      uint32_t a = node->arm.load(std::memory_order_relaxed);
      lost = !WaitNode::is_kept(a) ||
             !node->arm.compare_exchange_strong(a, WaitNode::kept(gen),
                                                std::memory_order_seq_cst,
                                                std::memory_order_relaxed);
    }
    if (lost && w.try_claim(gen)) {
      for (std::size_t i = 0; i < n; ++i) {
        if (i == lone_index) {
          lone->withdraw_lone_locked(&kept.lw, /*is_select=*/true);
        } else if (queue[i]) {
          node_of[i]->chan->withdraw_locked(node_of[i]);
        }
      }
      locks.unlock_all();
      w.mark_done_by_owner();
      continue;
    }
    locks.unlock_all();
    w.wait();
    const uint32_t fired = w.fired_case();
    // May free `lone` (its last handle dropped by whoever fired the select,
    // see ChanCore::release_last_handle).
    if (lone != nullptr && fired != lone_index) {
      lone->withdraw_lone(&kept.lw, /*is_select=*/true);
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (withdraw[i] && i != fired) KeptNodes::detach(*node_of[i]);
    }
    if (w.ok()) cases[fired]->take_landed(node_of[fired]->slot);
    return {PollOutcome::kFired, fired, w.ok()};
  }
}

}  // namespace

PollOutcome select_poll(SelectCase* const* cases, std::size_t n, Waiter* w,
                        WaitNode* nodes, void* landing) {
  // A select that may not wait (it has a default) usually polls channels
  // that are not ready: it draws no random order unless one may be.
  if (w == nullptr) {
    std::size_t i = 0;
    while (i < n && !may_be_ready(cases[i], cases[i]->core())) ++i;
    if (i == n) return {PollOutcome::kWouldBlock};
  }
  absl::InlinedVector<uint32_t, 8> order(n);
  random_order(order);

  if (const PollOutcome r = poll_each_alone(cases, order);
      r.kind == PollOutcome::kFired || w == nullptr) {
    return r;
  }

  // Pass 2: with every channel locked, poll again (a case may have become
  // ready meanwhile) and otherwise enqueue on all of them atomically.
  LockSet locks(cases, n);
  if (locks.empty()) return {PollOutcome::kNeverReady};
  locks.lock_all();
  for (uint32_t i : order) {
    SelectCase* c = cases[i];
    if (c->core() == nullptr) continue;
    Fired to_fire;
    const ChanStatus st = c->try_locked(&to_fire);
    if (st == ChanStatus::kWouldBlock) continue;
    locks.unlock_all();
    fire(to_fire);
    return {PollOutcome::kFired, i, st == ChanStatus::kOk};
  }
  for (std::size_t i = 0; i < n; ++i) {
    SelectCase* c = cases[i];
    ChanCore* core = c->core();
    if (core == nullptr) continue;
    WaitNode& node = nodes[i];
    node.waiter = w;
    node.slot = c->park_slot(landing);
    node.case_index = static_cast<uint32_t>(i);
    node.is_send = c->kind() == SelectCase::Kind::kSend;
    core->enqueue_locked(&node);
    core->pin_locked(&node);  // keeps the channel alive: see pin_locked()
  }
  locks.unlock_all();
  return {PollOutcome::kRegistered};
}

void select_withdraw(WaitNode* nodes, std::size_t n,
                     std::size_t except) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    if (i != except && nodes[i].chan != nullptr)
      nodes[i].chan->unlink(&nodes[i]);
  }
}

namespace {

// A receive case whose handle holds a value already (a batch receive's
// extras: RemoteChanOptions::recv_batch) is ready, though the broker cannot
// see it: fires one such case among the broker cases `index_of` (chosen at
// random among them) and returns its index, or n if there is none.
std::size_t fire_held(SelectCase* const* cases, std::size_t n,
                      const absl::InlinedVector<uint32_t, 8>& index_of) {
  absl::InlinedVector<uint32_t, 8> order(index_of.size());
  random_order(order);
  std::string bytes;
  for (uint32_t k : order) {
    SelectCase* c = cases[index_of[k]];
    if (c->kind() != SelectCase::Kind::kRecv ||
        !c->remote()->take_held(bytes)) {
      continue;
    }
    const absl::Status decoded = c->decode_recv(bytes);
    if (!decoded.ok()) {
      throw Error(decoded.code(), std::string(decoded.message()));
    }
    c->finish(true);
    return index_of[k];
  }
  return n;
}

// A select with broker cases, all of one session, plus optional default and
// after() timer cases: one select on the broker, whose deadline is the
// earliest timer. `timers` are the timer cases' indices. Values held by a
// receive case's handle fire before the broker is asked.
std::size_t select_on_broker(SelectCase* const* cases, std::size_t n,
                             std::size_t default_index,
                             absl::InlinedVector<uint32_t, 4> timers) {
  std::vector<RemoteSelectCase> remote;
  absl::InlinedVector<uint32_t, 8> index_of;  // remote case -> case index
  RemoteChan* via = nullptr;
  for (std::size_t i = 0; i < n; ++i) {
    RemoteChan* r = cases[i]->remote();
    if (r == nullptr) continue;
    via = r;
    RemoteSelectCase rc;
    rc.chan = r;
    rc.send = cases[i]->kind() == SelectCase::Kind::kSend;
    if (rc.send) cases[i]->encode_send(rc.value);
    remote.push_back(std::move(rc));
    index_of.push_back(static_cast<uint32_t>(i));
  }
  for (;;) {
    // A timer that has fired already is a ready case: poll the timers. One
    // that fired and was drained by someone else will never be ready again:
    // drop it (like a nil case).
    if (!timers.empty()) {
      absl::InlinedVector<SelectCase*, 4> timer_cases;
      for (uint32_t i : timers) timer_cases.push_back(cases[i]);
      absl::InlinedVector<WaitNode, 4> unused(timer_cases.size());
      const PollOutcome r = select_poll(timer_cases.data(), timer_cases.size(),
                                        nullptr, unused.data());
      if (r.kind == PollOutcome::kFired) {
        timer_cases[r.index]->finish(r.ok);
        return timers[r.index];
      }
      timers.erase(std::remove_if(timers.begin(), timers.end(),
                                  [&](uint32_t i) {
                                    ChanCore* core = cases[i]->core();
                                    core->lock();
                                    const bool spent = core->timer_fired_ &&
                                                       core->owned_len() == 0;
                                    core->unlock();
                                    return spent;
                                  }),
                   timers.end());
    }
    auto deadline = RemoteChan::kNoDeadline;
    for (uint32_t i : timers) {
      deadline = std::min(deadline, cases[i]->core()->timer_deadline_);
    }
    if (default_index != n) deadline = RemoteChan::kNonBlocking;

    if (const std::size_t held = fire_held(cases, n, index_of); held != n) {
      return held;
    }
    RemoteSelectResult r = via->select(remote, deadline);
    switch (r.status) {
      case ChanStatus::kWouldBlock:
        cases[default_index]->finish(true);
        return default_index;
      case ChanStatus::kTimeout:
        // Withdrawn at the earliest timer's deadline: poll the timers again
        // (the timer thread may be a moment late; then this goes round
        // once more).
        continue;
      case ChanStatus::kOk:
      case ChanStatus::kClosed:
        break;
    }
    const uint32_t fired = index_of[r.index];
    SelectCase* c = cases[fired];
    if (r.status == ChanStatus::kOk && c->kind() == SelectCase::Kind::kRecv) {
      const absl::Status decoded = c->decode_recv(r.value);
      if (!decoded.ok()) {
        throw Error(decoded.code(), std::string(decoded.message()));
      }
    }
    c->finish(r.status == ChanStatus::kOk);
    return fired;
  }
}

// Finishes broker case `i` with the outcome of a non-blocking attempt.
// Returns false when the attempt found the case not ready.
bool try_broker_case(SelectCase* c) {
  RemoteChan* r = c->remote();
  if (c->kind() == SelectCase::Kind::kSend) {
    std::string bytes;
    c->encode_send(bytes);
    const ChanStatus st = r->send(bytes, RemoteChan::kNonBlocking);
    if (st == ChanStatus::kWouldBlock) return false;
    c->finish(st == ChanStatus::kOk);  // kClosed: Go's panic
    return true;
  }
  std::string bytes;
  const ChanStatus st = r->recv(bytes, RemoteChan::kNonBlocking);
  if (st == ChanStatus::kWouldBlock) return false;
  if (st == ChanStatus::kOk) {
    const absl::Status decoded = c->decode_recv(bytes);
    if (!decoded.ok())
      throw Error(decoded.code(), std::string(decoded.message()));
  }
  c->finish(st == ChanStatus::kOk);
  return true;
}

// The waiter of a select that spans local channels and broker channels (or
// several brokers), on the heap: broker watch and offer callbacks may run
// after the select has returned, and must find it alive (and claimed).
struct SpanningWait {
  explicit SpanningWait(std::size_t n) : nodes(n), offers(n) {}
  Waiter w;
  absl::InlinedVector<WaitNode, 8> nodes;
  // The final answers of the broker cases' offers, by case index; filled on
  // the clients' reader threads.
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::optional<RemoteOfferResult>> offers;  // guarded by mu
};
// fired_case() of a SpanningWait: a broker case's watch fired (it looked
// ready), or the broker asked to commit a case's offer and this select
// accepted.
constexpr uint32_t kBrokerCaseFlag = 0x80000000u;
constexpr uint32_t kOfferFlag = 0x40000000u;

// A process-wide id per spanning select attempt, for its offers.
uint64_t next_select_id() noexcept {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

// A select that spans local channels and broker channels, or several
// brokers. Local cases are registered as usual. For each broker case the
// broker is asked to watch for readiness (consuming nothing) and, on an
// unbuffered channel, the case is also offered to other spanning selects
// (see "Offers" in proto/dchan/v1/broker.proto). Whatever fires first claims
// the one waiter:
//  - a local case simply runs;
//  - a broker case's watch: the case is tried without blocking — with the
//    waiter claimed, no other case can fire meanwhile — and if another party
//    took the readiness first, the select starts over;
//  - the broker's claim for an offer: the select accepts (the claim is the
//    waiter's), withdraws everything else and waits for the broker's
//    verdict: committed (the case fires) or aborted (start over).
// So exactly one case fires and no case that did not fire consumes or
// delivers anything. While the waiter is claimed for an offer the select is
// "busy": local counterparties skip its stale nodes, and it polls again
// after an abort.
std::size_t select_spanning(SelectCase* const* cases, std::size_t n,
                            std::size_t default_index) {
  absl::InlinedVector<uint32_t, 8> order(n);
  for (;;) {
    // 1. Poll every case once, in random order: local ones under their own
    // lock, broker ones without blocking.
    random_order(order);
    for (uint32_t i : order) {
      SelectCase* c = cases[i];
      if (c->remote() != nullptr) {
        if (try_broker_case(c)) return i;
        continue;
      }
      ChanCore* core = c->core();
      if (!may_be_ready(c, core)) continue;
      const ChanStatus st = try_alone(c, core);
      if (st == ChanStatus::kWouldBlock) continue;
      c->finish(st == ChanStatus::kOk);
      return i;
    }
    if (default_index != n) {
      cases[default_index]->finish(true);
      return default_index;
    }

    // 2. Register on the local channels (polling them once more).
    auto box = std::make_shared<SpanningWait>(n);
    const PollOutcome r = select_poll(cases, n, &box->w, box->nodes.data());
    if (r.kind == PollOutcome::kFired) {
      cases[r.index]->finish(r.ok);
      return r.index;
    }

    // 3. Watch the broker cases; offer those on unbuffered channels.
    const uint64_t select_id = next_select_id();
    absl::InlinedVector<std::pair<uint32_t, uint64_t>, 8> watches;
    absl::InlinedVector<std::pair<uint32_t, uint64_t>, 8> offers;
    auto withdraw_broker_cases = [&](uint32_t watch_kept,
                                     uint32_t offer_kept) noexcept {
      for (auto [i, token] : watches) {
        if (i != watch_kept) cases[i]->remote()->cancel_watch(token);
      }
      for (auto [i, token] : offers) {
        if (i != offer_kept) cases[i]->remote()->cancel_offer(token);
      }
    };
    try {
      for (uint32_t i = 0; i < n; ++i) {
        RemoteChan* rc = cases[i]->remote();
        if (rc == nullptr) continue;
        const bool for_send = cases[i]->kind() == SelectCase::Kind::kSend;
        const uint64_t token = rc->watch(for_send, [box, i](bool ok) {
          if (box->w.try_claim()) box->w.complete(kBrokerCaseFlag | i, ok);
        });
        watches.emplace_back(i, token);
        if (rc->cap() != 0) continue;
        std::string bytes;
        if (for_send) cases[i]->encode_send(bytes);
        const uint64_t offer = rc->offer(
            for_send, bytes, select_id,
            [box, i] {
              // Exactly as a local counterparty claims the select.
              if (!box->w.try_claim()) return false;
              box->w.complete(kOfferFlag | i, true);
              return true;
            },
            [box, i](RemoteOfferResult result) {
              std::lock_guard<std::mutex> lock(box->mu);
              box->offers[i] = std::move(result);
              box->cv.notify_all();
            });
        offers.emplace_back(i, offer);
      }
    } catch (...) {
      // A broker is lost. Unless a case fired meanwhile, give up.
      if (box->w.try_claim()) {
        box->w.mark_done_by_owner();
        select_withdraw(box->nodes.data(), n, n);
        withdraw_broker_cases(n, n);
        throw;
      }
    }

    // 4. Wait for the first to fire; withdraw the rest.
    box->w.wait();
    const uint32_t fired = box->w.fired_case();
    const bool broker_case = (fired & kBrokerCaseFlag) != 0;
    const bool offer_case = (fired & kOfferFlag) != 0;
    const uint32_t k = fired & ~(kBrokerCaseFlag | kOfferFlag);
    select_withdraw(box->nodes.data(), n, broker_case || offer_case ? n : k);
    withdraw_broker_cases(broker_case ? k : n, offer_case ? k : n);
    if (offer_case) {
      // Accepted a claim for offer k: the broker commits or aborts it once
      // the other select answered (or its claim timed out).
      RemoteOfferResult result;
      {
        std::unique_lock<std::mutex> lock(box->mu);
        box->cv.wait(lock, [&] { return box->offers[k].has_value(); });
        result = std::move(*box->offers[k]);
      }
      switch (result.kind) {
        case RemoteOfferResult::kCommitted:
          if (cases[k]->kind() == SelectCase::Kind::kRecv) {
            const absl::Status decoded = cases[k]->decode_recv(result.value);
            if (!decoded.ok()) {
              throw Error(decoded.code(), std::string(decoded.message()));
            }
          }
          cases[k]->finish(true);
          return k;
        case RemoteOfferResult::kAborted:
        case RemoteOfferResult::kCancelled:
          continue;  // nothing happened: poll again
        case RemoteOfferResult::kFailed:
          throw Error(absl::StatusCode::kUnavailable, result.error);
      }
    }
    if (!broker_case) {
      if (box->w.ok()) cases[k]->take_landed(box->nodes[k].slot);
      cases[k]->finish(box->w.ok());
      return k;
    }
    // A broker case looked ready (or its watch failed: then the attempt
    // throws kUnavailable if the broker is lost). Nothing else can fire
    // now: try it.
    if (try_broker_case(cases[k])) return k;
    if (!box->w.ok()) {
      throw Error(absl::StatusCode::kUnavailable,
                  "dchan: the broker refused a select's readiness watch");
    }
  }
}

}  // namespace

std::size_t select_cases(SelectCase* const* cases, std::size_t n) {
  std::size_t default_index = n;
  RemoteChan* remote = nullptr;
  bool other_local = false;
  bool several_sessions = false;
  absl::InlinedVector<uint32_t, 4> timers;
  for (std::size_t i = 0; i < n; ++i) {
    // A case has a local channel, a broker channel, or neither (nil,
    // default): asked in that order, a local case costs one call.
    if (ChanCore* core = cases[i]->core()) {
      if (core->timer_deadline_ !=
              std::chrono::steady_clock::time_point::max() &&
          cases[i]->kind() == SelectCase::Kind::kRecv) {
        timers.push_back(static_cast<uint32_t>(i));
      } else {
        other_local = true;
      }
    } else if (RemoteChan* r = cases[i]->remote()) {
      if (remote != nullptr && r->session() != remote->session()) {
        several_sessions = true;
      }
      remote = r;
    }
    if (cases[i]->kind() != SelectCase::Kind::kDefault) continue;
    if (default_index != n) {
      throw Error(absl::StatusCode::kInvalidArgument,
                  "select: more than one default case");
    }
    default_index = i;
  }
  if (remote != nullptr) {
    // Broker selects wait on I/O; they keep their channels alive throughout.
    for (std::size_t i = 0; i < n; ++i) cases[i]->hold_channel();
    if (other_local || several_sessions) {
      return select_spanning(cases, n, default_index);
    }
    return select_on_broker(cases, n, default_index, std::move(timers));
  }

  if (default_index == n && n <= KeptNodes::kNodes) {
    WaitNode* node_of[KeptNodes::kNodes];
    thread_local KeptNodes kept;
    if (!t_kept_gone && !kept.busy) {
      // Busy from before assign(), whose evictions unlock channels.
      kept.busy = true;
      std::optional<PollOutcome> r;
      try {
        if (kept.assign(cases, n, node_of)) {
          bool any = false;
          for (std::size_t i = 0; i < n; ++i) {
            any = any || node_of[i] != nullptr;
          }
          if (!any) block_forever();  // only nil cases: Go's `select {}`
          r = select_kept(cases, n, kept, node_of);
          kept.note_fired(node_of[r->index]);
        }
      } catch (...) {
        kept.busy = false;
        throw;
      }
      kept.busy = false;
      if (r.has_value()) {
        cases[r->index]->finish(r->ok);
        return r->index;
      }
    }
  }

  LandingWaiter lw;  // a receive case's value may land on its line
  // Nodes only for a select that may wait (one with a default never does).
  absl::InlinedVector<WaitNode, 8> nodes(default_index == n ? n : 0);
  const PollOutcome r = select_poll(
      cases, n, default_index == n ? &lw.w : nullptr, nodes.data(), lw.landing);
  switch (r.kind) {
    case PollOutcome::kFired:
      cases[r.index]->finish(r.ok);
      return r.index;
    case PollOutcome::kWouldBlock:
      cases[default_index]->finish(true);
      return default_index;
    case PollOutcome::kNeverReady:
      block_forever();  // only nil cases: Go's `select {}`
    case PollOutcome::kRegistered:
      break;
  }
  lw.w.wait();
  const uint32_t fired = lw.w.fired_case();
  select_withdraw(nodes.data(), n, fired);
  if (lw.w.ok()) cases[fired]->take_landed(nodes[fired].slot);
  cases[fired]->finish(lw.w.ok());
  return fired;
}

}  // namespace detail

std::size_t select(std::span<Case> cases) {
  absl::InlinedVector<detail::SelectCase*, 8> ptrs;
  ptrs.reserve(cases.size());
  for (Case& c : cases) ptrs.push_back(c.get());
  return detail::select_cases(ptrs.data(), ptrs.size());
}

}  // namespace dchan
