// raw_channel.h — a gRPC channel to a broker for tests that speak the
// protocol themselves (raw Session streams, the Inspect service).
//
// Thread safety: the function is; the channel is gRPC's.
#ifndef DCHAN_INTEGRATION_TESTS_RAW_CHANNEL_H_
#define DCHAN_INTEGRATION_TESTS_RAW_CHANNEL_H_

#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"

namespace dchan::testing {

// A channel with its own TCP connection (gRPC otherwise shares one
// connection among channels with equal arguments): each stream on its own
// channel is a separate client as far as the broker can tell. Receives
// messages of any size, so that the broker's own limits are what a test sees.
inline std::shared_ptr<grpc::Channel> raw_channel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

}  // namespace dchan::testing

#endif  // DCHAN_INTEGRATION_TESTS_RAW_CHANNEL_H_
