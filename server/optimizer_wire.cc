#include "server/optimizer_wire.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace spill::server {

absl::StatusOr<optim::Hyper> HyperFromProto(const spill::v1::OptimizerParams& p) {
  optim::Hyper h;
  switch (p.type()) {
    case spill::v1::OPTIMIZER_TYPE_ADAMW: h.algo = optim::Algo::kAdamW; break;
    case spill::v1::OPTIMIZER_TYPE_ADAM: h.algo = optim::Algo::kAdam; break;
    case spill::v1::OPTIMIZER_TYPE_ADAGRAD: h.algo = optim::Algo::kAdagrad; break;
    case spill::v1::OPTIMIZER_TYPE_LION: h.algo = optim::Algo::kLion; break;
    case spill::v1::OPTIMIZER_TYPE_SGD: h.algo = optim::Algo::kSgd; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer type ", static_cast<int>(p.type()),
          " is not one of ADAMW, ADAM, ADAGRAD, LION, SGD"));
  }
  h.lr = p.lr();
  h.beta1 = p.beta1();
  h.beta2 = p.beta2();
  h.eps = p.eps();
  h.weight_decay = p.weight_decay();
  h.bias_correction = p.bias_correction();
  h.momentum = p.momentum();
  h.dampening = p.dampening();
  h.nesterov = p.nesterov();
  h.initial_accumulator_value = p.initial_accumulator_value();
  return h;
}

absl::StatusOr<GroupSpec> GroupSpecFromProto(const spill::v1::CreateGroupRequest& request) {
  GroupSpec spec;
  spec.name = request.name();
  SPILL_ASSIGN_OR_RETURN(spec.hyper, HyperFromProto(request.params()));
  spec.gradient_accumulation_steps = request.gradient_accumulation_steps();
  spec.states_on_nvme = request.states_on_nvme();
  if (request.sub_group_size() != 0) spec.sub_group_size = request.sub_group_size();
  spec.resume_step = request.resume_step();
  spec.resume_applied_steps = request.resume_applied_steps();
  for (const auto& m : request.members()) {
    spec.members.push_back({m.param_object_id(), m.grad_object_id()});
  }
  return spec;
}

absl::StatusOr<StateCopy> StateCopyFromProto(spill::v1::GroupStateDirection direction) {
  switch (direction) {
    case spill::v1::GROUP_STATE_DIRECTION_EXPORT: return StateCopy::kExport;
    case spill::v1::GROUP_STATE_DIRECTION_IMPORT: return StateCopy::kImport;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "group state direction ", static_cast<int>(direction), " is not EXPORT or IMPORT"));
  }
}

void ToProto(const optim::Hyper& h, spill::v1::OptimizerParams* out) {
  switch (h.algo) {
    case optim::Algo::kAdamW: out->set_type(spill::v1::OPTIMIZER_TYPE_ADAMW); break;
    case optim::Algo::kAdam: out->set_type(spill::v1::OPTIMIZER_TYPE_ADAM); break;
    case optim::Algo::kAdagrad: out->set_type(spill::v1::OPTIMIZER_TYPE_ADAGRAD); break;
    case optim::Algo::kLion: out->set_type(spill::v1::OPTIMIZER_TYPE_LION); break;
    case optim::Algo::kSgd: out->set_type(spill::v1::OPTIMIZER_TYPE_SGD); break;
  }
  out->set_lr(h.lr);
  out->set_beta1(h.beta1);
  out->set_beta2(h.beta2);
  out->set_eps(h.eps);
  out->set_weight_decay(h.weight_decay);
  out->set_bias_correction(h.bias_correction);
  out->set_momentum(h.momentum);
  out->set_dampening(h.dampening);
  out->set_nesterov(h.nesterov);
  out->set_initial_accumulator_value(h.initial_accumulator_value);
}

void ToProto(const GroupInfo& group, spill::v1::GroupInfo* out) {
  out->set_group_id(group.group_id);
  out->set_name(group.name);
  ToProto(group.hyper, out->mutable_params());
  out->set_gradient_accumulation_steps(group.gradient_accumulation_steps);
  for (const GroupMemberInfo& m : group.members) {
    spill::v1::GroupMember* pm = out->add_members();
    pm->set_param_object_id(m.param_object_id);
    pm->set_grad_object_id(m.grad_object_id);
    pm->set_master_object_id(m.master_object_id);
    for (uint64_t id : m.state_object_ids) pm->add_state_object_ids(id);
    pm->set_accumulator_object_id(m.accumulator_object_id);
    pm->set_num_elements(m.num_elements);
    pm->set_nvme_bytes(m.nvme_bytes);
  }
  out->set_last_step(group.last_step);
  out->set_applied_steps(group.applied_steps);
  out->set_states_on_nvme(group.states_on_nvme);
  out->set_sub_group_size(group.sub_group_size);
}

void ToProto(const StepOutcome& o, spill::v1::StepOutcome* out) {
  out->set_step(o.step);
  out->set_applied(o.applied);
  out->set_skipped(o.skipped);
  out->set_repeated(o.repeated);
  out->set_applied_steps(o.applied_steps);
  out->set_seconds(o.seconds);
  out->set_speculative(o.speculative);
  out->set_rescaled(o.rescaled);
}

absl::StatusOr<StepMode> StepModeFromProto(spill::v1::StepMode mode) {
  switch (mode) {
    case spill::v1::STEP_MODE_FINAL: return StepMode::kFinal;
    case spill::v1::STEP_MODE_SPECULATIVE: return StepMode::kSpeculative;
    case spill::v1::STEP_MODE_COMMIT: return StepMode::kCommit;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer step mode ", static_cast<int>(mode), " is unknown"));
  }
}

}  // namespace spill::server
