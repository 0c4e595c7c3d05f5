// dchan-health-probe: asks a gRPC server's standard health service
// (grpc.health.v1.Health/Check) whether it is serving. The broker image's
// Docker HEALTHCHECK runs it; scripts may too.
//
//   dchan-health-probe [--addr=HOST:PORT] [--service=NAME] [--timeout_ms=N]
//
// --addr defaults to $DCHAN_HEALTH_ADDR, else 127.0.0.1:7070 (the broker's
// default port, seen from inside its container). Prints the answer and exits
// 0 when the server says SERVING within the timeout; prints the status or the
// RPC error and exits 1 otherwise (not serving, unreachable, timed out).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, addr, "",
          "HOST:PORT of the server; default $DCHAN_HEALTH_ADDR, else "
          "127.0.0.1:7070");
ABSL_FLAG(std::string, service, "",
          "service to ask about; \"\" is the server as a whole");
ABSL_FLAG(int32_t, timeout_ms, 2000, "deadline of the whole check");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "dchan-health-probe asks a gRPC server whether it is serving.\n"
      "Usage: dchan-health-probe [--addr=HOST:PORT] [--service=NAME]");
  absl::ParseCommandLine(argc, argv);
  std::string addr = absl::GetFlag(FLAGS_addr);
  if (addr.empty()) {
    const char* env = std::getenv("DCHAN_HEALTH_ADDR");
    addr = env != nullptr && *env != '\0' ? env : "127.0.0.1:7070";
  }

  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(
          grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::printf("%s: health check failed: %s (code %d)\n", addr.c_str(),
                status.error_message().c_str(),
                static_cast<int>(status.error_code()));
    return 1;
  }
  const std::string answer =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
          response.status());
  std::printf("%s: %s\n", addr.c_str(), answer.c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING
             ? 0
             : 1;
}
