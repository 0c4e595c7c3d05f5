// dchan::Client and the broker-backed channel backend (detail::RemoteChan).
// The sync objects' backends are in sync.cc.
#include "dchan/client.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "connection.h"

namespace dchan {
namespace detail {
namespace {

ChanStatus to_status(v1::Outcome outcome) {
  switch (outcome) {
    case v1::OUTCOME_OK:
      return ChanStatus::kOk;
    case v1::OUTCOME_WOULD_BLOCK:
      return ChanStatus::kWouldBlock;
    case v1::OUTCOME_CLOSED:
      return ChanStatus::kClosed;
    case v1::OUTCOME_CANCELLED:
      return ChanStatus::kTimeout;
    default:
      break;
  }
  throw Error(absl::StatusCode::kInternal,
              absl::StrCat("dchan: the broker answered with outcome ",
                           static_cast<int>(outcome)));
}

// A channel on the broker, reached through the session's connection.
class BrokerChan final : public RemoteChan {
 public:
  BrokerChan(std::shared_ptr<Connection> conn, uint64_t handle,
             std::size_t capacity)
      : conn_(std::move(conn)), handle_(handle), cap_(capacity) {}

  ~BrokerChan() override { conn_->release(handle_); }

  ChanStatus send(const std::string& value, Deadline deadline) override {
    v1::ClientFrame f;
    v1::SendRequest* req = f.mutable_send();
    req->set_handle(handle_);
    req->set_value(value);
    req->set_nonblocking(deadline == kNonBlocking);
    const v1::ServerFrame answer = conn_->call(f, deadline);
    return to_status(answer.send().outcome());
  }

  ChanStatus recv(std::string& out, Deadline deadline) override {
    v1::ClientFrame f;
    v1::RecvRequest* req = f.mutable_recv();
    req->set_handle(handle_);
    req->set_nonblocking(deadline == kNonBlocking);
    v1::ServerFrame answer = conn_->call(f, deadline);
    const ChanStatus st = to_status(answer.recv().outcome());
    if (st == ChanStatus::kOk)
      out = std::move(*answer.mutable_recv()->mutable_value());
    return st;
  }

  void close() override {
    v1::ClientFrame f;
    f.mutable_close()->set_handle(handle_);
    conn_->call(f, kNoDeadline);  // throws "close of closed channel"
  }

  std::size_t len() override {
    v1::ClientFrame f;
    f.mutable_stat()->set_handle(handle_);
    return static_cast<std::size_t>(conn_->call(f, kNoDeadline).stat().len());
  }

  std::size_t cap() const noexcept override { return cap_; }

  const void* session() const noexcept override { return conn_.get(); }

  uint64_t watch(bool for_send,
                 absl::AnyInvocable<void(bool) &&> ready) override {
    v1::ClientFrame f;
    v1::WatchRequest* req = f.mutable_watch();
    req->set_handle(handle_);
    req->set_send(for_send);
    return conn_->call_async(
        f, [ready = std::move(ready)](const absl::Status& error,
                                      v1::ServerFrame& answer) mutable {
          // An error answer (or a lost broker) wakes the select too: its
          // non-blocking attempt then reports the problem.
          // ok=false: the broker is lost, or refused the watch.
          const bool ok = error.ok() && answer.code() == 0;
          if (ok && answer.has_watch() &&
              answer.watch().outcome() == v1::OUTCOME_CANCELLED) {
            return;  // withdrawn: the select has moved on
          }
          std::move(ready)(ok);
        });
  }

  void cancel_watch(uint64_t token) noexcept override { conn_->cancel(token); }

  uint64_t offer(bool send, const std::string& value, uint64_t select_id,
                 absl::AnyInvocable<bool()> claim,
                 absl::AnyInvocable<void(RemoteOfferResult) &&> done) override {
    v1::ClientFrame f;
    v1::OfferRequest* req = f.mutable_offer();
    req->set_handle(handle_);
    req->set_send(send);
    if (send) req->set_value(value);
    req->set_select_id(select_id);
    return conn_->call_offer(
        f, std::move(claim),
        [done = std::move(done)](const absl::Status& error,
                                 v1::ServerFrame& answer) mutable {
          RemoteOfferResult r;
          if (!error.ok()) {
            r.error = std::string(error.message());
          } else if (answer.code() != 0) {
            r.error = answer.message();
          } else if (!answer.has_offer()) {
            r.error = "dchan: the broker answered an offer with another frame";
          } else {
            switch (answer.offer().outcome()) {
              case v1::OUTCOME_OK:
                r.kind = RemoteOfferResult::kCommitted;
                r.value = std::move(*answer.mutable_offer()->mutable_value());
                break;
              case v1::OUTCOME_ABORTED:
                r.kind = RemoteOfferResult::kAborted;
                break;
              case v1::OUTCOME_CANCELLED:
                r.kind = RemoteOfferResult::kCancelled;
                break;
              default:
                r.error = absl::StrCat(
                    "dchan: the broker answered an offer with outcome ",
                    static_cast<int>(answer.offer().outcome()));
                break;
            }
          }
          std::move(done)(std::move(r));
        });
  }

  void cancel_offer(uint64_t token) noexcept override { conn_->cancel(token); }

  RemoteSelectResult select(std::vector<RemoteSelectCase>& cases,
                            Deadline deadline) override {
    v1::ClientFrame f;
    v1::SelectRequest* req = f.mutable_select();
    req->set_nonblocking(deadline == kNonBlocking);
    for (RemoteSelectCase& c : cases) {
      if (c.chan->session() != session()) {
        throw Error(absl::StatusCode::kInvalidArgument,
                    "dchan: a broker select over channels of two sessions");
      }
      v1::SelectCase* sc = req->add_cases();
      sc->set_handle(static_cast<BrokerChan*>(c.chan)->handle_);
      sc->set_send(c.send);
      if (c.send) sc->set_value(c.value);  // kept: the select may go again
    }
    v1::ServerFrame answer = conn_->call(f, deadline);
    const v1::SelectResponse& r = answer.select();
    RemoteSelectResult out;
    out.status = to_status(r.outcome());
    out.index = r.index();
    if (out.status == ChanStatus::kWouldBlock) out.index = cases.size();
    if ((out.status == ChanStatus::kOk || out.status == ChanStatus::kClosed) &&
        out.index >= cases.size()) {
      throw Error(absl::StatusCode::kInternal,
                  absl::StrCat("dchan: the broker answered select case ",
                               out.index, " of ", cases.size()));
    }
    out.value = std::move(*answer.mutable_select()->mutable_value());
    return out;
  }

 private:
  const std::shared_ptr<Connection> conn_;
  const uint64_t handle_;
  const std::size_t cap_;
};

}  // namespace

std::shared_ptr<RemoteChan> open_remote_chan(
    const std::shared_ptr<Connection>& conn, const std::string& name,
    const std::string& type_name, std::size_t capacity) {
  v1::ClientFrame f;
  v1::OpenRequest* req = f.mutable_open();
  req->set_name(name);
  req->set_kind(v1::OBJECT_KIND_CHANNEL);
  req->set_type_name(type_name);
  req->set_capacity(capacity);
  const v1::ServerFrame answer = conn->call(f, RemoteChan::kNoDeadline);
  return std::make_shared<BrokerChan>(conn, answer.open().handle(), capacity);
}

}  // namespace detail

Client Client::connect(const std::string& target) {
  return connect(target, ClientOptions());
}

Client Client::connect(const std::string& target, ClientOptions options) {
  return Client(std::make_shared<detail::Connection>(target, options));
}

const std::string& Client::target() const noexcept { return conn_->target(); }

const std::string& Client::name() const noexcept { return conn_->name(); }

uint64_t Client::session_id() const noexcept { return conn_->session_id(); }

std::chrono::milliseconds Client::session_ttl() const noexcept {
  return conn_->session_ttl();
}

}  // namespace dchan
