#include "offer_book.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "dchan/select.h"
#include "object.h"

namespace dchan::server {

uint64_t OfferBook::add(Spec spec) {
  Actions out;
  uint64_t key;
  {
    absl::MutexLock lock(&mu_);
    key = next_key_++;
    Offer& o = offers_[key];
    o.spec = std::move(spec);
    match_locked(out);
  }
  run(out);
  return key;
}

bool OfferBook::withdraw(uint64_t key) {
  Actions out;
  {
    absl::MutexLock lock(&mu_);
    auto it = offers_.find(key);
    if (it == offers_.end()) return false;  // answered already
    forget_claim_locked(it->second);
    release_partner_locked(it->second, out);
    offers_.erase(it);
    match_locked(out);
  }
  run(out);
  return true;
}

absl::Status OfferBook::answer(uint64_t key, uint64_t claim, bool accept) {
  Actions out;
  {
    absl::MutexLock lock(&mu_);
    auto it = offers_.find(key);
    if (it == offers_.end() || it->second.state != State::kAsked ||
        it->second.claim != claim) {
      return absl::FailedPreconditionError(absl::StrCat(
          "claim ", claim,
          " is not outstanding (never asked, answered already, timed out, "
          "or its offer is gone)"));
    }
    Offer& o = it->second;
    forget_claim_locked(o);
    if (!accept) {
      refused_locked(key, /*abort_it=*/false, out);
    } else {
      o.state = State::kAccepted;
      auto p = o.partner == 0 ? offers_.end() : offers_.find(o.partner);
      if (p == offers_.end()) {
        // The partner was withdrawn while this one was asked.
        finish_locked(key, v1::OUTCOME_ABORTED, std::nullopt, out);
      } else if (p->second.state == State::kReserved) {
        ask_locked(p->first, p->second, out);  // this one was first
      } else if (p->second.state == State::kAccepted) {
        // Both accepted: commit, unless the channel was closed meanwhile
        // (then a send must not deliver; both polls see the close).
        const uint64_t send_key = o.spec.send ? key : p->first;
        const uint64_t recv_key = o.spec.send ? p->first : key;
        if (detail::stats_of(chan_).closed) {
          finish_locked(send_key, v1::OUTCOME_ABORTED, std::nullopt, out);
          finish_locked(recv_key, v1::OUTCOME_ABORTED, std::nullopt, out);
        } else {
          std::string value = std::move(offers_[send_key].spec.value);
          finish_locked(send_key, v1::OUTCOME_OK, std::nullopt, out);
          finish_locked(recv_key, v1::OUTCOME_OK, std::move(value), out);
        }
      }
    }
    match_locked(out);
  }
  run(out);
  return absl::OkStatus();
}

void OfferBook::expire(uint64_t key, uint64_t claim) {
  Actions out;
  {
    absl::MutexLock lock(&mu_);
    auto it = offers_.find(key);
    if (it == offers_.end() || it->second.state != State::kAsked ||
        it->second.claim != claim) {
      return;  // answered in time
    }
    forget_claim_locked(it->second);
    refused_locked(key, /*abort_it=*/true, out);
    match_locked(out);
  }
  run(out);
}

std::size_t OfferBook::size() const {
  absl::MutexLock lock(&mu_);
  return offers_.size();
}

std::size_t OfferBook::timed_claims() const {
  absl::MutexLock lock(&mu_);
  return claim_deadlines_.size();
}

std::size_t OfferBook::open_count() const {
  absl::MutexLock lock(&mu_);
  std::size_t n = 0;
  for (const auto& [key, o] : offers_) n += o.state == State::kOpen;
  return n;
}

void OfferBook::match_locked(Actions& out) {
  for (auto& [sk, s] : offers_) {
    if (s.state != State::kOpen || !s.spec.send) continue;
    for (auto& [rk, r] : offers_) {
      if (r.state != State::kOpen || r.spec.send) continue;
      if (r.spec.session_id == s.spec.session_id &&
          r.spec.select_id == s.spec.select_id) {
        continue;  // one select's own cases never meet
      }
      // Ask in the global (session id, select id) order.
      const bool send_first =
          std::make_pair(s.spec.session_id, s.spec.select_id) <
          std::make_pair(r.spec.session_id, r.spec.select_id);
      s.partner = rk;
      r.partner = sk;
      if (send_first) {
        r.state = State::kReserved;
        ask_locked(sk, s, out);
      } else {
        s.state = State::kReserved;
        ask_locked(rk, r, out);
      }
      break;
    }
  }
}

void OfferBook::ask_locked(uint64_t key, Offer& o, Actions& out) {
  o.state = State::kAsked;
  o.claim = next_claim_++;
  out.asks.push_back({o.spec.owner, key, o.spec.request_id, o.claim});
  const auto when = std::chrono::steady_clock::now() + claim_timeout_;
  claim_deadlines_.emplace(o.claim, ClaimDeadline{when, key});
  if (!timer_armed_) {
    timer_armed_ = true;
    out.arm_timer_at = when;
  }
}

void OfferBook::forget_claim_locked(Offer& o) {
  if (o.claim == 0) return;
  claim_deadlines_.erase(o.claim);
  o.claim = 0;
}

void OfferBook::on_claim_timer() {
  std::vector<std::pair<uint64_t, uint64_t>> due;  // (key, claim)
  Actions out;
  {
    absl::MutexLock lock(&mu_);
    const auto now = std::chrono::steady_clock::now();
    auto it = claim_deadlines_.begin();
    while (it != claim_deadlines_.end() && it->second.when <= now) {
      due.emplace_back(it->second.key, it->first);
      it = claim_deadlines_.erase(it);
    }
    timer_armed_ = it != claim_deadlines_.end();
    if (timer_armed_) out.arm_timer_at = it->second.when;
  }
  for (const auto& [key, claim] : due) expire(key, claim);
  run(out);
}

void OfferBook::finish_locked(uint64_t key, v1::Outcome outcome,
                              std::optional<std::string> value, Actions& out) {
  auto it = offers_.find(key);
  if (it == offers_.end()) return;
  forget_claim_locked(it->second);
  const Spec& spec = it->second.spec;
  out.finishes.push_back({spec.owner, spec.request_id, spec.seq, outcome,
                          std::move(value), spec.returned_to});
  offers_.erase(it);
}

void OfferBook::refused_locked(uint64_t key, bool abort_it, Actions& out) {
  Offer& o = offers_.at(key);
  release_partner_locked(o, out);
  if (abort_it) {
    finish_locked(key, v1::OUTCOME_ABORTED, std::nullopt, out);
  } else {
    o.state = State::kRefused;  // until its client withdraws it
  }
}

void OfferBook::release_partner_locked(Offer& o, Actions& out) {
  const uint64_t pk = o.partner;
  o.partner = 0;
  if (pk == 0) return;
  auto it = offers_.find(pk);
  if (it == offers_.end()) return;
  Offer& p = it->second;
  p.partner = 0;
  switch (p.state) {
    case State::kAccepted:
      finish_locked(pk, v1::OUTCOME_ABORTED, std::nullopt, out);
      break;
    case State::kReserved:
      p.state = State::kOpen;
      break;
    case State::kAsked:  // its answer finds the partner gone
    case State::kOpen:
    case State::kRefused:
      break;
  }
}

void OfferBook::run(Actions& actions) {
  for (Actions::Ask& a : actions.asks) {
    if (std::shared_ptr<OfferOwner> owner = a.owner.lock()) {
      owner->ask_claim(a.request_id, a.claim);
    }
  }
  if (actions.arm_timer_at.has_value()) {
    // An unanswered claim (also one whose owner is gone) expires.
    after(*actions.arm_timer_at - std::chrono::steady_clock::now())
        .recv_async([book = weak_from_this()](
                        std::optional<std::chrono::steady_clock::time_point>) {
          if (std::shared_ptr<OfferBook> b = book.lock()) b->on_claim_timer();
        });
  }
  for (Actions::Finish& f : actions.finishes) {
    if (std::shared_ptr<OfferOwner> owner = f.owner.lock()) {
      owner->finish_offer(f.request_id, f.seq, f.outcome, std::move(f.value),
                          f.returned_to);
    } else if (f.value.has_value()) {
      // Nobody to take it: back into the channel, as for a session that
      // ended holding a value. Through the channel's object, which the
      // broker's receive offers name: a send parked on chan_ itself could
      // never be withdrawn, and one still parked when the broker exits
      // would keep the channel alive for good (see give_back). A book
      // without an object (its own tests) parks it directly.
      if (f.returned_to != nullptr) {
        ChannelObject::give_back(f.returned_to, *std::move(f.value));
      } else {
        Chan<std::string> c = chan_;
        c.send_async(*std::move(f.value), [](bool) {});
      }
    }
  }
}

}  // namespace dchan::server
