// OptimizerHost's stream operations that run a step: Step (final,
// speculative or commit), TryCommitAsRun and the pinned-tier pass they share.
// GradReady, group creation and the NVMe-streamed step are in
// optimizer_host.cc; state copies in optimizer_host_state.cc.
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/optimizer_host.h"
#include "server/optimizer_host_internal.h"

namespace spill::server {

absl::StatusOr<StepOutcome> OptimizerHost::Step(uint64_t session_id, uint64_t group_id,
                                                uint64_t step, float lr, float grad_scale,
                                                bool skip, StepMode mode) {
  if (!std::isfinite(lr) || lr < 0) {
    return absl::InvalidArgumentError(absl::StrCat("lr must be finite and >= 0, got ", lr));
  }
  if (!skip && (!std::isfinite(grad_scale) || grad_scale <= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad_scale must be finite and > 0, got ", grad_scale));
  }
  if (skip && mode != StepMode::kFinal) {
    return absl::InvalidArgumentError(
        "a speculative step or its commit cannot be skipped (a step whose fp16 overflow is not "
        "known yet is never speculative)");
  }
  SPILL_ASSIGN_OR_RETURN(std::string job_id, registry_->StreamJob(session_id));
  SPILL_ASSIGN_OR_RETURN(std::shared_ptr<Group> group, FindGroup(job_id, group_id));
  std::lock_guard<std::mutex> lock(group->mu);
  GroupInfo& info = group->info;
  if (mode == StepMode::kCommit) return Commit(job_id, *group, step, grad_scale);
  if (step <= info.last_step) {
    auto it = group->history.find(step);
    if (it == group->history.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "optimizer group '", info.name, "' is at step ", info.last_step, "; step ", step,
          " is older than the outcomes it keeps"));
    }
    StepOutcome outcome = it->second;
    outcome.repeated = true;
    std::lock_guard<std::mutex> stats_lock(mu_);
    ++stats_.steps_repeated;
    return outcome;
  }
  if (step != info.last_step + 1) {
    return absl::FailedPreconditionError(absl::StrCat("optimizer group '", info.name,
                                                      "' is at step ", info.last_step,
                                                      "; the next step is ", info.last_step + 1,
                                                      ", got ", step));
  }
  SPILL_RETURN_IF_ERROR(group->CheckNotPending(absl::StrCat("step ", step)));
  if (mode == StepMode::kSpeculative) {
    if (!optim::Rescalable(info.hyper)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "optimizer group '", info.name, "' cannot step speculatively: its optimizer (",
          optim::AlgoName(info.hyper.algo),
          info.hyper.weight_decay != 0.f ? " with weight decay" : "",
          ") cannot be rescaled afterwards (adamw, or adam without weight decay, can)"));
    }
    if (info.states_on_nvme) {
      return absl::FailedPreconditionError(absl::StrCat(
          "optimizer group '", info.name,
          "' cannot step speculatively: its states are on NVMe (streamed steps)"));
    }
  }
  StepOutcome outcome;
  outcome.step = step;
  if (skip) {
    outcome.skipped = true;
  } else {
    for (size_t i = 0; i < group->members.size(); ++i) {
      const Member& m = group->members[i];
      const uint32_t got = m.ready_step == step ? m.micro_done : 0;
      if (got != info.gradient_accumulation_steps) {
        return absl::FailedPreconditionError(absl::StrCat(
            "optimizer group '", info.name, "' step ", step, ": member ", i, " (gradient ",
            m.info.grad_object_id, ") has ", got, " of ", info.gradient_accumulation_steps,
            " micro-steps"));
      }
      if (!std::isfinite(m.sum_squares)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "optimizer group '", info.name, "' step ", step, ": member ", i, " (gradient ",
            m.info.grad_object_id, ") has non-finite values (sum of squares ", m.sum_squares,
            "); flag the step as skipped (fp16 overflow) to skip it"));
      }
    }
    auto start = std::chrono::steady_clock::now();
    optim::StepArgs args;
    args.step = info.applied_steps + 1;
    args.grad_scale = grad_scale;
    optim::Hyper hyper = info.hyper;
    hyper.lr = lr;
    {
      BusyClock::Scope busy(busy_);
      SPILL_RETURN_IF_ERROR(
          info.states_on_nvme
              ? RunStreamedStep(job_id, *group, args, lr, step)
              : RunStep(job_id, *group, step, [&](const optim::ShardView& shard) {
                  return optim::Step(hyper, args, shard, executor_, options_.threads_per_job);
                }));
    }
    outcome.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    outcome.applied = true;
    ++info.applied_steps;
    if (mode == StepMode::kSpeculative) {
      outcome.speculative = true;
      group->pending = Group::Pending{step, lr, args};
    }
  }
  info.last_step = step;
  outcome.applied_steps = info.applied_steps;
  group->history[step] = outcome;
  if (group->history.size() > kOutcomeHistory) group->history.erase(group->history.begin());
  std::lock_guard<std::mutex> stats_lock(mu_);
  if (outcome.applied) {
    ++stats_.steps_applied;
    stats_.steps_speculative += outcome.speculative ? 1 : 0;
    stats_.step_seconds += outcome.seconds;
    for (const Member& m : group->members) stats_.elements_stepped += m.info.num_elements;
  } else {
    ++stats_.steps_skipped;
  }
  return outcome;
}

std::optional<StepOutcome> OptimizerHost::TryCommitAsRun(uint64_t session_id, uint64_t group_id,
                                                          uint64_t step, float grad_scale) {
  absl::StatusOr<std::string> job_id = registry_->StreamJob(session_id);
  if (!job_id.ok()) return std::nullopt;
  absl::StatusOr<std::shared_ptr<Group>> group = FindGroup(*job_id, group_id);
  if (!group.ok()) return std::nullopt;
  std::unique_lock<std::mutex> lock((*group)->mu, std::try_to_lock);
  if (!lock.owns_lock()) return std::nullopt;
  const std::optional<Group::Pending>& pending = (*group)->pending;
  if (!pending || pending->step != step || pending->args.grad_scale != grad_scale) {
    return std::nullopt;
  }
  absl::StatusOr<StepOutcome> outcome = Commit(*job_id, **group, step, grad_scale);
  if (!outcome.ok()) return std::nullopt;  // Not reached: nothing in a commit as run fails.
  return *outcome;
}

absl::StatusOr<StepOutcome> OptimizerHost::Commit(const std::string& job_id, Group& group,
                                                  uint64_t step, float grad_scale) {
  GroupInfo& info = group.info;
  if (!group.pending || group.pending->step != step) {
    auto it = group.history.find(step);
    if (it == group.history.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "optimizer group '", info.name, "' has no speculative step ", step,
          " to commit (it is at step ", info.last_step, ")"));
    }
    StepOutcome outcome = it->second;
    outcome.repeated = true;
    std::lock_guard<std::mutex> stats_lock(mu_);
    ++stats_.steps_repeated;
    return outcome;
  }
  const Group::Pending pending = *group.pending;
  StepOutcome outcome = group.history[step];
  double seconds = 0;
  if (grad_scale != pending.args.grad_scale) {
    optim::Hyper hyper = info.hyper;
    hyper.lr = pending.lr;
    const auto start = std::chrono::steady_clock::now();
    {
      BusyClock::Scope busy(busy_);
      SPILL_RETURN_IF_ERROR(RunStep(job_id, group, step, [&](const optim::ShardView& shard) {
        return optim::Rescale(hyper, pending.args, grad_scale, shard, executor_,
                              options_.threads_per_job);
      }));
    }
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    outcome.rescaled = true;
    outcome.seconds += seconds;
  }
  outcome.speculative = false;
  group.pending.reset();
  group.history[step] = outcome;
  std::lock_guard<std::mutex> stats_lock(mu_);
  ++stats_.steps_committed;
  if (outcome.rescaled) {
    ++stats_.steps_rescaled;
    stats_.rescale_seconds += seconds;
  }
  return outcome;
}

absl::Status OptimizerHost::RunStep(
    const std::string& job_id, Group& group, uint64_t version,
    const std::function<absl::Status(const optim::ShardView&)>& kernel) {
  // Pin every object of every member first: a missing one fails the step
  // before any byte changes.
  // NVMe-homed parameters are acquired first (the only pins that may wait
  // or fail on I/O).
  std::vector<uint64_t> params, ids;
  for (const Member& m : group.members) {
    params.push_back(m.info.param_object_id);
    ids.push_back(m.info.accumulator_object_id != 0 ? m.info.accumulator_object_id
                                                    : m.info.grad_object_id);
    ids.push_back(m.info.master_object_id);
    ids.insert(ids.end(), m.info.state_object_ids.begin(), m.info.state_object_ids.end());
  }
  SPILL_ASSIGN_OR_RETURN(std::vector<ComputeView> pv,
                         registry_->PinParamsForCompute(job_id, params, /*for_write=*/true,
                                                        options_.param_timeout));
  absl::StatusOr<std::vector<ComputeView>> pinned = registry_->PinForCompute(job_id, ids);
  if (!pinned.ok()) {
    (void)registry_->UnpinParams(job_id, pv, 0);
    return pinned.status();
  }
  const std::vector<ComputeView>& v = *pinned;
  absl::Status status;
  size_t at = 0;
  for (size_t i = 0; i < group.members.size(); ++i) {
    const Member& m = group.members[i];
    optim::ShardView shard;
    shard.param_dtype = static_cast<DType>(m.param_dtype);
    shard.param = pv[i].data;
    const bool accumulated = m.info.accumulator_object_id != 0;
    shard.grad_dtype = accumulated ? DType::kFloat32 : static_cast<DType>(m.grad_dtype);
    shard.grad = v[at].data;
    shard.master = reinterpret_cast<float*>(v[at + 1].data);
    for (size_t s = 0; s < m.info.state_object_ids.size(); ++s) {
      shard.state[s] = reinterpret_cast<float*>(v[at + 2 + s].data);
    }
    shard.n = m.info.num_elements;
    at += 2 + m.info.state_object_ids.size();
    if (status.ok()) status = kernel(shard);
  }
  // The parameter, master and states now hold this step's result; the
  // gradient (or accumulator) was only read.
  std::vector<uint64_t> written;
  std::vector<uint64_t> read;
  at = 0;
  for (const Member& m : group.members) {
    const size_t count = 2 + m.info.state_object_ids.size();
    for (size_t k = 0; k < count; ++k) (k == 0 ? read : written).push_back(ids[at + k]);
    at += count;
  }
  registry_->UnpinCompute(job_id, read, 0);
  registry_->UnpinCompute(job_id, written, status.ok() ? version : 0);
  absl::Status unpinned = registry_->UnpinParams(job_id, pv, status.ok() ? version : 0);
  if (!status.ok()) {
    // Every input was checked above; a kernel error here is a bug.
    return absl::InternalError(absl::StrCat("optimizer group '", group.info.name,
                                            "': optimizer kernel failed after validation: ",
                                            status.message()));
  }
  return unpinned;
}

}  // namespace spill::server
