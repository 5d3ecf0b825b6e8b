// GrpcSession: the Session that talks to a real spilld (see spill/client.h
// for the contract; this file is about how).
//
// Threads: the session stream is a StreamDriver (client/stream_driver.h):
// threads waiting on Works drive it, a background thread when none does;
// answers complete Works by tag. Close is serialised by close_mu_;
// state_mu_ guards the open/broken/closed state.
#ifndef SPILL_CLIENT_GRPC_SESSION_H_
#define SPILL_CLIENT_GRPC_SESSION_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>

#include "client/fd_channel.h"
#include "client/segment_map.h"
#include "client/stream_driver.h"
#include "client/work_table.h"
#include "spill/client.h"
#include "spill/v1/spill.grpc.pb.h"

namespace spill::client::internal {

// Control messages are small; bulk data never goes over gRPC. A list of
// every object of a big job is the largest answer (about 100 bytes each).
inline constexpr int kMaxSendMessageBytes = 64 << 10;
inline constexpr int kMaxReceiveMessageBytes = 256 << 20;  // spilld caps answers here too.

class GrpcSession final : public Session {
 public:
  // options must have passed ValidateSessionOptions, with socket_path set.
  static absl::StatusOr<std::unique_ptr<Session>> Open(SessionOptions options);
  ~GrpcSession() override;

  const SessionOptions& options() const override { return options_; }
  uint64_t session_id() const override { return ref_.session_id(); }
  bool job_existed() const override { return job_existed_; }
  uint64_t alignment_bytes() const override { return alignment_bytes_; }

  using Session::Acquire;
  using Session::Register;
  absl::StatusOr<ObjectInfo> Register(const std::string& name, ObjectKind kind, DType dtype,
                                      int64_t num_elements, ObjectHome home) override;
  absl::Status Flush() override;
  absl::Status Free(uint64_t object_id) override;
  absl::StatusOr<std::vector<ObjectInfo>> List() override;

  std::shared_ptr<Work> Acquire(uint64_t object_id, bool for_write) override;
  std::shared_ptr<Work> Prefetch(uint64_t object_id) override;
  std::shared_ptr<Work> SetAccessOrder(std::vector<uint64_t> object_ids) override;
  std::shared_ptr<Work> Release(uint64_t object_id) override;
  std::shared_ptr<Work> WriteBack(uint64_t object_id, uint64_t version) override;
  std::shared_ptr<Work> Ping() override;

  absl::StatusOr<GroupInfo> CreateGroup(const GroupSpec& spec) override;
  absl::Status DropGroup(uint64_t group_id) override;
  absl::StatusOr<std::vector<GroupInfo>> ListGroups() override;
  absl::Status CopyGroupState(uint64_t group_id, uint32_t member_index,
                              GroupStateDirection direction,
                              const std::vector<uint64_t>& object_ids) override;
  std::shared_ptr<Work> GradReadySummed(uint64_t group_id, uint64_t grad_object_id,
                                        uint64_t step, double sum_squares) override;
  std::shared_ptr<Work> GradReady(uint64_t group_id, uint64_t grad_object_id, uint64_t step,
                                  uint32_t micro_step) override;
  std::shared_ptr<Work> OptimizerStep(uint64_t group_id, uint64_t step, float lr,
                                      float grad_scale, bool skip) override;
  std::shared_ptr<Work> SpeculativeOptimizerStep(uint64_t group_id, uint64_t step, float lr,
                                                 float predicted_grad_scale) override;
  std::shared_ptr<Work> CommitOptimizerStep(uint64_t group_id, uint64_t step,
                                            float grad_scale) override;

  absl::StatusOr<absl::Span<uint8_t>> Bytes(const ObjectInfo& object) override;
  MappingStats mapping_stats() const override;
  absl::Status Close() override;

 private:
  enum class State { kOpen, kBroken, kClosed };

  explicit GrpcSession(SessionOptions options);

  absl::Status OpenSessionRpc();
  absl::Status AttachStream();
  absl::Status OpenFdChannel();

  // Sends request (its tag filled in) as a new Work; fails the Work instead
  // when the session is not usable or the write fails.
  std::shared_ptr<Work> Submit(WorkOp op, uint64_t object_id, v1::StreamRequest request);
  void OnEvent(const v1::StreamEvent& event);
  void OnStreamEnded(const grpc::Status& status);

  // OK while open; FailedPrecondition once closed; the Unavailable status of
  // the lost stream once broken.
  absl::Status Usable() const;
  absl::Status RpcError(const char* method, const grpc::Status& status) const;
  void SetDeadline(grpc::ClientContext* context) const;

  const SessionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Worker::Stub> stub_;
  v1::SessionRef ref_;
  bool opened_ = false;  // OpenSession succeeded: Close must tell spilld.
  bool job_existed_ = false;
  uint64_t alignment_bytes_ = 0;

  WorkTable works_;
  std::shared_ptr<StreamDriver> stream_;

  std::mutex close_mu_;
  mutable std::mutex state_mu_;
  State state_ = State::kOpen;    // Guarded by state_mu_.
  absl::Status broken_status_;    // Guarded by state_mu_.

  std::unique_ptr<FdChannel> fd_channel_;
  std::unique_ptr<SegmentMap> segments_;
};

}  // namespace spill::client::internal

#endif  // SPILL_CLIENT_GRPC_SESSION_H_
