// The public headers must compile without gRPC or protobuf (training
// processes compile them with LibTorch's older protobuf headers on the
// include path). This file includes nothing else of ours.
#include <spill/client.h>

#include <gtest/gtest.h>

#if defined(GOOGLE_PROTOBUF_VERSION) || defined(GRPCPP_GRPCPP_H) || defined(GRPC_GRPC_H)
#error "spill/client.h must not pull in protobuf or gRPC headers"
#endif

namespace {

// A Session for tests of code built on the client can derive from Session.
class NullSession final : public spill::client::Session {
 public:
  const spill::client::SessionOptions& options() const override { return options_; }
  uint64_t session_id() const override { return 1; }
  bool job_existed() const override { return false; }
  uint64_t alignment_bytes() const override { return 64; }
  using spill::client::Session::Acquire;
  using spill::client::Session::Register;
  absl::StatusOr<spill::client::ObjectInfo> Register(const std::string&, spill::client::ObjectKind,
                                                     spill::client::DType, int64_t,
                                                     spill::client::ObjectHome) override {
    return absl::UnimplementedError("null");
  }
  absl::Status Flush() override { return absl::UnimplementedError("null"); }
  absl::Status Free(uint64_t) override { return absl::UnimplementedError("null"); }
  absl::StatusOr<std::vector<spill::client::ObjectInfo>> List() override {
    return std::vector<spill::client::ObjectInfo>();
  }
  std::shared_ptr<spill::client::Work> Acquire(uint64_t, bool) override { return nullptr; }
  std::shared_ptr<spill::client::Work> Prefetch(uint64_t) override { return nullptr; }
  std::shared_ptr<spill::client::Work> SetAccessOrder(std::vector<uint64_t>) override {
    return nullptr;
  }
  std::shared_ptr<spill::client::Work> Release(uint64_t) override { return nullptr; }
  std::shared_ptr<spill::client::Work> WriteBack(uint64_t, uint64_t) override { return nullptr; }
  std::shared_ptr<spill::client::Work> Ping() override { return nullptr; }
  absl::StatusOr<spill::client::GroupInfo> CreateGroup(const spill::client::GroupSpec&) override {
    return absl::UnimplementedError("null");
  }
  absl::Status DropGroup(uint64_t) override { return absl::UnimplementedError("null"); }
  absl::StatusOr<std::vector<spill::client::GroupInfo>> ListGroups() override {
    return std::vector<spill::client::GroupInfo>();
  }
  absl::Status CopyGroupState(uint64_t, uint32_t, spill::client::GroupStateDirection,
                              const std::vector<uint64_t>&) override {
    return absl::OkStatus();
  }
  std::shared_ptr<spill::client::Work> GradReady(uint64_t, uint64_t, uint64_t, uint32_t) override {
    return nullptr;
  }
  std::shared_ptr<spill::client::Work> GradReadySummed(uint64_t, uint64_t, uint64_t,
                                                       double) override {
    return nullptr;
  }
  std::shared_ptr<spill::client::Work> OptimizerStep(uint64_t, uint64_t, float, float,
                                                     bool) override {
    return nullptr;
  }
  std::shared_ptr<spill::client::Work> SpeculativeOptimizerStep(uint64_t, uint64_t, float,
                                                                float) override {
    return nullptr;
  }
  std::shared_ptr<spill::client::Work> CommitOptimizerStep(uint64_t, uint64_t, float) override {
    return nullptr;
  }
  absl::StatusOr<absl::Span<uint8_t>> Bytes(const spill::client::ObjectInfo& object) override {
    return absl::Span<uint8_t>(buffer_, object.byte_size());
  }
  spill::client::MappingStats mapping_stats() const override { return {}; }
  absl::Status Close() override { return absl::OkStatus(); }

 private:
  spill::client::SessionOptions options_;
  alignas(64) uint8_t buffer_[256] = {};
};

TEST(PublicHeaderTest, DataViewsBytesThroughTheVirtualInterface) {
  NullSession session;
  spill::client::ObjectInfo object;
  object.dtype = spill::client::DType::kFloat32;
  object.num_elements = 8;
  absl::StatusOr<absl::Span<float>> data = session.Data<float>(object);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->size(), 8u);
  EXPECT_FALSE(session.Data<uint16_t>(object).ok());
}

}  // namespace
