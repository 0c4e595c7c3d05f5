// Workers on separate hosts: each test builds a small network of "hosts" —
// network namespaces on one bridge — and runs the broker, the job example's
// workers and coordinator (examples/job_*.cc) and lock-taking processes
// (netns_node.cc) on different hosts, talking over the bridge only.
//
//   namespace dchan-<pid>-sw:      bridge br0, one veth port per host
//   namespace dchan-<pid>-broker:  eth0 10.77.0.1/24   dchan-broker :7070
//   namespace dchan-<pid>-host1:   eth0 10.77.0.2/24
//   namespace dchan-<pid>-host2:   eth0 10.77.0.3/24   (the one cut off)
//   namespace dchan-<pid>-coord:   eth0 10.77.0.4/24
//
// Addresses exist only inside these namespaces; the machine's own
// interfaces, routes and firewall are never touched. A host is cut off by
// iptables DROP rules (INPUT and OUTPUT) inside its own namespace: a silent
// partition, nothing is reset. NetLab deletes every namespace it made —
// with them go their veths, the bridge and the rules — when the test ends,
// also when it fails; namespaces left by a test process that was killed
// (SIGKILL skips destructors) are deleted by the next run.
//
// Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), `ip` and `iptables`: where
// they are missing or not permitted the tests FAIL saying so — they never
// pass without having run.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "broker_process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef DCHAN_JOB_WORKER_PATH
#error "DCHAN_JOB_WORKER_PATH must name examples/job_worker"
#endif

namespace dchan::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;
using ::testing::HasSubstr;

constexpr char kBrokerIp[] = "10.77.0.1";
constexpr int kBrokerPort = 7070;
constexpr char kPrefix[] = "dchan-";

// The first of `candidates` that is an executable file, else "".
std::string find_tool(const std::vector<std::string>& candidates) {
  for (const std::string& c : candidates) {
    if (::access(c.c_str(), X_OK) == 0) return c;
  }
  return "";
}

const std::string& ip_tool() {
  static const std::string path =
      find_tool({"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"});
  return path;
}

const std::string& iptables_tool() {
  static const std::string path =
      find_tool({"/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"});
  return path;
}

// Runs `ip args...` (bounded at 10 s); throws std::runtime_error with the
// command and its output if it fails.
void ip(const std::vector<std::string>& args) {
  if (ip_tool().empty()) {
    throw std::runtime_error("no `ip` (iproute2) on this machine");
  }
  ProcessResult r = Process::spawn(ip_tool(), args).wait(seconds(10));
  if (r.exit_code != 0) {
    throw std::runtime_error(absl::StrCat("`ip ", absl::StrJoin(args, " "),
                                          "` failed: ", r.err, r.out));
  }
}

// True while `pid` runs (a zombie does not: its namespaces are stale).
bool process_alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t paren = line.rfind(')');  // "pid (comm) S ..."
  return paren != std::string::npos && paren + 2 < line.size() &&
         line[paren + 2] != 'Z' && line[paren + 2] != 'X';
}

// Deletes namespaces "dchan-<pid>-*" whose test process is gone (it was
// killed before its destructors ran), and kills what still runs in them.
void delete_stale_namespaces() {
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kPrefix, 0) != 0) continue;
    const std::string rest = name.substr(sizeof(kPrefix) - 1);
    const pid_t pid = std::atoi(rest.substr(0, rest.find('-')).c_str());
    if (pid <= 0 || pid == ::getpid()) continue;
    if (process_alive(pid)) continue;
    {
      try {
        // Its children (a broker, workers) may still run in there.
        ProcessResult pids = Process::spawn(ip_tool(), {"netns", "pids", name})
                                 .wait(seconds(10));
        for (const std::string& line : pids.lines()) {
          const pid_t child = std::atoi(line.c_str());
          if (child > 0) ::kill(child, SIGKILL);
        }
        ip({"netns", "del", name});
      } catch (const std::exception&) {
        // Another test process got there first.
      }
    }
  }
}

// A network of hosts on one bridge, torn down by the destructor. Host i of
// the constructor's list gets 10.77.0.(i+1); the first is the broker's.
class NetLab {
 public:
  explicit NetLab(const std::vector<std::string>& hosts) : hosts_(hosts) {
    delete_stale_namespaces();
    try {
      build();
    } catch (...) {
      tear_down();
      throw;
    }
  }
  NetLab(const NetLab&) = delete;
  NetLab& operator=(const NetLab&) = delete;
  ~NetLab() { tear_down(); }

  std::string ns(const std::string& host) const {
    return absl::StrCat(kPrefix, ::getpid(), "-", host);
  }

  std::string address(const std::string& host) const {
    for (size_t i = 0; i < hosts_.size(); ++i) {
      if (hosts_[i] == host) return absl::StrCat("10.77.0.", i + 1);
    }
    throw std::logic_error("no host " + host);
  }

  // Spawns `path args...` inside `host`'s namespace (`ip netns exec` execs
  // it: the Process is the program itself).
  Process spawn(const std::string& host, const std::string& path,
                const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"netns", "exec", ns(host), path};
    argv.insert(argv.end(), args.begin(), args.end());
    return Process::spawn(ip_tool(), argv);
  }

  // Drops every packet into and out of `host` (a silent partition), or
  // lets them through again.
  void cut_off(const std::string& host) { firewall(host, "-A"); }
  void reconnect(const std::string& host) { firewall(host, "-D"); }

 private:
  void build() {
    if (iptables_tool().empty()) {
      throw std::runtime_error("no `iptables` on this machine");
    }
    const std::string sw = ns("sw");
    add_namespace(sw);
    ip({"-n", sw, "link", "add", "br0", "type", "bridge"});
    ip({"-n", sw, "link", "set", "br0", "up"});
    for (const std::string& host : hosts_) {
      const std::string port = "v-" + host;
      add_namespace(ns(host));
      ip({"-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0",
          "netns", ns(host)});
      ip({"-n", sw, "link", "set", port, "master", "br0", "up"});
      ip({"-n", ns(host), "addr", "add", address(host) + "/24", "dev", "eth0"});
      ip({"-n", ns(host), "link", "set", "eth0", "up"});
      ip({"-n", ns(host), "link", "set", "lo", "up"});
    }
  }

  void add_namespace(const std::string& name) {
    try {
      ip({"netns", "add", name});
    } catch (const std::exception& e) {
      throw std::runtime_error(absl::StrCat(
          "cannot create network namespaces (this test needs root: "
          "CAP_SYS_ADMIN and CAP_NET_ADMIN): ",
          e.what()));
    }
    namespaces_.push_back(name);
  }

  void firewall(const std::string& host, const std::string& op) {
    for (const char* chain : {"INPUT", "OUTPUT"}) {
      ip({"netns", "exec", ns(host), iptables_tool(), "-w", op, chain, "-j",
          "DROP"});
    }
  }

  // Deleting a namespace deletes its veth ends (and so their peers), its
  // bridge and its iptables rules.
  void tear_down() noexcept {
    for (auto it = namespaces_.rbegin(); it != namespaces_.rend(); ++it) {
      try {
        ip({"netns", "del", *it});
      } catch (const std::exception& e) {
        std::fprintf(stderr, "NetLab: %s\n", e.what());
      }
    }
    namespaces_.clear();
  }

  std::vector<std::string> hosts_;
  std::vector<std::string> namespaces_;  // made so far, in order
};

// Starts dchan-broker on kBrokerIp:kBrokerPort in `host`; waits for its
// startup line.
Process start_broker(NetLab& lab, const std::string& host,
                     std::vector<std::string> flags) {
  flags.insert(flags.begin(),
               absl::StrCat("--listen=", kBrokerIp, ":", kBrokerPort));
  Process broker = lab.spawn(host, DCHAN_BROKER_PATH, flags);
  if (!broker.wait_for_output("dchan-broker listening on", seconds(20))) {
    ADD_FAILURE() << "the broker did not start\n" << broker.wait(seconds(1));
  }
  return broker;
}

std::string broker_flag() {
  return absl::StrCat("--broker=", kBrokerIp, ":", kBrokerPort);
}

// Builds the lab, or fails the test with the reason it cannot be built.
#define MAKE_LAB(lab, ...)                                   \
  std::optional<NetLab> lab;                                 \
  try {                                                      \
    lab.emplace(std::vector<std::string>{__VA_ARGS__});      \
  } catch (const std::exception& e) {                        \
    FAIL() << "cannot build the test network: " << e.what(); \
  }

// What a netns_node line "NAME: session S holds LOCK token T" says.
struct Hold {
  unsigned long long session = 0;
  unsigned long long token = 0;
};

// Every "holds" line of `out`, in order.
std::vector<Hold> holds(const std::string& out) {
  static const std::regex re(R"(session (\d+) holds \S+ token (\d+))");
  std::vector<Hold> v;
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end;
       ++it) {
    v.push_back({std::stoull((*it)[1]), std::stoull((*it)[2])});
  }
  return v;
}

TEST(Netns, JobCompletesWithBrokerWorkersAndCoordinatorOnSeparateHosts) {
  MAKE_LAB(lab, "broker", "host1", "host2", "coord");
  Process broker = start_broker(*lab, "broker", {});
  Process w1 = lab->spawn("host1", DCHAN_JOB_WORKER_PATH,
                          {broker_flag(), "--id=1", "--job_ms=20"});
  Process w2 = lab->spawn("host2", DCHAN_JOB_WORKER_PATH,
                          {broker_flag(), "--id=2", "--job_ms=20"});
  Process coordinator = lab->spawn("coord", DCHAN_JOB_COORDINATOR_PATH,
                                   {broker_flag(), "--jobs=20", "--workers=2"});

  const ProcessResult c = coordinator.wait(seconds(30));
  EXPECT_EQ(c.exit_code, 0) << c;
  // Both hosts did jobs, and every result came back right.
  EXPECT_THAT(c.out, HasSubstr("coordinator: 20 jobs done (worker-1: "));
  EXPECT_THAT(c.out, HasSubstr(", worker-2: "));
  EXPECT_THAT(c.out, HasSubstr("sum of squares 2870: ok"));
  for (Process* w : {&w1, &w2}) {
    const ProcessResult r = w->wait(seconds(10));
    EXPECT_EQ(r.exit_code, 0) << r;
    EXPECT_THAT(r.out, HasSubstr("jobs closed after"));
  }
}

// host2 runs job worker 2 and a lock holder; host1 runs job worker 1 and a
// contender for the same lock. host2 is cut off mid-batch.
TEST(Netns, CutOffHostLosesItsSessionLockAndBatchThenComesBackAsNewSession) {
  MAKE_LAB(lab, "broker", "host1", "host2", "coord");
  // Every session's TTL is 1 s (the broker clamps the clients' requests).
  Process broker =
      start_broker(*lab, "broker",
                   {"--session_ttl_ms=1000", "--min_session_ttl_ms=100",
                    "--max_session_ttl_ms=1000"});

  Process holder = lab->spawn(
      "host2", DCHAN_NETNS_NODE_PATH,
      {"holder", broker_flag(), "--name=host2-holder", "--lock=resource"});
  ASSERT_TRUE(holder.wait_for_output("holds resource", seconds(20)))
      << holder.wait(seconds(1));

  Process w1 = lab->spawn("host1", DCHAN_JOB_WORKER_PATH,
                          {broker_flag(), "--id=1", "--job_ms=100"});
  Process w2 = lab->spawn("host2", DCHAN_JOB_WORKER_PATH,
                          {broker_flag(), "--id=2", "--job_ms=100"});
  Process coordinator = lab->spawn("coord", DCHAN_JOB_COORDINATOR_PATH,
                                   {broker_flag(), "--jobs=30", "--workers=2"});
  ASSERT_TRUE(w2.wait_for_output("worker-2: job", seconds(20)))
      << w2.wait(seconds(1)) << coordinator.wait(seconds(1));

  // A contender on host1 queues behind host2's holder.
  Process contender =
      lab->spawn("host1", DCHAN_NETNS_NODE_PATH,
                 {"contender", broker_flag(), "--name=host1-contender",
                  "--lock=resource", "--hold_ms=500"});
  EXPECT_FALSE(contender.wait_for_output("holds", milliseconds(500)))
      << "the contender got the lock while host2 held it\n"
      << contender.wait(seconds(1));

  const auto cut = steady_clock::now();
  lab->cut_off("host2");

  // The broker ends host2's sessions after their TTL: the lock goes to host1.
  ASSERT_TRUE(contender.wait_for_output("holds resource", seconds(15)))
      << contender.wait(seconds(1)) << holder.wait(seconds(1));
  const auto handed_over = steady_clock::now() - cut;
  // ... and the batch fails naming the lost worker, not the live one.
  const ProcessResult c = coordinator.wait(seconds(30));
  EXPECT_EQ(c.exit_code, 1) << c;
  EXPECT_THAT(c.out, HasSubstr("coordinator: batch failed: "));
  EXPECT_THAT(c.out, HasSubstr("\"worker-2\""));
  EXPECT_THAT(c.out,
              HasSubstr("10.77.0.3:"));  // the broker saw host2's address
  EXPECT_THAT(c.out, ::testing::Not(HasSubstr("\"worker-1\"")));
  const ProcessResult r1 = w1.wait(seconds(15));
  EXPECT_EQ(r1.exit_code, 0) << r1;
  // On host2 the clients see the loss on their side too (nothing heard from
  // the broker for the TTL), without a hang.
  const ProcessResult r2 = w2.wait(seconds(15));
  EXPECT_EQ(r2.exit_code, 1) << r2;
  EXPECT_FALSE(r2.timed_out) << r2;
  ASSERT_TRUE(holder.wait_for_output("lost resource", seconds(15)))
      << holder.wait(seconds(1));

  // host2 comes back: the holder connects a new Client — a new session —
  // and gets the lock once host1's contender released it.
  lab->reconnect("host2");
  const ProcessResult h = holder.wait(seconds(30));
  EXPECT_EQ(h.exit_code, 0) << h;
  const ProcessResult k = contender.wait(seconds(15));
  EXPECT_EQ(k.exit_code, 0) << k;
  EXPECT_THAT(k.out, HasSubstr("released resource"));

  const std::vector<Hold> by_holder = holds(h.out);
  const std::vector<Hold> by_contender = holds(k.out);
  ASSERT_EQ(by_holder.size(), 2u) << h;
  ASSERT_EQ(by_contender.size(), 1u) << k;
  EXPECT_NE(by_holder[1].session, by_holder[0].session) << h;
  // Fencing tokens: each acquisition's is higher than the one before.
  EXPECT_GT(by_contender[0].token, by_holder[0].token) << h << k;
  EXPECT_GT(by_holder[1].token, by_contender[0].token) << h << k;
  std::printf(
      "--- coordinator (coord)\n%s--- holder (host2)\n%s"
      "--- contender (host1)\n%s--- worker-2 (host2)\n%s",
      c.out.c_str(), h.out.c_str(), k.out.c_str(), r2.out.c_str());
  std::printf(
      "lock handed to host1 %lld ms after host2 was cut off\n",
      static_cast<long long>(
          std::chrono::duration_cast<milliseconds>(handed_over).count()));
  EXPECT_LT(handed_over, seconds(10));
}

}  // namespace
}  // namespace dchan::testing
