// remote_select: one select over several broker channels, with a timeout.
//
//   remote_select --broker=HOST:PORT [--quiet_ms=1000]
//
// A producer — its own Client, as another process would be — sends readings
// 10..50 on "metrics" and three alerts on "alerts", falls silent for
// --quiet_ms, sends one last alert and closes both channels. The consumer
// loops on one dchan::select: a value from either channel, or after(300ms)
// fires first ("nothing for 300 ms"). Its cases are all on one Client plus a
// timer, so each select runs as one select on the broker, the timer as its
// deadline. A channel seen closed is set to the nil channel, whose case
// never fires again (Go's idiom); the loop ends when both are nil. Exits 0
// if every value arrived and the silence was noticed.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "dchan/client.h"
#include "job.h"  // job::flag

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string broker = job::flag(argc, argv, "broker", "127.0.0.1:7070");
  const auto quiet = std::chrono::milliseconds(
      std::stoi(job::flag(argc, argv, "quiet_ms", "1000")));

  std::thread producer([c = dchan::Client::connect(broker), quiet]() mutable {
    auto metrics = c.chan<int64_t>("metrics");
    auto alerts = c.chan<std::string>("alerts");
    for (int i = 1; i <= 5; ++i) {
      metrics.send(10 * i);
      if (i <= 3) alerts.send("disk " + std::to_string(80 + i) + "% full");
    }
    std::this_thread::sleep_for(quiet);
    alerts.send("disk full");
    alerts.close();
    metrics.close();
  });

  dchan::Client client = dchan::Client::connect(broker);
  auto metrics = client.chan<int64_t>("metrics");
  auto alerts = client.chan<std::string>("alerts");
  int64_t sum = 0;
  int n_alerts = 0, timeouts = 0;
  auto on_metric = [&](std::optional<int64_t> m) {
    if (!m) {
      metrics = {};  // closed and drained: its case never fires again
      return;
    }
    std::printf("metric: %lld\n", static_cast<long long>(*m));
    sum += *m;
  };
  auto on_alert = [&](std::optional<std::string> a) {
    if (!a) {
      alerts = {};
      return;
    }
    std::printf("alert: %s\n", a->c_str());
    ++n_alerts;
  };
  auto on_quiet = [&](auto) {
    std::printf("nothing for 300 ms\n");
    ++timeouts;
  };
  while (!metrics.is_nil() || !alerts.is_nil()) {
    dchan::select(dchan::on_recv(metrics, on_metric),
                  dchan::on_recv(alerts, on_alert),
                  dchan::on_recv(dchan::after(300ms), on_quiet));
  }
  producer.join();
  const bool right = sum == 150 && n_alerts == 4 && timeouts > 0;
  std::printf("remote_select: metrics sum %lld, %d alerts, %s: %s\n",
              static_cast<long long>(sum), n_alerts,
              timeouts > 0 ? "timed out while quiet" : "NO timeout",
              right ? "ok" : "WRONG");
  return right ? 0 : 1;
}
