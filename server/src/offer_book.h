// server/src/offer_book.h — offers on one unbuffered broker channel: how two
// spanning selects (client selects that also wait on local channels or on
// other brokers) meet each other.
//
// An offer is a tentative send (with its value) or receive by one attempt of
// one client select, identified by (session id, select id). Offers meet only
// offers: when an open send offer and an open receive offer of two different
// selects are in the book, the book matches them and runs a two-phase
// commit through their owners (the sessions), never blocking:
//
//   open ──match──> asked ──accept──> accepted ──partner accepts──> committed
//     ^               │                   │
//     │             refuse / timeout    partner refuses / times out /
//     │               v                   is withdrawn
//     │            refused (waits for    v
//     │            its withdrawal)      aborted (answered ABORTED)
//     └── partner refused / withdrawn before this one was asked
//
// Of a matched pair, the offer whose select orders first by (session id,
// select id) is asked first (it is "reserved" meanwhile), the other once the
// first accepted. Every match asks in that one global order, so no two
// matches can wait on each other in a cycle; a refusal ends a match at once
// (the refused offer is never asked again: its client withdraws it), and an
// asked claim that gets no answer within the claim timeout counts as a
// refusal — and the asked offer is answered ABORTED, in case its client
// accepted late. A committed match transfers the send offer's value to the
// receive offer — unless the channel was closed meanwhile: then both are
// ABORTED and their selects, polling again, see the close.
//
// Owners are told through OfferOwner, always after the book's lock is
// released. A committed receive whose owner is gone sends its value back
// into the channel, so that nothing is lost.
//
// Thread safety: every member may be called concurrently.
#ifndef DCHAN_SERVER_OFFER_BOOK_H_
#define DCHAN_SERVER_OFFER_BOOK_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "dchan/chan.h"
#include "dchan/v1/broker.pb.h"

namespace dchan::server {

class ChannelObject;

// The session an offer belongs to, as the book sees it.
class OfferOwner {
 public:
  virtual ~OfferOwner() = default;
  // Asks the client whether its select may fire offer `request_id`
  // (an OfferClaim frame). Any thread; never blocks.
  virtual void ask_claim(uint64_t request_id, uint64_t claim) = 0;
  // The offer's final answer: OK (with the received value for a receive
  // offer) or ABORTED. A received value that cannot be delivered must go
  // back into `returned_to` (the spec's). Any thread; never blocks.
  virtual void finish_offer(
      uint64_t request_id, uint64_t seq, v1::Outcome outcome,
      std::optional<std::string> value,
      const std::shared_ptr<ChannelObject>& returned_to) = 0;
};

class OfferBook : public std::enable_shared_from_this<OfferBook> {
 public:
  struct Spec {
    std::weak_ptr<OfferOwner> owner;
    uint64_t session_id = 0;
    uint64_t select_id = 0;
    uint64_t request_id = 0;
    uint64_t seq = 0;  // the owner's pending entry
    bool send = false;
    std::string value;  // send offers
    // Receive offers: the channel, for a value the owner cannot deliver.
    std::shared_ptr<ChannelObject> returned_to;
  };

  // `chan`: the channel (its closed state is checked at commit; a value
  // whose owner is gone goes back into it).
  OfferBook(Chan<std::string> chan, std::chrono::milliseconds claim_timeout)
      : chan_(std::move(chan)), claim_timeout_(claim_timeout) {}

  // Adds an offer and matches it if it can; returns its key (non-zero). The
  // owner may be asked (or even answered) before this returns.
  uint64_t add(Spec spec);

  // Withdraws an offer: true when it was still pending (it will never be
  // answered; a send offer's value is dropped unsent), false when it was
  // answered already (committed or aborted). A match it was part of ends;
  // see the file comment.
  bool withdraw(uint64_t key);

  // The client's answer to claim `claim` of offer `key`. FAILED_PRECONDITION
  // (and nothing changes) when that claim is not outstanding: never asked,
  // answered already, timed out, or the offer is gone.
  absl::Status answer(uint64_t key, uint64_t claim, bool accept);

  // Claim `claim` of offer `key` got no answer in time (the claim timer).
  // Ignored when it was answered meanwhile.
  void expire(uint64_t key, uint64_t claim);

  // Offers in the book (any state), and open ones, for tests and
  // inspection.
  std::size_t size() const;
  std::size_t open_count() const;
  // Claims whose timeout the book tracks: the outstanding ones (an answered
  // claim is forgotten at once), for tests.
  std::size_t timed_claims() const;

 private:
  enum class State { kOpen, kReserved, kAsked, kAccepted, kRefused };
  struct Offer {
    Spec spec;
    State state = State::kOpen;
    uint64_t partner = 0;  // the other offer of its match; 0 when none/gone
    uint64_t claim = 0;    // kAsked: the outstanding claim
  };
  // Work for after the lock is released.
  struct Actions {
    struct Ask {
      std::weak_ptr<OfferOwner> owner;
      uint64_t key, request_id, claim;
    };
    struct Finish {
      std::weak_ptr<OfferOwner> owner;
      uint64_t request_id, seq;
      v1::Outcome outcome;
      std::optional<std::string> value;
      std::shared_ptr<ChannelObject> returned_to;
    };
    std::vector<Ask> asks;
    std::vector<Finish> finishes;
    // Set: start the claim timer, to fire then.
    std::optional<std::chrono::steady_clock::time_point> arm_timer_at;
  };

  // Pairs open send and receive offers of different selects and asks the
  // first of each pair.
  void match_locked(Actions& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ask_locked(uint64_t key, Offer& o, Actions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Answers offer `key` with `outcome` and removes it.
  void finish_locked(uint64_t key, v1::Outcome outcome,
                     std::optional<std::string> value, Actions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The asked offer `key` refused (or timed out: `abort_it`).
  void refused_locked(uint64_t key, bool abort_it, Actions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Offer `key` leaves its match (refused, aborted or withdrawn): its
  // partner is aborted if it had accepted, else open again.
  void release_partner_locked(Offer& o, Actions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Offer `o`'s claim, if one is outstanding, is over (answered, or the
  // offer leaves the book): its timeout is no longer tracked.
  void forget_claim_locked(Offer& o) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The claim timer fired: expires the claims due, re-arms for the next.
  void on_claim_timer();
  void run(Actions& actions);

  const Chan<std::string> chan_;
  const std::chrono::milliseconds claim_timeout_;
  mutable absl::Mutex mu_;
  // By key: arrival order, so that matching is FIFO. A std::map: an
  // Offer& stays valid while other offers are erased.
  std::map<uint64_t, Offer> offers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_key_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_claim_ ABSL_GUARDED_BY(mu_) = 1;
  // Claim timeouts: one after() timer at a time for the earliest
  // outstanding claim, not one per claim (each would live for the whole
  // claim_timeout_ however soon the claim was answered). By claim id, which
  // is also deadline order (one timeout for all).
  struct ClaimDeadline {
    std::chrono::steady_clock::time_point when;
    uint64_t key;
  };
  std::map<uint64_t, ClaimDeadline> claim_deadlines_ ABSL_GUARDED_BY(mu_);
  bool timer_armed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_OFFER_BOOK_H_
