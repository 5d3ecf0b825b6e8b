#include "server/optimizer_host.h"

#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "server/nvme_state_store.h"
#include "server/optimizer_host_internal.h"

namespace spill::server {
namespace {

constexpr int kObjectKindMaster = 3;  // spill.v1.OBJECT_KIND_MASTER
constexpr int kObjectKindMoment = 4;  // spill.v1.OBJECT_KIND_MOMENT
constexpr int kObjectKindOther = 5;   // spill.v1.OBJECT_KIND_OTHER

bool SupportedDType(int dtype) {
  return dtype == static_cast<int>(DType::kFloat32) ||
         dtype == static_cast<int>(DType::kBFloat16) ||
         dtype == static_cast<int>(DType::kFloat16);
}

// The executor's pool threads: a step runs on its caller plus the pool, so
// T optimizer threads are the caller and T - 1 workers.
uint32_t ExecutorWorkers(uint32_t requested) {
  unsigned threads = requested != 0 ? requested : std::thread::hardware_concurrency();
  return threads <= 1 ? 0 : threads - 1;
}

std::string DescribeDifference(const GroupInfo& have, const GroupSpec& want) {
  const optim::Hyper& a = have.hyper;
  const optim::Hyper& b = want.hyper;
  if (a.algo != b.algo) return "optimizer type";
  if (a.lr != b.lr || a.beta1 != b.beta1 || a.beta2 != b.beta2 || a.eps != b.eps ||
      a.weight_decay != b.weight_decay || a.bias_correction != b.bias_correction ||
      a.momentum != b.momentum || a.dampening != b.dampening || a.nesterov != b.nesterov ||
      a.initial_accumulator_value != b.initial_accumulator_value) {
    return "optimizer parameters";
  }
  if (have.states_on_nvme != want.states_on_nvme) return "state placement (NVMe or pinned)";
  if (have.states_on_nvme && have.sub_group_size != RoundSubGroup(want.sub_group_size)) {
    return absl::StrCat("sub_group_size (", have.sub_group_size, " vs ",
                        RoundSubGroup(want.sub_group_size), ")");
  }
  if (have.gradient_accumulation_steps != want.gradient_accumulation_steps) {
    return absl::StrCat("gradient_accumulation_steps (", have.gradient_accumulation_steps,
                        " vs ", want.gradient_accumulation_steps, ")");
  }
  if (have.members.size() != want.members.size()) {
    return absl::StrCat("member count (", have.members.size(), " vs ", want.members.size(), ")");
  }
  for (size_t i = 0; i < have.members.size(); ++i) {
    if (have.members[i].param_object_id != want.members[i].param_object_id ||
        have.members[i].grad_object_id != want.members[i].grad_object_id) {
      return absl::StrCat("member ", i, "'s objects");
    }
  }
  return "";
}

}  // namespace

OptimizerHost::OptimizerHost(Registry* registry, OptimizerHostOptions options)
    : registry_(registry), options_(options), executor_(ExecutorWorkers(options.threads), options.nice) {
  registry_->SetJobFreedListener([this](const std::string& job_id) { OnJobFreed(job_id); });
}

OptimizerHost::~OptimizerHost() {
  registry_->SetJobFreedListener(nullptr);
  std::vector<std::shared_ptr<Group>> groups;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [job, jg] : jobs_) {
      for (auto& [id, g] : jg.groups) dead_.push_back(g);
    }
    jobs_.clear();
  }
  ReapDeadGroups();
}

void OptimizerHost::OnJobFreed(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  stats_.groups -= static_cast<uint32_t>(it->second.groups.size());
  for (auto& [id, g] : it->second.groups) dead_.push_back(g);
  jobs_.erase(it);
}

void OptimizerHost::ReapDeadGroups() {
  std::vector<std::shared_ptr<Group>> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dead.swap(dead_);
  }
  for (auto& g : dead) {
    std::lock_guard<std::mutex> lock(g->mu);
    g->dropped = true;
    for (Member& m : g->members) {
      if (m.nvme != nullptr) m.nvme->Free();
    }
  }
}

std::shared_ptr<float> OptimizerHost::TakeBuffer(uint64_t floats) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = buffers_.begin(); it != buffers_.end(); ++it) {
      if (it->first >= floats) {
        std::shared_ptr<float> b = std::move(it->second);
        buffers_.erase(it);
        return b;
      }
    }
  }
  const uint64_t bytes = (floats * sizeof(float) + 4095) / 4096 * 4096;
  void* p = std::aligned_alloc(4096, bytes);
  if (p == nullptr) return nullptr;
  return std::shared_ptr<float>(static_cast<float*>(p), [](float* f) { std::free(f); });
}

void OptimizerHost::ReturnBuffer(std::shared_ptr<float> buffer, uint64_t floats) {
  if (buffer == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  // Keep as many as can step at once; drop the smallest beyond that.
  buffers_.emplace_back(floats, std::move(buffer));
  std::sort(buffers_.begin(), buffers_.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  if (buffers_.size() > 8) buffers_.erase(buffers_.begin());
}

absl::StatusOr<std::shared_ptr<OptimizerHost::Group>> OptimizerHost::FindGroup(
    const std::string& job_id, uint64_t group_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto job = jobs_.find(job_id);
  if (job != jobs_.end()) {
    auto it = job->second.groups.find(group_id);
    if (it != job->second.groups.end()) return it->second;
  }
  return absl::NotFoundError(
      absl::StrCat("job '", job_id, "' has no optimizer group with id ", group_id));
}

absl::Status OptimizerHost::ValidateSpec(const GroupSpec& spec) const {
  if (spec.resume_applied_steps > spec.resume_step) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer group '", spec.name, "': resume_applied_steps (", spec.resume_applied_steps,
        ") exceeds resume_step (", spec.resume_step, ")"));
  }
  if (spec.name.empty()) return absl::InvalidArgumentError("optimizer group name is empty");
  if (spec.name.size() > options_.max_name_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer group name is ", spec.name.size(),
                                                   " bytes; the limit is ",
                                                   options_.max_name_bytes));
  }
  if (spec.gradient_accumulation_steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer group '", spec.name, "': gradient_accumulation_steps must be >= 1"));
  }
  if (spec.members.empty() || spec.members.size() > options_.max_members_per_group) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer group '", spec.name, "' has ", spec.members.size(),
        " members; it needs between 1 and ", options_.max_members_per_group));
  }
  if (spec.states_on_nvme) {
    if (options_.nvme == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "optimizer group '", spec.name,
          "' keeps its states on NVMe, but spilld runs without an NVMe tier (--nvme-dirs)"));
    }
    if (spec.sub_group_size == 0 || spec.sub_group_size > (uint64_t{1} << 30)) {
      return absl::InvalidArgumentError(absl::StrCat("optimizer group '", spec.name,
                                                     "': sub_group_size must be in [1, 2^30], got ",
                                                     spec.sub_group_size));
    }
  }
  absl::Status hyper = optim::ValidateHyper(spec.hyper);
  if (!hyper.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer group '", spec.name, "': ", hyper.message()));
  }
  std::set<uint64_t> seen;
  for (const GroupMemberSpec& m : spec.members) {
    for (uint64_t id : {m.param_object_id, m.grad_object_id}) {
      if (!seen.insert(id).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "optimizer group '", spec.name, "' names object ", id, " more than once"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<OptimizerHost::Group>> OptimizerHost::ReserveOrFind(
    const std::string& job_id, const GroupSpec& spec) {
  std::lock_guard<std::mutex> lock(mu_);
  JobGroups& job = jobs_[job_id];
  for (const auto& [id, group] : job.groups) {
    if (group->info.name == spec.name) return group;
  }
  if (job.names.count(spec.name) != 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("optimizer group '", spec.name, "' is being created"));
  }
  if (job.groups.size() >= options_.max_groups_per_job) {
    return absl::ResourceExhaustedError(absl::StrCat("job '", job_id, "' has ",
                                                     job.groups.size(),
                                                     " optimizer groups; the limit is ",
                                                     options_.max_groups_per_job));
  }
  for (const GroupMemberSpec& m : spec.members) {
    for (uint64_t id : {m.param_object_id, m.grad_object_id}) {
      if (job.member_objects.count(id) != 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "object ", id, " already belongs to another optimizer group of job '", job_id, "'"));
      }
    }
  }
  job.names.insert(spec.name);
  return std::shared_ptr<Group>();
}

void OptimizerHost::Unreserve(const std::string& job_id, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) it->second.names.erase(name);
}

absl::StatusOr<std::pair<GroupInfo, bool>> OptimizerHost::CreateGroup(uint64_t session_id,
                                                                      const Token& token,
                                                                      const GroupSpec& spec) {
  ReapDeadGroups();
  SPILL_ASSIGN_OR_RETURN(std::string job_id, registry_->SessionJob(session_id, token));
  SPILL_RETURN_IF_ERROR(ValidateSpec(spec));
  SPILL_ASSIGN_OR_RETURN(std::shared_ptr<Group> existing, ReserveOrFind(job_id, spec));
  if (existing != nullptr) {
    std::lock_guard<std::mutex> lock(existing->mu);
    GroupInfo info = existing->Snapshot();
    std::string diff = DescribeDifference(info, spec);
    if (!diff.empty()) {
      return absl::AlreadyExistsError(absl::StrCat("optimizer group '", spec.name,
                                                   "' exists with a different ", diff));
    }
    return std::make_pair(std::move(info), true);
  }
  absl::StatusOr<std::shared_ptr<Group>> built = Build(session_id, token, job_id, spec);
  std::lock_guard<std::mutex> lock(mu_);
  JobGroups& job = jobs_[job_id];
  job.names.erase(spec.name);
  if (!built.ok()) return built.status();
  std::shared_ptr<Group> group = *built;
  group->info.group_id = next_group_id_++;
  for (const Member& m : group->members) {
    job.member_objects.insert(m.info.param_object_id);
    job.member_objects.insert(m.info.grad_object_id);
  }
  job.groups.emplace(group->info.group_id, group);
  ++stats_.groups;
  return std::make_pair(group->Snapshot(), false);
}

absl::StatusOr<std::shared_ptr<OptimizerHost::Group>> OptimizerHost::Build(
    uint64_t session_id, const Token& token, const std::string& job_id, const GroupSpec& spec) {
  std::vector<uint64_t> ids;
  for (const GroupMemberSpec& m : spec.members) {
    ids.push_back(m.param_object_id);
    ids.push_back(m.grad_object_id);
  }
  SPILL_ASSIGN_OR_RETURN(std::vector<ObjectRecord> records, registry_->Records(job_id, ids));
  auto group = std::make_shared<Group>();
  group->info.name = spec.name;
  group->info.hyper = spec.hyper;
  group->info.gradient_accumulation_steps = spec.gradient_accumulation_steps;
  group->info.states_on_nvme = spec.states_on_nvme;
  group->info.sub_group_size = spec.states_on_nvme ? RoundSubGroup(spec.sub_group_size) : 0;
  group->info.last_step = spec.resume_step;
  group->info.applied_steps = spec.resume_applied_steps;
  for (size_t i = 0; i < spec.members.size(); ++i) {
    const ObjectRecord& param = records[2 * i];
    const ObjectRecord& grad = records[2 * i + 1];
    if (grad.home != storage::Home::kPinned) {
      return absl::FailedPreconditionError(absl::StrCat(
          "optimizer group '", spec.name, "' member ", i, ": gradient '", grad.name, "' (id ",
          grad.id, ") has home NVME; gradients must have home PINNED (only parameters may "
          "have home NVME)"));
    }
    if (!SupportedDType(param.dtype) || !SupportedDType(grad.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer group '", spec.name, "' member ", i, ": parameter '", param.name, "' is ",
          DTypeName(param.dtype), " and gradient '", grad.name, "' is ", DTypeName(grad.dtype),
          "; both must be float32, bfloat16 or float16"));
    }
    if (param.num_elements != grad.num_elements) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer group '", spec.name, "' member ", i, ": parameter '", param.name, "' has ",
          param.num_elements, " elements but gradient '", grad.name, "' has ",
          grad.num_elements));
    }
    Member member;
    member.info.param_object_id = param.id;
    member.info.grad_object_id = grad.id;
    member.info.num_elements = param.num_elements;
    member.param_dtype = param.dtype;
    member.grad_dtype = grad.dtype;
    group->members.push_back(std::move(member));
  }
  std::vector<uint64_t> created;
  absl::Status status = CreateStateObjects(session_id, token, *group, created);
  if (status.ok()) {
    status = spec.states_on_nvme ? InitializeNvmeStates(job_id, *group)
                                 : InitializeStates(job_id, *group);
  }
  if (!status.ok()) {
    for (uint64_t id : created) (void)registry_->FreeObject(session_id, token, id);
    for (Member& m : group->members) {
      if (m.nvme != nullptr) m.nvme->Free();
    }
    return status;
  }
  return group;
}

absl::Status OptimizerHost::CreateStateObjects(uint64_t session_id, const Token& token,
                                               Group& group, std::vector<uint64_t>& created) {
  const int states = optim::StateCount(group.info.hyper);
  const bool accumulate = group.info.gradient_accumulation_steps > 1;
  const int f32 = static_cast<int>(DType::kFloat32);
  for (size_t i = 0; i < group.members.size(); ++i) {
    GroupMemberInfo& info = group.members[i].info;
    const std::string prefix = absl::StrCat(group.info.name, "/", i, "/");
    const auto n = static_cast<int64_t>(info.num_elements);
    auto make = [&](const std::string& suffix, int kind) -> absl::StatusOr<uint64_t> {
      SPILL_ASSIGN_OR_RETURN(ObjectRecord r, registry_->RegisterObject(
                                                 session_id, token, prefix + suffix, kind, f32, n));
      created.push_back(r.id);
      return r.id;
    };
    if (!group.info.states_on_nvme) {
      SPILL_ASSIGN_OR_RETURN(info.master_object_id, make("master", kObjectKindMaster));
      for (int s = 0; s < states; ++s) {
        SPILL_ASSIGN_OR_RETURN(uint64_t id, make(absl::StrCat("state", s), kObjectKindMoment));
        info.state_object_ids.push_back(id);
      }
    }
    if (accumulate) {
      SPILL_ASSIGN_OR_RETURN(info.accumulator_object_id, make("grad_accum", kObjectKindOther));
    }
  }
  return absl::OkStatus();
}

absl::Status OptimizerHost::InitializeStates(const std::string& job_id, Group& group) {
  for (Member& m : group.members) {
    SPILL_ASSIGN_OR_RETURN(
        std::vector<ComputeView> pv,
        registry_->PinParamsForCompute(job_id, {m.info.param_object_id}, /*for_write=*/false,
                                       options_.param_timeout));
    std::vector<uint64_t> ids = {m.info.master_object_id};
    ids.insert(ids.end(), m.info.state_object_ids.begin(), m.info.state_object_ids.end());
    if (m.info.accumulator_object_id != 0) ids.push_back(m.info.accumulator_object_id);
    absl::StatusOr<std::vector<ComputeView>> pinned = registry_->PinForCompute(job_id, ids);
    if (!pinned.ok()) {
      (void)registry_->UnpinParams(job_id, pv, 0);
      return pinned.status();
    }
    const std::vector<ComputeView>& v = *pinned;
    const uint64_t n = m.info.num_elements;
    absl::Status status =
        optim::InitMaster(static_cast<DType>(m.param_dtype), pv[0].data,
                          reinterpret_cast<float*>(v[0].data), n, executor_);
    (void)registry_->UnpinParams(job_id, pv, 0);
    float* state[2] = {nullptr, nullptr};
    for (size_t s = 0; s < m.info.state_object_ids.size(); ++s) {
      state[s] = reinterpret_cast<float*>(v[1 + s].data);
    }
    if (status.ok() && !m.info.state_object_ids.empty()) {
      status = optim::InitState(group.info.hyper, state, n);
    }
    if (m.info.accumulator_object_id != 0) std::memset(v.back().data, 0, n * sizeof(float));
    registry_->UnpinCompute(job_id, ids, 0);
    SPILL_RETURN_IF_ERROR(status);
  }
  return absl::OkStatus();
}

absl::Status OptimizerHost::DropGroup(uint64_t session_id, const Token& token,
                                      uint64_t group_id) {
  SPILL_ASSIGN_OR_RETURN(std::string job_id, registry_->SessionJob(session_id, token));
  std::shared_ptr<Group> group;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto job = jobs_.find(job_id);
    if (job == jobs_.end() || job->second.groups.count(group_id) == 0) {
      return absl::NotFoundError(
          absl::StrCat("job '", job_id, "' has no optimizer group with id ", group_id));
    }
    auto it = job->second.groups.find(group_id);
    group = it->second;
    job->second.groups.erase(it);
    for (const Member& m : group->members) {
      job->second.member_objects.erase(m.info.param_object_id);
      job->second.member_objects.erase(m.info.grad_object_id);
    }
    --stats_.groups;
  }
  std::lock_guard<std::mutex> lock(group->mu);  // Waits for a running step.
  group->dropped = true;
  for (Member& m : group->members) {
    if (m.nvme != nullptr) m.nvme->Free();
  }
  for (const Member& m : group->members) {
    std::vector<uint64_t> ids = {m.info.master_object_id};
    ids.insert(ids.end(), m.info.state_object_ids.begin(), m.info.state_object_ids.end());
    if (m.info.accumulator_object_id != 0) ids.push_back(m.info.accumulator_object_id);
    for (uint64_t id : ids) (void)registry_->FreeObject(session_id, token, id);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<GroupInfo>> OptimizerHost::ListGroups(uint64_t session_id,
                                                                  const Token& token) {
  SPILL_ASSIGN_OR_RETURN(std::string job_id, registry_->SessionJob(session_id, token));
  std::vector<std::shared_ptr<Group>> groups;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto job = jobs_.find(job_id);
    if (job != jobs_.end()) {
      for (const auto& [id, g] : job->second.groups) groups.push_back(g);
    }
  }
  std::vector<GroupInfo> out;
  for (const auto& g : groups) {
    std::lock_guard<std::mutex> lock(g->mu);
    out.push_back(g->Snapshot());
  }
  return out;
}

absl::StatusOr<double> OptimizerHost::GradReady(uint64_t session_id, uint64_t group_id,
                                                uint64_t grad_object_id, uint64_t step,
                                                uint32_t micro_step,
                                                std::optional<double> client_sum_squares) {
  SPILL_ASSIGN_OR_RETURN(std::string job_id, registry_->StreamJob(session_id));
  SPILL_ASSIGN_OR_RETURN(std::shared_ptr<Group> group, FindGroup(job_id, group_id));
  std::lock_guard<std::mutex> lock(group->mu);
  const GroupInfo& info = group->info;
  Member* member = nullptr;
  for (Member& m : group->members) {
    if (m.info.grad_object_id == grad_object_id) member = &m;
  }
  if (member == nullptr) {
    return absl::NotFoundError(absl::StrCat("object ", grad_object_id,
                                            " is not a gradient of optimizer group '",
                                            info.name, "'"));
  }
  if (micro_step >= info.gradient_accumulation_steps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "micro_step ", micro_step, " is outside [0, gradient_accumulation_steps=",
        info.gradient_accumulation_steps, ") of optimizer group '", info.name, "'"));
  }
  if (step != info.last_step + 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "optimizer group '", info.name, "' is at step ", info.last_step,
        "; a gradient can only be for step ", info.last_step + 1, ", got ", step));
  }
  SPILL_RETURN_IF_ERROR(group->CheckNotPending("a gradient of the next step"));
  if (member->ready_step == step && member->micro_done == micro_step + 1) {
    return member->sum_squares;  // A resend of the last micro-step: answered again.
  }
  const uint32_t expected = member->ready_step == step ? member->micro_done : 0;
  if (micro_step != expected) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gradient ", grad_object_id, " of optimizer group '", info.name, "' for step ", step,
        ": expected micro_step ", expected, ", got ", micro_step));
  }
  const bool accumulate = member->info.accumulator_object_id != 0;
  if (client_sum_squares.has_value()) {
    if (accumulate) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sum_squares from the worker is only for groups without accumulation; optimizer "
          "group '", info.name, "' accumulates ", info.gradient_accumulation_steps,
          " micro-steps"));
    }
    member->ready_step = step;
    member->micro_done = micro_step + 1;
    member->sum_squares = *client_sum_squares;
    std::lock_guard<std::mutex> stats_lock(mu_);
    ++stats_.grad_ready;
    return *client_sum_squares;
  }
  std::vector<uint64_t> ids = {grad_object_id};
  if (accumulate) ids.push_back(member->info.accumulator_object_id);
  SPILL_ASSIGN_OR_RETURN(std::vector<ComputeView> v, registry_->PinForCompute(job_id, ids));
  const uint64_t n = member->info.num_elements;
  const auto grad_dtype = static_cast<DType>(member->grad_dtype);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<double> sum;
  {
    BusyClock::Scope busy(busy_);
    sum = accumulate ? optim::Accumulate(grad_dtype, v[0].data,
                                         reinterpret_cast<float*>(v[1].data), n,
                                         /*assign=*/micro_step == 0, 1.0f, executor_,
                                         options_.threads_per_job)
                     : optim::SumSquares(grad_dtype, v[0].data, n, executor_,
                                         options_.threads_per_job);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  registry_->UnpinCompute(job_id, ids, 0);
  if (!sum.ok()) return sum.status();
  member->ready_step = step;
  member->micro_done = micro_step + 1;
  member->sum_squares = *sum;
  std::lock_guard<std::mutex> stats_lock(mu_);
  ++stats_.grad_ready;
  stats_.grad_ready_seconds += seconds;
  return *sum;
}

absl::Status OptimizerHost::InitializeNvmeStates(const std::string& job_id, Group& group) {
  const uint64_t sg = group.Piece();
  const int arrays = 1 + optim::StateCount(group.info.hyper);
  std::shared_ptr<float> buffer = TakeBuffer(arrays * sg);
  if (buffer == nullptr) return absl::ResourceExhaustedError("cannot allocate a staging buffer");
  absl::Status status;
  for (size_t i = 0; i < group.members.size() && status.ok(); ++i) {
    Member& m = group.members[i];
    const uint64_t n = m.info.num_elements;
    m.nvme = std::make_unique<NvmeStateStore>(
        options_.nvme, job_id, absl::StrCat("optimizer group '", group.info.name, "' member ", i),
        arrays, n, sg);
    auto v = registry_->PinParamsForCompute(job_id, {m.info.param_object_id},
                                            /*for_write=*/false, options_.param_timeout);
    if (!v.ok()) {
      status = v.status();
      break;
    }
    const uint8_t* param = (*v)[0].data;
    const auto dtype = static_cast<DType>(m.param_dtype);
    const size_t elem = DTypeSize(m.param_dtype);
    auto fill = [&](uint64_t begin, uint64_t count, float* master, float* state[2]) {
      SPILL_RETURN_IF_ERROR(
          optim::InitMaster(dtype, param + begin * elem, master, count, executor_));
      if (arrays > 1) SPILL_RETURN_IF_ERROR(optim::InitState(group.info.hyper, state, count));
      return absl::OkStatus();
    };
    status = m.nvme->Initialize(fill, std::span<float>(buffer.get(), arrays * sg));
    (void)registry_->UnpinParams(job_id, *v, 0);
    m.info.nvme_bytes = m.nvme->nvme_bytes();
  }
  ReturnBuffer(std::move(buffer), arrays * sg);
  return status;
}

absl::Status OptimizerHost::RunStreamedStep(const std::string& job_id, Group& group,
                                            const optim::StepArgs& args, float lr,
                                            uint64_t version) {
  std::vector<uint64_t> params, grads;
  for (const Member& m : group.members) {
    params.push_back(m.info.param_object_id);
    grads.push_back(m.info.accumulator_object_id != 0 ? m.info.accumulator_object_id
                                                      : m.info.grad_object_id);
  }
  SPILL_ASSIGN_OR_RETURN(std::vector<ComputeView> pv,
                         registry_->PinParamsForCompute(job_id, params, /*for_write=*/true,
                                                        options_.param_timeout));
  auto gv = registry_->PinForCompute(job_id, grads);
  if (!gv.ok()) {
    (void)registry_->UnpinParams(job_id, pv, 0);
    return gv.status();
  }
  const uint64_t sg = group.Piece();
  const uint64_t floats = 3 * (1 + optim::StateCount(group.info.hyper)) * sg;
  std::shared_ptr<float> buffer = TakeBuffer(floats);
  optim::Hyper hyper = group.info.hyper;
  hyper.lr = lr;
  absl::Status status = buffer == nullptr
                            ? absl::ResourceExhaustedError("cannot allocate a staging buffer")
                            : absl::OkStatus();
  // Parameters are restored from these copies if any member fails, so the
  // step is all or nothing (the stores keep their old state on Abort).
  std::vector<std::vector<uint8_t>> saved;
  size_t done = 0;
  for (; done < group.members.size() && status.ok(); ++done) {
    Member& m = group.members[done];
    const uint64_t bytes = m.info.num_elements * DTypeSize(m.param_dtype);
    saved.emplace_back(pv[done].data, pv[done].data + bytes);
    const bool accumulated = m.info.accumulator_object_id != 0;
    status = optim::StreamedStep(
        hyper, args, accumulated ? DType::kFloat32 : static_cast<DType>(m.grad_dtype),
        (*gv)[done].data, static_cast<DType>(m.param_dtype), pv[done].data, m.info.num_elements,
        *m.nvme, sg, std::span<float>(buffer.get(), floats), executor_, options_.threads_per_job);
  }
  for (size_t i = 0; i < done; ++i) {
    Member& m = group.members[i];
    if (status.ok()) {
      m.nvme->Commit();
      m.info.nvme_bytes = m.nvme->nvme_bytes();
    } else {
      m.nvme->Abort();
      std::memcpy(pv[i].data, saved[i].data(), saved[i].size());
    }
  }
  ReturnBuffer(std::move(buffer), floats);
  registry_->UnpinCompute(job_id, grads, 0);
  absl::Status unpinned = registry_->UnpinParams(job_id, pv, status.ok() ? version : 0);
  return status.ok() ? unpinned : status;
}

OptimizerStats OptimizerHost::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  OptimizerStats s = stats_;
  s.busy_seconds = busy_.Seconds();
  return s;
}

}  // namespace spill::server
