// Parts of the collectives shared by every implementation.
#include "worker/collectives.h"

#include <sstream>

#include "absl/strings/str_cat.h"

namespace spill::worker {
namespace {

class DoneWork final : public Work {
 public:
  explicit DoneWork(absl::Status status) : status_(std::move(status)) {}
  bool IsCompleted() override { return true; }
  absl::Status Wait(std::chrono::milliseconds) override { return status_; }

 private:
  absl::Status status_;
};

std::string Describe(const at::Tensor& t) {
  std::ostringstream out;
  out << t.scalar_type() << "[" << t.numel() << "] on " << t.device();
  return out.str();
}

absl::Status CheckPair(const char* what, const at::Tensor& big, const at::Tensor& small,
                       int world) {
  if (!big.defined() || !small.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": undefined tensor"));
  }
  if (!big.is_contiguous() || !small.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": tensors must be contiguous"));
  }
  if (big.scalar_type() != small.scalar_type() || big.device() != small.device() ||
      big.numel() != small.numel() * world) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the full tensor (", Describe(big),
                     ") must have world_size (", world, ") times the elements of the shard (",
                     Describe(small), "), same dtype and device"));
  }
  return absl::OkStatus();
}

}  // namespace

std::shared_ptr<Work> CompletedWork(absl::Status status) {
  return std::make_shared<DoneWork>(std::move(status));
}

absl::Status CheckAllGatherArgs(const at::Tensor& output, const at::Tensor& input, int world) {
  return CheckPair("AllGather", output, input, world);
}

absl::Status CheckReduceScatterArgs(const at::Tensor& output, const at::Tensor& input,
                                    int world) {
  return CheckPair("ReduceScatter", input, output, world);
}

bool FaultyCollectives::Fail() {
  int n = fail_next.load();
  while (n > 0) {
    if (fail_next.compare_exchange_weak(n, n - 1)) return true;
  }
  return false;
}

static absl::Status Injected() { return absl::UnavailableError("injected fault"); }

std::shared_ptr<Work> FaultyCollectives::AllGather(const at::Tensor& output,
                                                   const at::Tensor& input) {
  if (Fail()) return CompletedWork(Injected());
  return inner_->AllGather(output, input);
}

std::shared_ptr<Work> FaultyCollectives::ReduceScatter(const at::Tensor& output,
                                                       const at::Tensor& input, ReduceOp op,
                                                       std::optional<at::ScalarType> comm) {
  if (Fail()) return CompletedWork(Injected());
  return inner_->ReduceScatter(output, input, op, comm);
}

std::shared_ptr<Work> FaultyCollectives::AllReduce(const at::Tensor& tensor, ReduceOp op) {
  if (Fail()) return CompletedWork(Injected());
  return inner_->AllReduce(tensor, op);
}

std::shared_ptr<Work> FaultyCollectives::Broadcast(const at::Tensor& tensor, int root) {
  if (Fail()) return CompletedWork(Injected());
  return inner_->Broadcast(tensor, root);
}

absl::Status FaultyCollectives::Barrier(std::chrono::milliseconds timeout) {
  if (Fail()) return Injected();
  return inner_->Barrier(timeout);
}

}  // namespace spill::worker
