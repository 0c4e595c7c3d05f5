// server/src/reflection.h — answers gRPC server reflection requests
// (grpc.reflection.v1alpha.ServerReflection), as grpcurl and grpc_cli send
// them, from the descriptors compiled into the broker.
//
// The broker serves the reflection stream itself (SessionCall's neighbour
// ReflectionCall in service.cc) instead of through gRPC's reflection plugin,
// whose synchronous service has threads of its own that would wait in gRPC
// and poll the broker's sockets in turn with its polling threads.
//
// Thread safety: a pure function of its arguments and the generated
// descriptor pool; any thread.
#ifndef DCHAN_SERVER_REFLECTION_H_
#define DCHAN_SERVER_REFLECTION_H_

#include <string>

#include "absl/types/span.h"
#include "grpc/reflection/v1alpha/reflection.pb.h"

namespace dchan::server {

// The answer to `request` from a server that serves `services` (full
// names, e.g. "dchan.v1.Broker"):
//   - list_services: those names;
//   - file_by_filename, file_containing_symbol, file_containing_extension:
//     the file's FileDescriptorProto, then those of the files it imports,
//     transitively, each once;
//   - all_extension_numbers_of_type: the type's extension numbers;
// and otherwise an error_response: NOT_FOUND for a name the descriptor pool
// lacks, INVALID_ARGUMENT for a request that asks nothing.
grpc::reflection::v1alpha::ServerReflectionResponse answer_reflection(
    const grpc::reflection::v1alpha::ServerReflectionRequest& request,
    absl::Span<const std::string> services);

}  // namespace dchan::server

#endif  // DCHAN_SERVER_REFLECTION_H_
