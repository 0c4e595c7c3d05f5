#include "reflection.h"

#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpcpp/support/status.h"

namespace dchan::server {
namespace {

namespace refl = grpc::reflection::v1alpha;
using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;

void set_error(refl::ServerReflectionResponse& response, grpc::StatusCode code,
               std::string message) {
  refl::ErrorResponse* error = response.mutable_error_response();
  error->set_error_code(static_cast<int32_t>(code));
  error->set_error_message(std::move(message));
}

// `file`, then the files it imports, transitively, each once.
void add_files(refl::ServerReflectionResponse& response,
               const FileDescriptor* file) {
  absl::flat_hash_set<const FileDescriptor*> seen;
  std::vector<const FileDescriptor*> todo = {file};
  refl::FileDescriptorResponse* out =
      response.mutable_file_descriptor_response();
  while (!todo.empty()) {
    const FileDescriptor* f = todo.back();
    todo.pop_back();
    if (!seen.insert(f).second) continue;
    google::protobuf::FileDescriptorProto proto;
    f->CopyTo(&proto);
    proto.SerializeToString(out->add_file_descriptor_proto());
    for (int i = f->dependency_count() - 1; i >= 0; --i) {
      todo.push_back(f->dependency(i));
    }
  }
}

}  // namespace

refl::ServerReflectionResponse answer_reflection(
    const refl::ServerReflectionRequest& request,
    absl::Span<const std::string> services) {
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  refl::ServerReflectionResponse response;
  response.set_valid_host(request.host());
  *response.mutable_original_request() = request;
  switch (request.message_request_case()) {
    case refl::ServerReflectionRequest::kListServices:
      for (const std::string& name : services) {
        response.mutable_list_services_response()->add_service()->set_name(
            name);
      }
      break;
    case refl::ServerReflectionRequest::kFileByFilename: {
      const FileDescriptor* f =
          pool->FindFileByName(request.file_by_filename());
      if (f == nullptr) {
        set_error(response, grpc::StatusCode::NOT_FOUND,
                  absl::StrCat("no file \"", request.file_by_filename(), "\""));
      } else {
        add_files(response, f);
      }
      break;
    }
    case refl::ServerReflectionRequest::kFileContainingSymbol: {
      const FileDescriptor* f =
          pool->FindFileContainingSymbol(request.file_containing_symbol());
      if (f == nullptr) {
        set_error(response, grpc::StatusCode::NOT_FOUND,
                  absl::StrCat("no symbol \"", request.file_containing_symbol(),
                               "\""));
      } else {
        add_files(response, f);
      }
      break;
    }
    case refl::ServerReflectionRequest::kFileContainingExtension: {
      const refl::ExtensionRequest& ext = request.file_containing_extension();
      const google::protobuf::Descriptor* type =
          pool->FindMessageTypeByName(ext.containing_type());
      const google::protobuf::FieldDescriptor* field =
          type == nullptr
              ? nullptr
              : pool->FindExtensionByNumber(type, ext.extension_number());
      if (field == nullptr) {
        set_error(response, grpc::StatusCode::NOT_FOUND,
                  absl::StrCat("no extension ", ext.extension_number(),
                               " of \"", ext.containing_type(), "\""));
      } else {
        add_files(response, field->file());
      }
      break;
    }
    case refl::ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const google::protobuf::Descriptor* type =
          pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        set_error(response, grpc::StatusCode::NOT_FOUND,
                  absl::StrCat("no type \"",
                               request.all_extension_numbers_of_type(), "\""));
        break;
      }
      std::vector<const google::protobuf::FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      refl::ExtensionNumberResponse* out =
          response.mutable_all_extension_numbers_response();
      out->set_base_type_name(type->full_name());
      for (const auto* e : extensions) out->add_extension_number(e->number());
      break;
    }
    case refl::ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
      set_error(response, grpc::StatusCode::INVALID_ARGUMENT,
                "the request asks for nothing (no message_request set)");
      break;
  }
  return response;
}

}  // namespace dchan::server
