// The CPU optimizer in spilld, as a client sees it: optimizer groups and the
// outcome of a step. Plain C++ (no gRPC or protobuf types), like object.h.
//
// A group is a set of members, each a parameter shard and the gradient shard
// that updates it. spilld keeps each member's fp32 master weights and
// optimizer states (objects of the job it creates) and runs the step:
//
//   GroupSpec spec;
//   spec.name = "layer3";
//   spec.params.type = OptimizerType::kAdamW;
//   spec.params.lr = 1e-4f;
//   spec.params.weight_decay = 0.01f;
//   spec.members.push_back({param->object_id, grad->object_id});
//   absl::StatusOr<GroupInfo> group = session->CreateGroup(spec);
//   ...  // backward: copy the gradient shard D2H into the grad object, then
//   double sq = session->GradReady(group->group_id, grad->object_id, step, 0)
//                   ->Get().value().sum_squares;  (see Work::sum_squares)
//   ...  // all-reduce the sums of squares; clip = min(1, max_norm / norm)
//   session->OptimizerStep(group->group_id, step, lr, clip / loss_scale, overflow);
//
// Clipping by the global norm needs every member's sum of squares on every
// rank first (one all-reduce of the sum); a group may step as soon as its own
// gradients are complete when no clipping is used.
#ifndef SPILL_CLIENT_OPTIMIZER_H_
#define SPILL_CLIENT_OPTIMIZER_H_

#include <cstdint>
#include <string>
#include <vector>

namespace spill::client {

// The values are spill.v1.OptimizerType's.
enum class OptimizerType : int { kAdamW = 1, kAdam = 2, kAdagrad = 3, kLion = 4, kSgd = 5 };

// torch.optim's meaning for each field (spilld's server/optim/README.md has
// the math). kAdam applies weight decay as L2, kAdamW decoupled.
struct OptimizerParams {
  OptimizerType type = OptimizerType::kAdamW;
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  bool bias_correction = true;
  float momentum = 0.0f;   // SGD
  float dampening = 0.0f;  // SGD
  bool nesterov = false;   // SGD
  float initial_accumulator_value = 0.0f;  // Adagrad
};

struct GroupMemberSpec {
  uint64_t param_object_id = 0;
  uint64_t grad_object_id = 0;
};

struct GroupSpec {
  std::string name;  // Unique within the job.
  OptimizerParams params;
  // Micro-steps whose gradients spilld sums (in fp32) before a step.
  uint32_t gradient_accumulation_steps = 1;
  std::vector<GroupMemberSpec> members;
  // Keep master and states on spilld's NVMe tier (offload_optimizer.device
  // = nvme), streamed through pinned buffers in pieces of sub_group_size
  // elements during each step. FailedPrecondition when spilld has no NVMe
  // tier. 0 means spilld's default.
  bool states_on_nvme = false;
  uint64_t sub_group_size = 0;
  // Resuming from a checkpoint: the next step is resume_step + 1, and
  // resume_applied_steps steps were applied to the states the worker then
  // writes into the master and state objects, or imports with
  // Session::CopyGroupState (states_on_nvme groups); bias correction counts
  // them.
  // InvalidArgument when resume_applied_steps > resume_step.
  uint64_t resume_step = 0;
  uint64_t resume_applied_steps = 0;
};

struct GroupMember {
  uint64_t param_object_id = 0;
  uint64_t grad_object_id = 0;
  uint64_t master_object_id = 0;              // fp32 master weights
  std::vector<uint64_t> state_object_ids;     // fp32 optimizer states
  uint64_t accumulator_object_id = 0;         // fp32; 0 without accumulation
  uint64_t num_elements = 0;
  uint64_t nvme_bytes = 0;  // master and states on NVMe (states_on_nvme)
};

struct GroupInfo {
  uint64_t group_id = 0;
  std::string name;
  OptimizerParams params;
  uint32_t gradient_accumulation_steps = 1;
  std::vector<GroupMember> members;
  uint64_t last_step = 0;     // The last step applied or skipped.
  uint64_t applied_steps = 0;
  bool states_on_nvme = false;
  uint64_t sub_group_size = 0;
  // CreateGroup found the group already defined (a re-attaching worker).
  bool existed = false;
};

// Direction of Session::CopyGroupState.
enum class GroupStateDirection : int {
  kExport = 1,  // The member's master and states -> the caller's objects.
  kImport = 2,  // The caller's objects -> the member's master and states.
};

struct StepOutcome {
  uint64_t step = 0;
  bool applied = false;
  bool skipped = false;
  // The step had been recorded before; this repeats its outcome.
  bool repeated = false;
  uint64_t applied_steps = 0;
  double seconds = 0;  // spilld's time for the optimizer pass.
  // SpeculativeOptimizerStep: run, waiting for its commit.
  bool speculative = false;
  // CommitOptimizerStep: the step was rescaled to the committed grad_scale.
  bool rescaled = false;
};

}  // namespace spill::client

#endif  // SPILL_CLIENT_OPTIMIZER_H_
