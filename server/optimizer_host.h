// OptimizerHost: the CPU optimizer inside spilld, over a job's objects.
//
// A worker defines optimizer groups: a set of members, each a parameter
// shard and the gradient shard that updates it (objects it registered).
// CreateGroup allocates, as objects of the same job, each member's fp32
// master (initialised from the parameter shard's current bytes), the
// optimizer's fp32 states and, when the group accumulates gradients over
// micro-steps, an fp32 accumulator. Then, per step:
//
//   for each micro-step k, for each member:  GradReady(group, grad, step, k)
//       -> sum of squares of the member's gradient so far (one fused pass)
//   Step(group, step, lr, grad_scale, skip)
//       -> one fused pass per member: unscale/clip, update master and
//          states, write the new parameter into the parameter shard.
//
// Homes. A member's parameter shard may have home PINNED or NVME
// (offload_param.device = nvme); its gradient must have home PINNED, and
// the master, states and accumulators spilld creates are PINNED (or
// streamed from NVMe for states_on_nvme groups). Group creation reads an
// NVMe-homed parameter and each Step writes it through the TierManager:
// acquired (for write; read back from NVMe when evicted), stepped, marked
// written at the step's version (dirty, written back to NVMe
// asynchronously, as after a client's WriteBack) and released, so a client
// that acquires it afterwards, even after an eviction, reads the stepped
// values. A step acquires all of its group's NVMe parameters at once, so
// they must fit the job's param budget together (buffer_count and
// max_in_cpu); a failed or late acquire fails the step with the
// TierManager's status (naming the parameter) before any byte changes.
//
// Exactly once: a group records its last step; a Step for it again is
// answered with the recorded outcome (repeated = true) and not re-run, so a
// worker that reconnects and resends cannot apply a step twice. A Step is
// validated in full (every member's gradient complete and finite, every
// object present and pinned) before any byte changes, so it is applied to
// all members or to none.
//
// Thread-safe. GradReady and Step run the optimizer kernels on the calling
// thread plus the host's executor (at most threads_per_job threads per
// call), so call them from a compute thread, never from a gRPC reactor.
// Calls on one group are serialised; calls on different groups run in
// parallel.
#ifndef SPILL_SERVER_OPTIMIZER_HOST_H_
#define SPILL_SERVER_OPTIMIZER_HOST_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/busy_clock.h"
#include "server/optim/executor.h"
#include "server/optim/optimizer.h"
#include "server/registry.h"
#include "storage/nvme_tier.h"

namespace spill::server {

struct OptimizerHostOptions {
  // Threads of the optimizer's executor; 0 means one per CPU.
  uint32_t threads = 0;
  // The most threads one job's step may use at once; 0 means all.
  uint32_t threads_per_job = 0;
  // Nice value of the executor's threads (0..19); see ServerConfig::optim_nice.
  int nice = 0;
  uint32_t max_groups_per_job = 1u << 16;
  uint32_t max_members_per_group = 1u << 16;
  uint32_t max_name_bytes = 256;
  // The NVMe tier for groups that keep their states there; nullptr when
  // spilld runs without one.
  storage::NvmeTier* nvme = nullptr;
  // How long a group's creation or step waits for its NVMe-homed parameters
  // to become resident (read back from NVMe, a write-back of them to end,
  // room under the job's param budget) before it fails with
  // DeadlineExceeded.
  std::chrono::milliseconds param_timeout{60'000};
};

struct GroupMemberSpec {
  uint64_t param_object_id = 0;
  uint64_t grad_object_id = 0;
};

struct GroupSpec {
  std::string name;
  optim::Hyper hyper;
  uint32_t gradient_accumulation_steps = 1;
  std::vector<GroupMemberSpec> members;
  // Keep master and states on NVMe (offload_optimizer.device = nvme) and
  // stream them through pinned buffers in pieces of sub_group_size elements
  // (rounded up to a multiple of 1024) during each step.
  bool states_on_nvme = false;
  uint64_t sub_group_size = uint64_t{1} << 24;
  // Resuming from a checkpoint: last_step and applied_steps start here.
  uint64_t resume_step = 0;
  uint64_t resume_applied_steps = 0;
};

struct GroupMemberInfo {
  uint64_t param_object_id = 0;
  uint64_t grad_object_id = 0;
  uint64_t master_object_id = 0;
  std::vector<uint64_t> state_object_ids;
  uint64_t accumulator_object_id = 0;  // 0 without accumulation.
  uint64_t num_elements = 0;
  // NVMe bytes holding master and states (states_on_nvme); the master and
  // state object ids are then 0 / empty.
  uint64_t nvme_bytes = 0;
};

struct GroupInfo {
  uint64_t group_id = 0;
  std::string name;
  optim::Hyper hyper;
  uint32_t gradient_accumulation_steps = 1;
  std::vector<GroupMemberInfo> members;
  uint64_t last_step = 0;
  uint64_t applied_steps = 0;
  bool states_on_nvme = false;
  uint64_t sub_group_size = 0;
};

struct StepOutcome {
  uint64_t step = 0;
  bool applied = false;
  bool skipped = false;
  bool repeated = false;
  uint64_t applied_steps = 0;
  double seconds = 0;
  bool speculative = false;  // Run speculatively, not yet committed.
  bool rescaled = false;     // Committed with another grad_scale than it ran with.
};

// How Step runs a step (spill.v1.StepMode; see Step).
enum class StepMode {
  kFinal,        // With its grad_scale, final.
  kSpeculative,  // With a predicted grad_scale; the group waits for kCommit.
  kCommit,       // Ends a speculative step with the right grad_scale.
};

// Direction of OptimizerHost::CopyState.
enum class StateCopy {
  kExport,  // The member's master and states -> the caller's objects.
  kImport,  // The caller's objects -> the member's master and states.
};

struct OptimizerStats {
  uint64_t steps_applied = 0;
  uint64_t steps_skipped = 0;
  uint64_t steps_repeated = 0;
  uint64_t steps_speculative = 0;  // Applied speculatively (also in steps_applied).
  uint64_t steps_committed = 0;    // Speculative steps committed, rescaled or not.
  uint64_t steps_rescaled = 0;     // Of those, committed with another grad_scale.
  double rescale_seconds = 0;      // Sum over the rescaling passes.
  uint64_t grad_ready = 0;
  double step_seconds = 0;       // Sum over applied steps.
  double grad_ready_seconds = 0;  // Sum over GradReady passes.
  // Wall time with at least one step or GradReady pass running (overlapping
  // ones counted once): busy / elapsed is how much of the time the CPU
  // optimizer had work.
  double busy_seconds = 0;
  uint64_t elements_stepped = 0;  // Sum of member elements over applied steps.
  uint32_t groups = 0;
};

class OptimizerHost {
 public:
  // registry must outlive the host. Registers itself as the registry's
  // job-freed listener, so a job's groups go when its objects do.
  OptimizerHost(Registry* registry, OptimizerHostOptions options);
  ~OptimizerHost();
  OptimizerHost(const OptimizerHost&) = delete;
  OptimizerHost& operator=(const OptimizerHost&) = delete;

  // Creates a group (see above). Returns it and whether it already existed:
  // a group of that name with the same definition is returned as is (a
  // restarted worker re-attaching); with another definition it is
  // AlreadyExists naming what differs. InvalidArgument for a bad name,
  // hyper-parameter, accumulation count, member count, unsupported dtype or
  // mismatched element counts (naming the member); NotFound for an unknown
  // object; FailedPrecondition for an object already in a group;
  // ResourceExhausted past the job's quota. Nothing is left behind on error.
  absl::StatusOr<std::pair<GroupInfo, bool>> CreateGroup(uint64_t session_id, const Token& token,
                                                         const GroupSpec& spec);
  // Frees the group's master, states and accumulators (waits for a running
  // step of the group). NotFound for an unknown group.
  absl::Status DropGroup(uint64_t session_id, const Token& token, uint64_t group_id);
  absl::StatusOr<std::vector<GroupInfo>> ListGroups(uint64_t session_id, const Token& token);

  // Stream operations (the session's stream is attached). See the overview
  // and spill.v1.GradReady / OptimizerStep for the semantics.
  // GradReady: FailedPrecondition for a step other than the group's next, a
  // micro-step out of order, or a step already applied; InvalidArgument for
  // micro_step >= the accumulation count; NotFound for an unknown group or
  // a grad object that is not a member's. client_sum_squares (groups
  // without accumulation; InvalidArgument otherwise): the caller's sum of
  // squares of the shard, recorded instead of a pass over it.
  absl::StatusOr<double> GradReady(uint64_t session_id, uint64_t group_id,
                                   uint64_t grad_object_id, uint64_t step, uint32_t micro_step,
                                   std::optional<double> client_sum_squares = std::nullopt);
  // Step: FailedPrecondition for a step past the next one, an incomplete
  // gradient (naming the member and the micro-steps received), or a
  // repeated step older than the recorded history; InvalidArgument for a
  // non-finite or negative lr, a non-finite or non-positive grad_scale, or
  // a non-finite gradient in a step not flagged skip (naming the member).
  //
  // mode kSpeculative runs the step as kFinal would, with grad_scale a
  // prediction, and leaves the group pending: GradReady for the next step,
  // any other Step and CopyState are FailedPrecondition until a kCommit of
  // the same step ends it. kCommit with the grad_scale the step ran with
  // changes nothing; with another it rescales the step (optim::Rescale)
  // under the step's lr, so the group holds what kFinal with that
  // grad_scale would have left (to rounding, see optim::Rescale). A failed
  // rescale (a parameter that cannot be pinned) leaves the step pending for
  // another kCommit. kSpeculative needs a Rescalable optimizer and pinned
  // states (FailedPrecondition naming what is not); skip with either mode
  // is InvalidArgument; kCommit of a step that is not pending answers the
  // step's recorded outcome with repeated = true, or FailedPrecondition
  // when there is none.
  absl::StatusOr<StepOutcome> Step(uint64_t session_id, uint64_t group_id, uint64_t step,
                                   float lr, float grad_scale, bool skip,
                                   StepMode mode = StepMode::kFinal);
  // Step's kCommit when it costs nothing and waits for nothing: the step is
  // pending with exactly this grad_scale and the group's lock is free. Then
  // it commits and returns the outcome; otherwise it changes nothing and
  // returns nullopt (the caller sends the request through Step). Never
  // blocks, so a gRPC reactor may call it.
  std::optional<StepOutcome> TryCommitAsRun(uint64_t session_id, uint64_t group_id,
                                            uint64_t step, float grad_scale);

  // Checkpoint / restore of member `member_index`'s fp32 master and
  // optimizer states: object_ids are objects of the session's job, the
  // master's first, then one per state (GroupMemberInfo::state_object_ids
  // order; Adam: exp_avg, exp_avg_sq), each fp32, home PINNED and exactly
  // the member's num_elements. kExport copies the member's values into
  // them; kImport makes their values the member's. Works for states_on_nvme
  // groups (pieces read from / written to the member's NvmeStateStore
  // through a 4 KiB aligned staging buffer of at most (1 + states) *
  // sub_group_size floats) and for pinned groups (a copy from / to the
  // master and state objects). Holds the group's lock for the whole copy;
  // the group's step counters and gradient progress do not change.
  //
  // All or nothing. kImport on an NVMe group writes every piece to shadow
  // extents and commits them only when all were written (else aborts: the
  // old state stays). kExport restores the objects' previous bytes when a
  // read fails (this costs a heap copy of what it overwrote).
  //
  // Errors, each changing nothing: Unauthenticated / NotFound for a bad
  // session; NotFound for an unknown (or dropped) group, a member_index out
  // of range, or an object id the job does not have (an object of another
  // job included); InvalidArgument for an unspecified direction, the wrong
  // number of objects, an object named twice, an object that is a group's
  // parameter or gradient shard, or an object whose dtype is not fp32 or
  // whose element count is not the member's (naming the object and the
  // expected count); FailedPrecondition for an object with home NVME;
  // ResourceExhausted when no staging buffer or NVMe room for the shadow
  // extents is available; the NVMe tier's status for a failed read or
  // write (DataLoss for a CRC mismatch), naming the member and the piece.
  absl::Status CopyState(uint64_t session_id, const Token& token, uint64_t group_id,
                         uint32_t member_index, StateCopy direction,
                         const std::vector<uint64_t>& object_ids);

  OptimizerStats Stats() const;

 private:
  struct Member;
  struct Group;
  struct JobGroups {
    std::map<uint64_t, std::shared_ptr<Group>> groups;
    std::set<std::string> names;  // Includes groups being created.
    std::set<uint64_t> member_objects;
  };

  void OnJobFreed(const std::string& job_id);
  absl::StatusOr<std::shared_ptr<Group>> FindGroup(const std::string& job_id,
                                                   uint64_t group_id) const;
  absl::Status ValidateSpec(const GroupSpec& spec) const;
  // Reserves the name; returns the existing group instead when there is one.
  absl::StatusOr<std::shared_ptr<Group>> ReserveOrFind(const std::string& job_id,
                                                       const GroupSpec& spec);
  absl::StatusOr<std::shared_ptr<Group>> Build(uint64_t session_id, const Token& token,
                                               const std::string& job_id, const GroupSpec& spec);
  absl::Status CreateStateObjects(uint64_t session_id, const Token& token, Group& group,
                                  std::vector<uint64_t>& created);
  absl::Status InitializeStates(const std::string& job_id, Group& group);
  void Unreserve(const std::string& job_id, const std::string& name);
  // Runs kernel over every member's shard (pinned: gradient or
  // accumulator, master, states, parameter) and marks what it wrote at
  // version.
  absl::Status RunStep(const std::string& job_id, Group& group, uint64_t version,
                       const std::function<absl::Status(const optim::ShardView&)>& kernel);
  absl::StatusOr<StepOutcome> Commit(const std::string& job_id, Group& group, uint64_t step,
                                     float grad_scale);
  absl::Status InitializeNvmeStates(const std::string& job_id, Group& group);
  absl::Status RunStreamedStep(const std::string& job_id, Group& group,
                               const optim::StepArgs& args, float lr, uint64_t version);
  // CopyState's parts (optimizer_host_state.cc); the group's lock is held.
  absl::Status CheckStateTargets(const std::string& job_id, const Group& group,
                                 uint32_t member_index, const std::vector<uint64_t>& ids) const;
  absl::Status CopyPinnedState(const std::string& job_id, const Member& member,
                               uint64_t version, StateCopy direction,
                               const std::vector<ComputeView>& objects);
  absl::Status CopyNvmeState(const Group& group, Member& member, StateCopy direction,
                             const std::vector<ComputeView>& objects);
  // Frees the NVMe states of groups whose job was freed (OnJobFreed runs
  // under the registry's lock, so it only moves them here).
  void ReapDeadGroups();
  // Pinned staging memory for streamed steps (4 KiB aligned), reused.
  std::shared_ptr<float> TakeBuffer(uint64_t floats);
  void ReturnBuffer(std::shared_ptr<float> buffer, uint64_t floats);

  Registry* const registry_;
  const OptimizerHostOptions options_;
  optim::Executor executor_;
  mutable std::mutex mu_;
  uint64_t next_group_id_ = 1;
  std::map<std::string, JobGroups> jobs_;
  std::vector<std::shared_ptr<Group>> dead_;
  std::vector<std::pair<uint64_t, std::shared_ptr<float>>> buffers_;  // Free ones, by size.
  OptimizerStats stats_;
  BusyClock busy_;
};

}  // namespace spill::server

#endif  // SPILL_SERVER_OPTIMIZER_HOST_H_
