// dchan-netns-node: the lock-taking processes of netns_test.cc, run inside
// the network namespaces ("hosts") that test builds. Prints one line per
// event, so that the test can follow it.
//
//   dchan-netns-node holder --broker=A --name=N --lock=L
//     A host that holds lock L for as long as its session lives, and comes
//     back as a new session when it can: connects (session TTL --ttl_ms,
//     connect timeout 1 s, retrying every 200 ms for up to 60 s), locks L,
//     prints "N: session S holds L token T", and holds it until the client
//     declares the session lost (hold_token() stops): prints "N: session S
//     lost L: <error>". A lost Client never reconnects by itself: the holder
//     then connects a NEW Client (a new session), locks L again, prints
//     "N: session S2 holds L token T2", unlocks it ("N: session S2 released
//     L") and exits 0.
//
//   dchan-netns-node contender --broker=A --name=N --lock=L [--hold_ms=500]
//     Connects, locks L (blocking until it is free), prints "N: session S
//     holds L token T", holds it for --hold_ms, unlocks it ("N: session S
//     released L") and exits 0.
//
// Exit status: 0 as above; 1 a dchan::Error it did not expect (printed);
// 2 bad usage.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "dchan/client.h"

namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// The value of --name=VALUE in argv, else `fallback`.
std::string flag(int argc, char** argv, const std::string& name,
                 const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 2; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
      return argv[i] + prefix.size();
    }
  }
  return fallback;
}

struct Config {
  std::string broker, name, lock;
  milliseconds ttl{1000};
};

// Connects a new Client, retrying while the broker cannot be reached (its
// host may be cut off); nullopt after 60 s.
std::optional<dchan::Client> connect(const Config& c) {
  const auto deadline = steady_clock::now() + std::chrono::seconds(60);
  for (;;) {
    try {
      return dchan::Client::connect(c.broker,
                                    {.connect_timeout = milliseconds(1000),
                                     .session_ttl = c.ttl,
                                     .name = c.name});
    } catch (const dchan::Error& e) {
      if (steady_clock::now() > deadline) {
        std::printf("%s: gave up connecting: %s\n", c.name.c_str(), e.what());
        return std::nullopt;
      }
      std::this_thread::sleep_for(milliseconds(200));
    }
  }
}

void say(const Config& c, const dchan::Client& client, const char* what,
         const dchan::Mutex* mu = nullptr) {
  std::printf("%s: session %llu %s %s", c.name.c_str(),
              static_cast<unsigned long long>(client.session_id()), what,
              c.lock.c_str());
  if (mu != nullptr) {
    std::printf(" token %llu", static_cast<unsigned long long>(mu->token()));
  }
  std::printf("\n");
}

int holder(const Config& c) {
  {
    std::optional<dchan::Client> client = connect(c);
    if (!client) return 1;
    dchan::Mutex mu = client->mutex(c.lock);
    mu.lock();
    say(c, *client, "holds", &mu);
    const std::stop_token held = mu.hold_token();
    while (!held.stop_requested())
      std::this_thread::sleep_for(milliseconds(10));
    try {
      mu.unlock();  // must throw: the lock is gone with the session
      std::printf("%s: unlock after the loss did not throw\n", c.name.c_str());
      return 1;
    } catch (const dchan::Error& e) {
      std::printf("%s: session %llu lost %s: %s\n", c.name.c_str(),
                  static_cast<unsigned long long>(client->session_id()),
                  c.lock.c_str(), e.what());
    }
  }  // the lost Client is dropped here; it never comes back
  std::optional<dchan::Client> client = connect(c);
  if (!client) return 1;
  dchan::Mutex mu = client->mutex(c.lock);
  mu.lock();
  say(c, *client, "holds", &mu);
  mu.unlock();
  say(c, *client, "released");
  return 0;
}

int contender(const Config& c, milliseconds hold) {
  std::optional<dchan::Client> client = connect(c);
  if (!client) return 1;
  dchan::Mutex mu = client->mutex(c.lock);
  mu.lock();
  say(c, *client, "holds", &mu);
  std::this_thread::sleep_for(hold);
  mu.unlock();
  say(c, *client, "released");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string mode = argc > 1 ? argv[1] : "";
  Config c;
  c.broker = flag(argc, argv, "broker", "");
  c.name = flag(argc, argv, "name", mode);
  c.lock = flag(argc, argv, "lock", "resource");
  c.ttl = milliseconds(std::stoi(flag(argc, argv, "ttl_ms", "1000")));
  if (c.broker.empty() || (mode != "holder" && mode != "contender")) {
    std::fprintf(stderr,
                 "usage: dchan-netns-node holder|contender --broker=HOST:PORT "
                 "[--name=N] [--lock=L] [--ttl_ms=1000] [--hold_ms=500]\n");
    return 2;
  }
  try {
    if (mode == "holder") return holder(c);
    return contender(
        c, milliseconds(std::stoi(flag(argc, argv, "hold_ms", "500"))));
  } catch (const dchan::Error& e) {
    std::printf("%s: unexpected error: %s\n", c.name.c_str(), e.what());
    return 1;
  }
}
