#include "client/wire.h"

#include "absl/strings/str_cat.h"

namespace spill::client::internal {

ObjectInfo FromProto(const v1::ObjectInfo& info) {
  ObjectInfo out;
  out.object_id = info.object_id();
  out.name = info.name();
  out.kind = static_cast<ObjectKind>(info.kind());
  out.dtype = static_cast<DType>(info.dtype());
  out.num_elements = info.num_elements();
  out.location.segment_id = info.location().segment_id();
  out.location.offset = info.location().offset();
  out.location.size_bytes = info.location().size_bytes();
  out.version = info.version();
  out.pin_count = info.pin_count();
  out.home = info.home() == v1::OBJECT_HOME_NVME ? ObjectHome::kNvme : ObjectHome::kPinned;
  return out;
}

namespace {

OptimizerParams FromProto(const v1::OptimizerParams& p) {
  OptimizerParams out;
  out.type = static_cast<OptimizerType>(p.type());
  out.lr = p.lr();
  out.beta1 = p.beta1();
  out.beta2 = p.beta2();
  out.eps = p.eps();
  out.weight_decay = p.weight_decay();
  out.bias_correction = p.bias_correction();
  out.momentum = p.momentum();
  out.dampening = p.dampening();
  out.nesterov = p.nesterov();
  out.initial_accumulator_value = p.initial_accumulator_value();
  return out;
}

void ToProto(const OptimizerParams& p, v1::OptimizerParams* out) {
  out->set_type(static_cast<v1::OptimizerType>(p.type));
  out->set_lr(p.lr);
  out->set_beta1(p.beta1);
  out->set_beta2(p.beta2);
  out->set_eps(p.eps);
  out->set_weight_decay(p.weight_decay);
  out->set_bias_correction(p.bias_correction);
  out->set_momentum(p.momentum);
  out->set_dampening(p.dampening);
  out->set_nesterov(p.nesterov);
  out->set_initial_accumulator_value(p.initial_accumulator_value);
}

}  // namespace

GroupInfo FromProto(const v1::GroupInfo& info) {
  GroupInfo out;
  out.group_id = info.group_id();
  out.name = info.name();
  out.params = FromProto(info.params());
  out.gradient_accumulation_steps = info.gradient_accumulation_steps();
  for (const v1::GroupMember& m : info.members()) {
    GroupMember member;
    member.param_object_id = m.param_object_id();
    member.grad_object_id = m.grad_object_id();
    member.master_object_id = m.master_object_id();
    member.state_object_ids.assign(m.state_object_ids().begin(), m.state_object_ids().end());
    member.accumulator_object_id = m.accumulator_object_id();
    member.num_elements = m.num_elements();
    member.nvme_bytes = m.nvme_bytes();
    out.members.push_back(std::move(member));
  }
  out.last_step = info.last_step();
  out.applied_steps = info.applied_steps();
  out.states_on_nvme = info.states_on_nvme();
  out.sub_group_size = info.sub_group_size();
  return out;
}

StepOutcome FromProto(const v1::StepOutcome& o) {
  StepOutcome out;
  out.step = o.step();
  out.applied = o.applied();
  out.skipped = o.skipped();
  out.repeated = o.repeated();
  out.applied_steps = o.applied_steps();
  out.seconds = o.seconds();
  out.speculative = o.speculative();
  out.rescaled = o.rescaled();
  return out;
}

void ToProto(const GroupSpec& spec, v1::CreateGroupRequest* out) {
  out->set_name(spec.name);
  ToProto(spec.params, out->mutable_params());
  out->set_gradient_accumulation_steps(spec.gradient_accumulation_steps);
  out->set_states_on_nvme(spec.states_on_nvme);
  out->set_sub_group_size(spec.sub_group_size);
  out->set_resume_step(spec.resume_step);
  out->set_resume_applied_steps(spec.resume_applied_steps);
  for (const GroupMemberSpec& m : spec.members) {
    v1::GroupMemberSpec* pm = out->add_members();
    pm->set_param_object_id(m.param_object_id);
    pm->set_grad_object_id(m.grad_object_id);
  }
}

absl::Status StatusFromCode(int code, const std::string& message) {
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(absl::StrCat("status code ", code, ": ", message));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace spill::client::internal
