// Random, well-formed traffic against a real dchan-broker on 127.0.0.1: the
// broker must survive anything a client can send, answer every request
// exactly once, and never answer what nobody asked.
//
// Several raw Session streams run at once. Each sends batches of frames
// whose operation and fields are drawn at random through protobuf
// reflection — so an operation added to broker.proto is covered without
// touching this file — with the numbers biased towards what matters: the
// handles and lock tokens the broker handed out, the ids of earlier
// requests, a few shared object names opened with clashing kinds, types and
// capacities, values around --max_value_bytes, unknown enum numbers. A
// reader thread per stream answers the broker's offer claims (accept or
// refuse, at random) and checks every answer as it comes:
//   - its id is one this stream used (or 0, the id of errors about frames
//     with id 0 and of refused claim answers);
//   - no request is answered twice.
// At the end each stream cancels whatever is still pending, and then every
// request must have had exactly one answer (a quiet unlock: at most one),
// and the stream must end with OK when half-closed. One stream per seed is
// instead cut off abruptly (its context cancelled) in the middle. The broker
// must then still be running, serve a fresh dchan::Client, and hold no
// session.
//
// Bounded: fixed seeds (DCHAN_RANDOM_FRAMES_SEED=N runs seed N alone),
// a fixed number of frames, every wait under a deadline.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "raw_channel.h"

namespace dchan::testing {
namespace {

namespace v1 = ::dchan::v1;
namespace pb = ::google::protobuf;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kStreams = 4;
constexpr int kBatches = 60;
constexpr int kMaxFramesPerBatch = 24;
constexpr int kMaxValueBytes = 4096;  // the broker's --max_value_bytes
// Whatever a stream still waits for after its cancels comes within this.
constexpr milliseconds kSettleBound = seconds(30);
constexpr milliseconds kStreamBound = seconds(120);

// How many answers a request must get by the end.
enum class Expect { kOne, kAtMostOne };

// One raw Session stream and the record of what it asked and got.
class Stream {
 public:
  // The streams of one seed share the objects named `prefix` + c0, c1, m0,
  // w0, v0.
  Stream(const std::string& address, const std::string& prefix, uint64_t seed)
      : stub_(v1::Broker::NewStub(raw_channel(address))),
        prefix_(prefix),
        rng_(seed) {
    ctx_.set_deadline(std::chrono::system_clock::now() + kStreamBound);
    stream_ = stub_->Session(&ctx_);
    reader_ = std::thread([this] { read_loop(); });
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (reader_.joinable()) {
      ctx_.TryCancel();
      reader_.join();
    }
  }

  // Records `frames` as asked, then writes them as one batch.
  bool send(std::vector<v1::ClientFrame> frames) {
    v1::ClientBatch batch;
    {
      absl::MutexLock lock(&mu_);
      for (v1::ClientFrame& f : frames) {
        if (f.id() != 0 && !f.has_claim_answer()) {
          const bool quiet = f.has_unlock() && f.unlock().quiet();
          asked_[f.id()] = {
              quiet ? Expect::kAtMostOne : Expect::kOne, op_name(f),
              f.has_release() ? f.release().handle() : 0,
              f.has_open() ? f.open().kind() : v1::OBJECT_KIND_UNSPECIFIED};
        }
        *batch.add_frames() = std::move(f);
      }
    }
    absl::MutexLock lock(&write_mu_);
    return stream_->Write(batch);
  }

  // A batch of 1..kMaxFramesPerBatch random frames.
  std::vector<v1::ClientFrame> random_batch() {
    std::vector<v1::ClientFrame> frames(
        std::uniform_int_distribution<int>(1, kMaxFramesPerBatch)(rng_));
    for (v1::ClientFrame& f : frames) f = random_frame();
    return frames;
  }

  // Opens one of the shared objects properly: a channel (unbuffered "c0",
  // buffered "c1"), a mutex, a wait group, an atomic value.
  v1::ClientFrame open_frame(int which) {
    static const std::pair<const char*, v1::ObjectKind> kObjects[] = {
        {"c0", v1::OBJECT_KIND_CHANNEL},
        {"c1", v1::OBJECT_KIND_CHANNEL},
        {"m0", v1::OBJECT_KIND_MUTEX},
        {"w0", v1::OBJECT_KIND_WAIT_GROUP},
        {"v0", v1::OBJECT_KIND_ATOMIC_VALUE}};
    const auto& [name, kind] = kObjects[which % std::size(kObjects)];
    v1::ClientFrame f;
    f.set_id(next_id_++);
    f.mutable_open()->set_name(prefix_ + name);
    f.mutable_open()->set_kind(kind);
    f.mutable_open()->set_type_name("bytes");
    f.mutable_open()->set_capacity(name[1] == '1' ? 4 : 0);
    return f;
  }
  static constexpr int kObjectCount = 5;

  // Waits until the broker has given this stream `n` handles.
  bool await_handles(std::size_t n) {
    const auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return ended_ || handles_.size() >= n;
    };
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&enough),
                         absl::FromChrono(kSettleBound));
    return handles_.size() >= n;
  }

  // Cancels every request still unanswered (one cancel each, with ids of
  // their own), then waits until every request has its answer. Failures
  // name the requests still waiting.
  void settle() {
    std::vector<v1::ClientFrame> cancels;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, asked] : asked_) {
        if (asked.expect == Expect::kOne && !answers_.contains(id)) {
          v1::ClientFrame c;
          c.set_id(next_id_++);
          c.mutable_cancel()->set_target(id);
          cancels.push_back(std::move(c));
        }
      }
    }
    if (!cancels.empty()) {
      ASSERT_TRUE(send(std::move(cancels))) << "the stream broke";
    }
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &Stream::all_answered),
                         absl::FromChrono(kSettleBound));
    std::string missing;
    int n = 0;
    for (const auto& [id, asked] : asked_) {
      if (asked.expect == Expect::kOne && !answers_.contains(id) && n++ < 10) {
        absl::StrAppend(&missing, " ", id, ":", asked.op);
      }
    }
    EXPECT_EQ(n, 0) << n << " requests never answered (even after their "
                    << "cancels), e.g." << missing
                    << (ended_ ? "; the stream ended" : "");
  }

  // Half-closes and expects the broker to end the stream with OK.
  void finish() {
    {
      absl::MutexLock lock(&write_mu_);
      stream_->WritesDone();
    }
    reader_.join();
    const grpc::Status status = stream_->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
  }

  // Cuts the stream off with requests pending (RST_STREAM).
  void abort() {
    ctx_.TryCancel();
    reader_.join();
  }

  // What the reader found wrong.
  std::vector<std::string> problems() {
    absl::MutexLock lock(&mu_);
    return problems_;
  }

  struct Counts {
    uint64_t asked = 0, answers = 0, errors = 0, claims = 0;
    Counts& operator+=(const Counts& o) {
      asked += o.asked;
      answers += o.answers;
      errors += o.errors;
      claims += o.claims;
      return *this;
    }
  };
  Counts counts() {
    absl::MutexLock lock(&mu_);
    Counts c = counts_;
    c.asked = asked_.size();
    return c;
  }

 private:
  struct Asked {
    Expect expect;
    std::string op;
    uint64_t released = 0;                                // a release's handle
    v1::ObjectKind opened = v1::OBJECT_KIND_UNSPECIFIED;  // an open's kind
  };

  struct Handle {
    uint64_t handle;
    v1::ObjectKind kind;
  };

  // True once every request that must be answered was, or the stream
  // ended.
  bool all_answered() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ended_) return true;
    for (const auto& [id, asked] : asked_) {
      if (asked.expect == Expect::kOne && !answers_.contains(id)) return false;
    }
    return true;
  }

  static std::string op_name(const v1::ClientFrame& f) {
    const pb::OneofDescriptor* op = f.GetDescriptor()->FindOneofByName("op");
    const pb::FieldDescriptor* set =
        f.GetReflection()->GetOneofFieldDescriptor(f, op);
    return set != nullptr ? set->name() : "none";
  }

  void read_loop() {
    v1::ServerBatch batch;
    while (stream_->Read(&batch)) {
      std::vector<v1::ClientFrame> claim_answers;
      {
        absl::MutexLock lock(&mu_);
        for (const v1::ServerFrame& f : batch.frames()) {
          if (f.has_offer_claim()) {
            ++counts_.claims;
            // A question about a pending offer of ours: answer it at random.
            if (!asked_.contains(f.id())) {
              problems_.push_back(
                  absl::StrCat("a claim for id ", f.id(), ", never asked"));
            }
            v1::ClientFrame a;
            a.mutable_claim_answer()->set_target(f.id());
            a.mutable_claim_answer()->set_claim(f.offer_claim().claim());
            a.mutable_claim_answer()->set_accept(coin(reader_rng_));
            claim_answers.push_back(std::move(a));
            continue;
          }
          ++counts_.answers;
          if (f.code() != 0) ++counts_.errors;
          if (f.id() == 0) continue;  // an error about an id-0 frame
          auto asked = asked_.find(f.id());
          if (asked == asked_.end()) {
            problems_.push_back(absl::StrCat(
                "an answer for id ", f.id(),
                ", never asked: ", f.ShortDebugString().substr(0, 200)));
            continue;
          }
          if (++answers_[f.id()] > 1) {
            problems_.push_back(
                absl::StrCat("request ", f.id(), " (", asked->second.op,
                             ") answered twice; again: ",
                             f.ShortDebugString().substr(0, 200)));
          }
          if (f.code() != 0) continue;
          if (f.has_open()) {
            handles_.push_back({f.open().handle(), asked->second.opened});
          }
          if (f.has_release()) {
            // Gone from this session: mostly not drawn any more.
            std::erase_if(handles_, [&](const Handle& h) {
              return h.handle == asked->second.released;
            });
          }
          if (f.has_lock() && f.lock().outcome() == v1::OUTCOME_OK) {
            tokens_.push_back(f.lock().token());
          }
        }
      }
      if (!claim_answers.empty()) {
        v1::ClientBatch b;
        for (v1::ClientFrame& a : claim_answers) *b.add_frames() = std::move(a);
        absl::MutexLock lock(&write_mu_);
        stream_->Write(b);  // a broken stream shows in Read
      }
    }
    absl::MutexLock lock(&mu_);
    ended_ = true;
  }

  // ---- random frames (the test thread only; reads the reader's finds
  // under mu_)

  v1::ClientFrame random_frame() {
    v1::ClientFrame f;
    const pb::Descriptor* d = f.GetDescriptor();
    const pb::OneofDescriptor* op = d->FindOneofByName("op");
    const pb::FieldDescriptor* field =
        op->field(pick(static_cast<std::size_t>(op->field_count())));
    // A Hello past the first frame is refused; make it rare all the same.
    if (field->name() == "hello" && coin(rng_)) {
      field = d->FindFieldByName("ping");
    }
    if (field->name() == "open" && coin(rng_)) {
      // Half the opens are right, so that handles keep coming.
      return open_frame(static_cast<int>(pick(kObjectCount)));
    }
    // A closed channel stays closed, a released handle is gone: rarely.
    if (field->name() == "close" && !one_in(4)) {
      field = d->FindFieldByName("recv");
    }
    if (field->name() == "release" && !one_in(4)) {
      field = d->FindFieldByName("stat");
    }
    want_kind_ = kind_for(field->name());
    fill(f.GetReflection()->MutableMessage(&f, field), 0);
    // Unique ids (a reused one has a test of its own in broker_test), and
    // now and then the invalid id 0.
    f.set_id(one_in(40) ? 0 : next_id_++);
    return f;
  }

  // The kind of object operation `op` works on.
  static v1::ObjectKind kind_for(const std::string& op) {
    if (op == "lock" || op == "unlock") return v1::OBJECT_KIND_MUTEX;
    if (op == "add" || op == "wait") return v1::OBJECT_KIND_WAIT_GROUP;
    if (op == "load" || op == "swap" || op == "compare_and_swap") {
      return v1::OBJECT_KIND_ATOMIC_VALUE;
    }
    return v1::OBJECT_KIND_CHANNEL;
  }

  void fill(pb::Message* m, int depth) {
    const pb::Descriptor* d = m->GetDescriptor();
    const pb::Reflection* r = m->GetReflection();
    for (int i = 0; i < d->field_count(); ++i) {
      const pb::FieldDescriptor* field = d->field(i);
      // Left unset now and then (a handle rarely: most frames should
      // reach an object).
      if (one_in(field->name() == "handle" ? 20 : 4)) continue;
      if (field->is_repeated()) {
        const int n = one_in(8) ? 40 : pick(5);
        for (int k = 0; k < n; ++k) add_value(m, r, field, depth);
      } else {
        set_value(m, r, field, depth);
      }
    }
  }

  void set_value(pb::Message* m, const pb::Reflection* r,
                 const pb::FieldDescriptor* field, int depth) {
    using T = pb::FieldDescriptor;
    switch (field->cpp_type()) {
      case T::CPPTYPE_UINT64:
        r->SetUInt64(m, field, number(field->name()));
        return;
      case T::CPPTYPE_UINT32:
        r->SetUInt32(m, field, static_cast<uint32_t>(number(field->name())));
        return;
      case T::CPPTYPE_INT64:
        r->SetInt64(m, field, signed_number());
        return;
      case T::CPPTYPE_INT32:
        r->SetInt32(m, field, static_cast<int32_t>(signed_number()));
        return;
      case T::CPPTYPE_BOOL:
        r->SetBool(m, field, coin(rng_));
        return;
      case T::CPPTYPE_STRING:
        r->SetString(m, field, text(field->name()));
        return;
      case T::CPPTYPE_ENUM:
        r->SetEnumValue(m, field, enum_number(field->enum_type()));
        return;
      case T::CPPTYPE_MESSAGE:
        if (depth < 3) fill(r->MutableMessage(m, field), depth + 1);
        return;
      default:
        return;  // no float or double fields in the protocol
    }
  }

  void add_value(pb::Message* m, const pb::Reflection* r,
                 const pb::FieldDescriptor* field, int depth) {
    using T = pb::FieldDescriptor;
    switch (field->cpp_type()) {
      case T::CPPTYPE_STRING:
        r->AddString(m, field, text(field->name()));
        return;
      case T::CPPTYPE_MESSAGE:
        if (depth < 3) fill(r->AddMessage(m, field), depth + 1);
        return;
      case T::CPPTYPE_UINT64:
        r->AddUInt64(m, field, number(field->name()));
        return;
      default:
        return;  // the protocol has no other repeated fields
    }
  }

  // Unsigned fields: handles and lock tokens the broker gave out, ids of
  // earlier requests (cancel and claim targets), small counts, extremes.
  uint64_t number(const std::string& name) {
    {
      absl::MutexLock lock(&mu_);
      if (name == "handle" && !handles_.empty() && !one_in(6)) {
        // Mostly one of the kind the operation works on.
        std::vector<uint64_t> fitting;
        for (const Handle& h : handles_) {
          if (h.kind == want_kind_) fitting.push_back(h.handle);
        }
        if (!fitting.empty() && !one_in(6))
          return fitting[pick(fitting.size())];
        return handles_[pick(handles_.size())].handle;
      }
      if (name == "token" && !tokens_.empty() && !one_in(4)) {
        return tokens_[pick(tokens_.size())];
      }
    }
    if (name == "target" && next_id_ > 1 && !one_in(6)) {
      return next_id_ - 1 - pick(std::min<uint64_t>(next_id_ - 1, 20));
    }
    switch (pick(6)) {
      case 0:
        return 0;
      case 1:
        return 1;
      case 2:
        return UINT64_MAX;
      case 3:
        return uint64_t{1} << 31;
      default:
        return pick(8);
    }
  }

  int64_t signed_number() {
    switch (pick(6)) {
      case 0:
        return INT64_MIN;
      case 1:
        return INT64_MAX;
      default:
        return static_cast<int64_t>(pick(5)) - 2;
    }
  }

  // Names: a few shared ones (opened by every stream, with clashing kinds,
  // types and capacities), an empty one, a long one. Values: empty, small,
  // at and past --max_value_bytes.
  std::string text(const std::string& field) {
    if (field == "name") {
      static const char* const kNames[] = {"c0", "c1", "m0", "w0", "v0"};
      if (one_in(10)) return std::string(3000, 'n');
      if (one_in(10)) return "";
      return prefix_ + kNames[pick(std::size(kNames))];
    }
    if (field == "type_name") return one_in(4) ? "string" : "bytes";
    switch (pick(16)) {
      case 0:
        return "";
      case 1:
        return std::string(kMaxValueBytes, 'v');
      case 2:
        return std::string(kMaxValueBytes + 1, 'w');
      default:
        return std::string(pick(64), 'x');
    }
  }

  int enum_number(const pb::EnumDescriptor* e) {
    if (one_in(16)) return 1000 + static_cast<int>(pick(10));  // unknown
    return e->value(static_cast<int>(pick(e->value_count())))->number();
  }

  static bool coin(std::mt19937_64& g) { return (g() & 1) != 0; }

  std::size_t pick(std::size_t n) {
    return n == 0 ? 0
                  : std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_);
  }
  bool one_in(int n) { return pick(static_cast<std::size_t>(n)) == 0; }

  std::unique_ptr<v1::Broker::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ClientBatch, v1::ServerBatch>>
      stream_;
  absl::Mutex write_mu_;  // one Write at a time: the test's or the reader's

  const std::string prefix_;
  std::mt19937_64 rng_;  // the test thread's
  uint64_t next_id_ = 1;
  v1::ObjectKind want_kind_ = v1::OBJECT_KIND_CHANNEL;  // random_frame's op

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Asked> asked_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, int> answers_ ABSL_GUARDED_BY(mu_);
  std::vector<Handle> handles_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> tokens_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> problems_ ABSL_GUARDED_BY(mu_);
  Counts counts_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::mt19937_64 reader_rng_{7} ABSL_GUARDED_BY(mu_);

  std::thread reader_;  // last: started once the rest exists
};

void run_seed(BrokerProcess& broker, uint64_t seed) {
  SCOPED_TRACE(absl::StrCat(
      "seed ", seed, " (rerun alone: DCHAN_RANDOM_FRAMES_SEED=", seed, ")"));
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<Stream>(
        broker.address(), absl::StrCat("s", seed, "/"), seed * kStreams + i));
  }
  // Every stream holds a handle of every kind before the random frames.
  for (auto& s : streams) {
    std::vector<v1::ClientFrame> opens;
    for (int k = 0; k < Stream::kObjectCount; ++k) {
      opens.push_back(s->open_frame(k));
    }
    ASSERT_TRUE(s->send(std::move(opens)));
  }
  for (auto& s : streams) {
    ASSERT_TRUE(s->await_handles(Stream::kObjectCount))
        << "the opens were not answered";
  }
  const int cut_off = static_cast<int>(seed % kStreams);
  for (int b = 0; b < kBatches; ++b) {
    for (int i = 0; i < kStreams; ++i) {
      if (i == cut_off && b == kBatches / 2) streams[i]->abort();
      if (i == cut_off && b >= kBatches / 2) continue;
      ASSERT_TRUE(streams[i]->send(streams[i]->random_batch()))
          << "stream " << i << " broke at batch " << b;
    }
  }
  for (int i = 0; i < kStreams; ++i) {
    if (i == cut_off) continue;
    SCOPED_TRACE(absl::StrCat("stream ", i));
    streams[i]->settle();
    streams[i]->finish();
  }
  Stream::Counts total;
  for (int i = 0; i < kStreams; ++i) {
    for (const std::string& p : streams[i]->problems()) {
      ADD_FAILURE() << "stream " << i << ": " << p;
    }
    total += streams[i]->counts();
  }
  std::printf(
      "seed %llu: %llu requests, %llu answers (%llu errors), "
      "%llu offer claims\n",
      static_cast<unsigned long long>(seed),
      static_cast<unsigned long long>(total.asked),
      static_cast<unsigned long long>(total.answers),
      static_cast<unsigned long long>(total.errors),
      static_cast<unsigned long long>(total.claims));
  // Most frames are refused (random handles, kinds, values), but not all.
  EXPECT_GT(total.answers - total.errors, total.asked / 20);
  ASSERT_TRUE(broker.running()) << "the broker is gone";
  EXPECT_TRUE(broker.wait_for_sessions(
      [](const std::vector<SessionState>& s) { return s.empty(); },
      seconds(20)))
      << "sessions outlived their streams";
}

TEST(BrokerRandomFrames, EveryRequestIsAnsweredOnceAndTheBrokerLivesOn) {
  BrokerProcess broker(
      {absl::StrCat("--max_value_bytes=", kMaxValueBytes),
       "--offer_claim_timeout_ms=200",
       // Idle raw streams send no pings: no expiry while others settle.
       "--session_ttl_ms=600000"});
  std::vector<uint64_t> seeds = {1, 2, 3, 4, 5, 6, 7, 8};
  if (const char* s = std::getenv("DCHAN_RANDOM_FRAMES_SEED")) {
    seeds = {std::strtoull(s, nullptr, 10)};
  }
  for (uint64_t seed : seeds) {
    run_seed(broker, seed);
    broker.read_available();
    if (::testing::Test::HasFatalFailure()) return;
  }
  // A real client is still served.
  Client client = Client::connect(broker.address());
  Chan<std::string> ch = client.chan<std::string>("after-random", 1);
  ch.send("still here");
  EXPECT_EQ(ch.recv(), "still here");
}

}  // namespace
}  // namespace dchan::testing
