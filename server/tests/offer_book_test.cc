// The offer book without sessions or gRPC: matching, the two-phase claim,
// refusals, timeouts, withdrawals and bad answers.
#include "offer_book.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace dchan::server {
namespace {

using namespace std::chrono_literals;

// Records what the book tells a session.
class FakeOwner final : public OfferOwner {
 public:
  struct Ask {
    uint64_t request_id, claim;
  };
  struct Finish {
    uint64_t request_id, seq;
    v1::Outcome outcome;
    std::optional<std::string> value;
  };

  void ask_claim(uint64_t request_id, uint64_t claim) override {
    absl::MutexLock lock(&mu_);
    asks_.push_back({request_id, claim});
  }
  void finish_offer(uint64_t request_id, uint64_t seq, v1::Outcome outcome,
                    std::optional<std::string> value,
                    const std::shared_ptr<ChannelObject>&) override {
    absl::MutexLock lock(&mu_);
    finishes_.push_back({request_id, seq, outcome, std::move(value)});
  }

  std::vector<Ask> asks() {
    absl::MutexLock lock(&mu_);
    return asks_;
  }
  std::vector<Finish> finishes() {
    absl::MutexLock lock(&mu_);
    return finishes_;
  }
  // Waits up to `bound` for `n` finishes.
  bool await_finishes(std::size_t n, std::chrono::milliseconds bound) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while (finishes().size() < n) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }

 private:
  absl::Mutex mu_;
  std::vector<Ask> asks_ ABSL_GUARDED_BY(mu_);
  std::vector<Finish> finishes_ ABSL_GUARDED_BY(mu_);
};

class OfferBookTest : public ::testing::Test {
 protected:
  std::shared_ptr<OfferBook> make_book(
      std::chrono::milliseconds timeout = 10s) {
    chan_ = make_chan<std::string>(0);
    return std::make_shared<OfferBook>(chan_, timeout);
  }

  // An offer of select (session, select) by `owner`, request id `req`.
  static OfferBook::Spec spec(const std::shared_ptr<FakeOwner>& owner,
                              uint64_t session, uint64_t select, uint64_t req,
                              bool send, std::string value = "") {
    OfferBook::Spec s;
    s.owner = owner;
    s.session_id = session;
    s.select_id = select;
    s.request_id = req;
    s.seq = req * 10;
    s.send = send;
    s.value = std::move(value);
    return s;
  }

  Chan<std::string> chan_;
  std::shared_ptr<FakeOwner> a_ = std::make_shared<FakeOwner>();
  std::shared_ptr<FakeOwner> b_ = std::make_shared<FakeOwner>();
};

TEST_F(OfferBookTest, ASendAndAReceiveOfferCommitAfterBothAccept) {
  auto book = make_book();
  // b (session 2) sends, a (session 1) receives: a orders first.
  const uint64_t s = book->add(spec(b_, 2, 1, 7, true, "v"));
  EXPECT_TRUE(b_->asks().empty());
  const uint64_t r = book->add(spec(a_, 1, 1, 9, false));
  ASSERT_EQ(a_->asks().size(), 1u);
  EXPECT_EQ(a_->asks()[0].request_id, 9u);
  EXPECT_TRUE(b_->asks().empty()) << "the second is asked only after the first";
  ASSERT_TRUE(book->answer(r, a_->asks()[0].claim, true).ok());
  EXPECT_TRUE(a_->finishes().empty());
  ASSERT_EQ(b_->asks().size(), 1u);
  EXPECT_EQ(b_->asks()[0].request_id, 7u);
  ASSERT_TRUE(book->answer(s, b_->asks()[0].claim, true).ok());
  ASSERT_EQ(a_->finishes().size(), 1u);
  ASSERT_EQ(b_->finishes().size(), 1u);
  EXPECT_EQ(a_->finishes()[0].outcome, v1::OUTCOME_OK);
  EXPECT_EQ(a_->finishes()[0].value, "v");
  EXPECT_EQ(a_->finishes()[0].seq, 90u);
  EXPECT_EQ(b_->finishes()[0].outcome, v1::OUTCOME_OK);
  EXPECT_FALSE(b_->finishes()[0].value.has_value());
  EXPECT_EQ(book->size(), 0u);
  // Answered: a withdrawal comes too late.
  EXPECT_FALSE(book->withdraw(s));
  EXPECT_FALSE(book->withdraw(r));
}

TEST_F(OfferBookTest, OffersOfOneSelectNeverMeet) {
  auto book = make_book();
  book->add(spec(a_, 1, 5, 1, true, "v"));
  book->add(spec(a_, 1, 5, 2, false));
  EXPECT_TRUE(a_->asks().empty());
  EXPECT_EQ(book->open_count(), 2u);
  // Another select of the same session does meet them.
  book->add(spec(a_, 1, 6, 3, false));
  EXPECT_EQ(a_->asks().size(), 1u);
}

TEST_F(OfferBookTest, AFirstRefusalReopensThePartnerForTheNextMatch) {
  auto book = make_book();
  const uint64_t r1 = book->add(spec(a_, 1, 1, 1, false));
  book->add(spec(b_, 3, 1, 2, true, "v"));
  ASSERT_EQ(a_->asks().size(), 1u);
  ASSERT_TRUE(book->answer(r1, a_->asks()[0].claim, false).ok());
  EXPECT_TRUE(a_->finishes().empty()) << "a refused offer waits for its "
                                         "withdrawal, unanswered";
  EXPECT_EQ(book->open_count(), 1u);  // the send offer
  // The refused offer is never asked again; a new receive offer matches.
  const uint64_t r2 = book->add(spec(a_, 2, 1, 3, false));
  ASSERT_EQ(a_->asks().size(), 2u);
  EXPECT_EQ(a_->asks()[1].request_id, 3u);
  EXPECT_TRUE(book->withdraw(r1));
  ASSERT_TRUE(book->answer(r2, a_->asks()[1].claim, true).ok());
  ASSERT_EQ(b_->asks().size(), 1u);
}

TEST_F(OfferBookTest, ASecondRefusalAbortsTheFirst) {
  auto book = make_book();
  const uint64_t r = book->add(spec(a_, 1, 1, 1, false));
  const uint64_t s = book->add(spec(b_, 2, 1, 2, true, "v"));
  ASSERT_TRUE(book->answer(r, a_->asks()[0].claim, true).ok());
  ASSERT_TRUE(book->answer(s, b_->asks()[0].claim, false).ok());
  ASSERT_EQ(a_->finishes().size(), 1u);
  EXPECT_EQ(a_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  EXPECT_TRUE(b_->finishes().empty());
  EXPECT_EQ(book->size(), 1u);  // the refused send offer, until withdrawn
  EXPECT_TRUE(book->withdraw(s));
  EXPECT_EQ(book->size(), 0u);
}

TEST_F(OfferBookTest, AnUnansweredClaimTimesOutAsARefusalAndIsAborted) {
  auto book = make_book(50ms);
  book->add(spec(a_, 1, 1, 1, false));
  const uint64_t s = book->add(spec(b_, 2, 1, 2, true, "v"));
  ASSERT_EQ(a_->asks().size(), 1u);
  ASSERT_TRUE(a_->await_finishes(1, 5s));
  EXPECT_EQ(a_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  EXPECT_EQ(book->open_count(), 1u);  // the send offer is open again
  // A late answer changes nothing.
  EXPECT_EQ(book->answer(1, a_->asks()[0].claim, true).code(),
            absl::StatusCode::kFailedPrecondition);
  // The second asked offer times out too: both are aborted.
  const uint64_t r2 = book->add(spec(a_, 1, 2, 3, false));
  ASSERT_EQ(a_->asks().size(), 2u);
  ASSERT_TRUE(book->answer(r2, a_->asks()[1].claim, true).ok());
  ASSERT_EQ(b_->asks().size(), 1u);
  ASSERT_TRUE(b_->await_finishes(1, 5s));
  EXPECT_EQ(b_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  ASSERT_TRUE(a_->await_finishes(2, 5s));
  EXPECT_EQ(a_->finishes()[1].outcome, v1::OUTCOME_ABORTED);
  EXPECT_EQ(book->size(), 0u);
  EXPECT_FALSE(book->withdraw(s));
}

TEST_F(OfferBookTest, AnsweredClaimsAreNoLongerTimed) {
  auto book = make_book();  // 10 s: nothing expires during the test
  for (uint64_t i = 1; i <= 1000; ++i) {
    const uint64_t r = book->add(spec(a_, 1, i, 2 * i, false));
    const uint64_t s = book->add(spec(b_, 2, i, 2 * i + 1, true, "v"));
    ASSERT_EQ(a_->asks().size(), i);
    ASSERT_TRUE(book->answer(r, a_->asks().back().claim, true).ok());
    ASSERT_EQ(b_->asks().size(), i);
    EXPECT_EQ(book->timed_claims(), 1u);  // only b's, outstanding
    ASSERT_TRUE(book->answer(s, b_->asks().back().claim, true).ok());
    EXPECT_EQ(book->timed_claims(), 0u);
  }
  EXPECT_EQ(book->size(), 0u);
  // A withdrawn offer's claim is forgotten too.
  const uint64_t r = book->add(spec(a_, 1, 9999, 1, false));
  book->add(spec(b_, 2, 9999, 2, true, "v"));
  EXPECT_EQ(book->timed_claims(), 1u);
  EXPECT_TRUE(book->withdraw(r));
  EXPECT_EQ(book->timed_claims(), 0u);
}

TEST_F(OfferBookTest, AClaimAskedAfterAnAnsweredOneStillTimesOut) {
  auto book = make_book(50ms);
  // The first claim arms the timer and is answered at once (refused).
  const uint64_t r1 = book->add(spec(a_, 1, 1, 1, false));
  book->add(spec(b_, 2, 1, 2, true, "v"));
  ASSERT_EQ(a_->asks().size(), 1u);
  ASSERT_TRUE(book->answer(r1, a_->asks()[0].claim, false).ok());
  // The next one, never answered, expires all the same.
  book->add(spec(a_, 1, 2, 3, false));
  ASSERT_EQ(a_->asks().size(), 2u);
  ASSERT_TRUE(a_->await_finishes(1, 5s));
  EXPECT_EQ(a_->finishes()[0].request_id, 3u);
  EXPECT_EQ(a_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  EXPECT_EQ(book->timed_claims(), 0u);
}

TEST_F(OfferBookTest, AnswersNeverAskedRepeatedOrForGoneOffersAreRefused) {
  auto book = make_book();
  const uint64_t r = book->add(spec(a_, 1, 1, 1, false));
  EXPECT_EQ(book->answer(r, 1, true).code(),
            absl::StatusCode::kFailedPrecondition);  // never asked
  EXPECT_EQ(book->answer(12345, 1, true).code(),
            absl::StatusCode::kFailedPrecondition);  // no such offer
  book->add(spec(b_, 2, 1, 2, true, "v"));
  const uint64_t claim = a_->asks().at(0).claim;
  EXPECT_EQ(book->answer(r, claim + 100, true).code(),
            absl::StatusCode::kFailedPrecondition);  // another claim
  ASSERT_TRUE(book->answer(r, claim, true).ok());
  EXPECT_EQ(book->answer(r, claim, true).code(),
            absl::StatusCode::kFailedPrecondition);  // twice
  EXPECT_EQ(book->answer(r, claim, false).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(a_->finishes().empty());
  EXPECT_EQ(b_->asks().size(), 1u);
}

TEST_F(OfferBookTest, AWithdrawalInAMatchAbortsOrReopensThePartner) {
  auto book = make_book();
  // The second (asked) offer is withdrawn after the first accepted: the
  // first is aborted.
  const uint64_t r = book->add(spec(a_, 1, 1, 1, false));
  const uint64_t s = book->add(spec(b_, 2, 1, 2, true, "v"));
  ASSERT_TRUE(book->answer(r, a_->asks()[0].claim, true).ok());
  EXPECT_TRUE(book->withdraw(s));
  ASSERT_EQ(a_->finishes().size(), 1u);
  EXPECT_EQ(a_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  // Its late answer is refused.
  EXPECT_FALSE(book->answer(s, b_->asks()[0].claim, true).ok());

  // The first (asked) offer is withdrawn: the reserved partner is open
  // again and meets the next offer.
  const uint64_t r2 = book->add(spec(a_, 1, 2, 3, false));
  const uint64_t s2 = book->add(spec(b_, 2, 2, 4, true, "w"));
  ASSERT_EQ(a_->asks().size(), 2u);
  EXPECT_TRUE(book->withdraw(r2));
  EXPECT_EQ(book->open_count(), 1u);
  const uint64_t r3 = book->add(spec(a_, 1, 3, 5, false));
  ASSERT_EQ(a_->asks().size(), 3u);
  EXPECT_EQ(a_->asks()[2].request_id, 5u);
  ASSERT_TRUE(book->answer(r3, a_->asks()[2].claim, true).ok());
  ASSERT_EQ(b_->asks().size(), 2u);
  ASSERT_TRUE(book->answer(s2, b_->asks()[1].claim, true).ok());
  ASSERT_EQ(a_->finishes().size(), 2u);
  EXPECT_EQ(a_->finishes()[1].value, "w");
}

TEST_F(OfferBookTest, AnAcceptWhosePartnerWasWithdrawnIsAborted) {
  auto book = make_book();
  const uint64_t r = book->add(spec(a_, 1, 1, 1, false));
  const uint64_t s = book->add(spec(b_, 2, 1, 2, true, "v"));
  ASSERT_EQ(a_->asks().size(), 1u);
  EXPECT_TRUE(book->withdraw(s));  // reserved, not asked yet
  ASSERT_TRUE(book->answer(r, a_->asks()[0].claim, true).ok());
  ASSERT_EQ(a_->finishes().size(), 1u);
  EXPECT_EQ(a_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  EXPECT_EQ(book->size(), 0u);
}

// The first offer accepted, then its session ended (withdrawn) while the
// second is asked: the second's accept is answered ABORTED, its refusal
// leaves it refused; nothing is delivered.
TEST_F(OfferBookTest, AnAcceptedOfferWithdrawnWhileItsPartnerIsAsked) {
  auto book = make_book();
  const uint64_t r = book->add(spec(a_, 1, 1, 1, false));
  const uint64_t s = book->add(spec(b_, 2, 1, 2, true, "v"));
  ASSERT_TRUE(book->answer(r, a_->asks()[0].claim, true).ok());
  ASSERT_EQ(b_->asks().size(), 1u);
  EXPECT_TRUE(book->withdraw(r));
  EXPECT_TRUE(a_->finishes().empty()) << "withdrawn, not answered";
  ASSERT_TRUE(book->answer(s, b_->asks()[0].claim, true).ok());
  ASSERT_EQ(b_->finishes().size(), 1u);
  EXPECT_EQ(b_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  EXPECT_EQ(book->size(), 0u);
}

TEST_F(OfferBookTest, ACommitOnAClosedChannelAbortsBoth) {
  auto book = make_book();
  const uint64_t r = book->add(spec(a_, 1, 1, 1, false));
  const uint64_t s = book->add(spec(b_, 2, 1, 2, true, "v"));
  ASSERT_TRUE(book->answer(r, a_->asks()[0].claim, true).ok());
  chan_.close();
  ASSERT_TRUE(book->answer(s, b_->asks()[0].claim, true).ok());
  ASSERT_EQ(a_->finishes().size(), 1u);
  ASSERT_EQ(b_->finishes().size(), 1u);
  EXPECT_EQ(a_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
  EXPECT_FALSE(a_->finishes()[0].value.has_value());
  EXPECT_EQ(b_->finishes()[0].outcome, v1::OUTCOME_ABORTED);
}

TEST_F(OfferBookTest, AValueWhoseReceiverIsGoneGoesBackIntoTheChannel) {
  auto book = make_book();
  auto gone = std::make_shared<FakeOwner>();
  const uint64_t r = book->add(spec(gone, 1, 1, 1, false));
  const uint64_t s = book->add(spec(b_, 2, 1, 2, true, "kept"));
  ASSERT_TRUE(book->answer(r, gone->asks()[0].claim, true).ok());
  gone.reset();
  ASSERT_TRUE(book->answer(s, b_->asks()[0].claim, true).ok());
  ASSERT_EQ(b_->finishes().size(), 1u);
  EXPECT_EQ(b_->finishes()[0].outcome, v1::OUTCOME_OK);
  const RecvResult<std::string> back = chan_.recv_for(5s);
  ASSERT_EQ(back.status, ChanStatus::kOk);
  EXPECT_EQ(*back.value, "kept");
}

// Two selects offering each other on two channels at once (a sends on x and
// receives on y, b the reverse), every claim answered as a client would:
// each select accepts at most one claim. Exactly one of the two matches
// commits (both selects fire, on the same channel); the other is refused,
// whichever channel's match asked first.
TEST_F(OfferBookTest, CrossingOffersOnTwoChannelsCommitExactlyOne) {
  for (int round = 0; round < 200; ++round) {
    auto x = make_book();
    auto y = std::make_shared<OfferBook>(make_chan<std::string>(0), 10s);
    struct Select {
      std::shared_ptr<FakeOwner> owner = std::make_shared<FakeOwner>();
      std::atomic<bool> claimed{false};
    };
    Select a, b;
    // Request ids: 1 = on x, 2 = on y.
    const uint64_t ax = x->add(spec(a.owner, 1, 1, 1, true, "ax"));
    const uint64_t ay = y->add(spec(a.owner, 1, 1, 2, false));
    const uint64_t bx = x->add(spec(b.owner, 2, 1, 1, false));
    const uint64_t by = y->add(spec(b.owner, 2, 1, 2, true, "by"));
    // Answer every ask as a client would: accept if the select is free.
    std::size_t a_seen = 0, b_seen = 0;
    for (int step = 0; step < 10; ++step) {
      for (auto [sel, seen, kx, ky] :
           {std::tuple<Select*, std::size_t*, uint64_t, uint64_t>{&a, &a_seen,
                                                                  ax, ay},
            {&b, &b_seen, bx, by}}) {
        const auto asks = sel->owner->asks();
        for (; *seen < asks.size(); ++*seen) {
          const auto& q = asks[*seen];
          const bool accept = !sel->claimed.exchange(true);
          OfferBook& book = q.request_id == 1 ? *x : *y;
          const uint64_t key = q.request_id == 1 ? kx : ky;
          ASSERT_TRUE(book.answer(key, q.claim, accept).ok());
        }
      }
    }
    const auto fa = a.owner->finishes();
    const auto fb = b.owner->finishes();
    ASSERT_EQ(fa.size(), 1u) << round;
    ASSERT_EQ(fb.size(), 1u) << round;
    EXPECT_EQ(fa[0].outcome, v1::OUTCOME_OK);
    EXPECT_EQ(fb[0].outcome, v1::OUTCOME_OK);
    EXPECT_EQ(fa[0].request_id, fb[0].request_id) << "one channel";
    x->withdraw(ax);
    x->withdraw(bx);
    y->withdraw(ay);
    y->withdraw(by);
  }
}

}  // namespace
}  // namespace dchan::server
