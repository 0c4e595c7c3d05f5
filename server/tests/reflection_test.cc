#include "reflection.h"

#include <string>
#include <vector>

#include "dchan/v1/broker.pb.h"
#include "dchan/v1/inspect.pb.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpcpp/support/status.h"
#include "gtest/gtest.h"

namespace dchan::server {
namespace {

namespace refl = grpc::reflection::v1alpha;

const std::vector<std::string> kServices = {"dchan.v1.Broker",
                                            "dchan.v1.Inspect"};

// answer_reflection(r, kServices). The descriptor pool holds the files
// whose generated code is linked in; the broker's is, since it serves those
// services, and this test's is because of the references here.
refl::ServerReflectionResponse ask(const refl::ServerReflectionRequest& r) {
  EXPECT_NE(v1::ClientBatch::descriptor(), nullptr);
  EXPECT_NE(v1::ListSessionsRequest::descriptor(), nullptr);
  return answer_reflection(r, kServices);
}

// The file names of a file_descriptor_response, in order.
std::vector<std::string> file_names(const refl::ServerReflectionResponse& r) {
  std::vector<std::string> names;
  for (const std::string& bytes :
       r.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    EXPECT_TRUE(file.ParseFromString(bytes));
    names.push_back(file.name());
  }
  return names;
}

TEST(Reflection, ListServicesNamesTheServedServices) {
  refl::ServerReflectionRequest request;
  request.set_host("broker");
  request.set_list_services("");
  const refl::ServerReflectionResponse r = ask(request);
  EXPECT_EQ(r.valid_host(), "broker");
  EXPECT_EQ(r.original_request().list_services(), "");
  ASSERT_EQ(r.list_services_response().service_size(), 2);
  EXPECT_EQ(r.list_services_response().service(0).name(), "dchan.v1.Broker");
  EXPECT_EQ(r.list_services_response().service(1).name(), "dchan.v1.Inspect");
}

// broker.proto imports nothing: it comes alone.
TEST(Reflection, FileContainingAMessageIsItsFile) {
  refl::ServerReflectionRequest request;
  request.set_file_containing_symbol("dchan.v1.ClientBatch");
  const refl::ServerReflectionResponse r = ask(request);
  ASSERT_FALSE(r.has_error_response()) << r.error_response().error_message();
  EXPECT_EQ(file_names(r), std::vector<std::string>{"dchan/v1/broker.proto"});
}

// inspect.proto imports broker.proto: both come, the file asked for first.
TEST(Reflection, FileByNameAndByMethodSymbolComeWithTheirImports) {
  const std::vector<std::string> expected = {"dchan/v1/inspect.proto",
                                             "dchan/v1/broker.proto"};
  refl::ServerReflectionRequest by_name;
  by_name.set_file_by_filename("dchan/v1/inspect.proto");
  EXPECT_EQ(file_names(ask(by_name)), expected);
  refl::ServerReflectionRequest by_method;
  by_method.set_file_containing_symbol("dchan.v1.Inspect.ListSessions");
  EXPECT_EQ(file_names(ask(by_method)), expected);
}

TEST(Reflection, UnknownNamesAreNotFoundErrors) {
  refl::ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("dchan.v1.NoSuchThing");
  refl::ServerReflectionRequest file;
  file.set_file_by_filename("no/such.proto");
  refl::ServerReflectionRequest type;
  type.set_all_extension_numbers_of_type("no.such.Type");
  refl::ServerReflectionRequest extension;
  extension.mutable_file_containing_extension()->set_containing_type(
      "dchan.v1.ClientBatch");
  extension.mutable_file_containing_extension()->set_extension_number(100);
  for (const auto& request : {symbol, file, type, extension}) {
    const refl::ServerReflectionResponse r = ask(request);
    ASSERT_TRUE(r.has_error_response()) << request.DebugString();
    EXPECT_EQ(r.error_response().error_code(),
              static_cast<int>(grpc::StatusCode::NOT_FOUND));
    EXPECT_FALSE(r.error_response().error_message().empty());
  }
}

TEST(Reflection, ExtensionNumbersOfATypeWithoutExtensionsAreNone) {
  refl::ServerReflectionRequest request;
  request.set_all_extension_numbers_of_type("dchan.v1.ClientBatch");
  const refl::ServerReflectionResponse r = ask(request);
  ASSERT_TRUE(r.has_all_extension_numbers_response());
  EXPECT_EQ(r.all_extension_numbers_response().base_type_name(),
            "dchan.v1.ClientBatch");
  EXPECT_EQ(r.all_extension_numbers_response().extension_number_size(), 0);
}

TEST(Reflection, ARequestThatAsksNothingIsInvalid) {
  const refl::ServerReflectionResponse r = ask(refl::ServerReflectionRequest());
  ASSERT_TRUE(r.has_error_response());
  EXPECT_EQ(r.error_response().error_code(),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
}

}  // namespace
}  // namespace dchan::server
