// Checkpoints of the engine: each rank's fp32 master weights and optimizer
// states (from spilld's objects or the local tensors) through
// worker/checkpoint.h, published only once every rank wrote; resuming reads
// them back re-sharded for this world size.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint.h"
#include "worker/engine.h"
#include "worker/engine_internal.h"

namespace spill::worker {
namespace {

using client::ObjectInfo;
using client::ObjectKind;

const std::vector<std::string>& StateNames() {
  static const std::vector<std::string> names = {"master", "exp_avg", "exp_avg_sq"};
  return names;
}

const char* DTypeName(at::ScalarType t) {
  return t == at::kHalf ? "fp16" : t == at::kBFloat16 ? "bf16" : "fp32";
}

}  // namespace

absl::Status Engine::AgreeAll(const absl::Status& mine, const char* what) {
  at::Tensor failed = at::full({1}, mine.ok() ? 0.0 : 1.0,
                               at::TensorOptions().dtype(at::kFloat).device(options_.device));
  SPILL_RETURN_IF_ERROR(Wait(collectives_->AllReduce(failed, ReduceOp::kSum), what));
  if (!mine.ok()) return mine;
  const int others = static_cast<int>(failed.item<float>());
  if (others > 0) {
    return absl::AbortedError(absl::StrCat(what, ": ", others, " rank(s) failed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Engine::SaveCheckpoint(const std::string& dir, const std::string& tag_in) {
  StepStats unused;
  SPILL_RETURN_IF_ERROR(FinishSteps(unused));
  const std::string tag = tag_in.empty() ? absl::StrCat("global_step", step_) : tag_in;
  const int rank = collectives_->rank();
  CkptMeta meta;
  meta.world_size = collectives_->world_size();
  meta.step = step_;
  meta.states = StateNames();
  for (const auto& layer : model_.layers()) {
    CkptLayer l{layer->name(), layer->numel(), {}};
    for (const ParamSpec& p : layer->params()) l.params.push_back({p.name, p.shape, p.offset});
    meta.layers.push_back(std::move(l));
  }
  const LossScaler::State sc = scaler_.state();
  meta.engine_state_json =
      nlohmann::json{{"step", step_},
                     {"applied_steps", applied_steps_},
                     {"dtype", DTypeName(dtype_)},
                     {"seed", options_.seed},
                     {"scaler",
                      {{"scale", sc.scale},
                       {"cur_hysteresis", sc.cur_hysteresis},
                       {"iter", sc.iter},
                       {"last_overflow_iter", sc.last_overflow_iter}}}}
          .dump();
  // Every array of this rank in fp32 on the CPU (one rank's shard of the
  // optimizer state: 12 bytes per parameter / world).
  std::vector<at::Tensor> keep;
  std::vector<CkptArray> arrays;
  absl::Status st;
  for (size_t i = 0; i < layers_.size() && st.ok(); ++i) {
    absl::StatusOr<std::vector<at::Tensor>> read = ReadStates(i);
    if (!read.ok()) {
      st = PrefixStatus(read.status(), "checkpoint");
      break;
    }
    const std::vector<at::Tensor>& values = *read;
    for (size_t k = 0; k < values.size() && k < StateNames().size(); ++k) {
      keep.push_back(values[k].to(at::kCPU, at::kFloat).contiguous());
      arrays.push_back({layer_name(i), StateNames()[k],
                        absl::Span<const float>(keep.back().data_ptr<float>(),
                                                static_cast<size_t>(keep.back().numel()))});
    }
  }
  if (st.ok()) st = WriteRankShard(dir, tag, rank, meta, arrays);
  SPILL_RETURN_IF_ERROR(AgreeAll(st, "checkpoint: write rank files"));
  keep.clear();
  arrays.clear();
  absl::Status published;
  if (options_.config.zero.stage3_gather_16bit_weights_on_model_save) {
    SPILL_ASSIGN_OR_RETURN(std::vector<at::Tensor> full, GatherParameters());
    if (rank == 0) {
      std::vector<absl::Span<const float>> spans;
      for (const at::Tensor& t : full) {
        spans.emplace_back(t.data_ptr<float>(), static_cast<size_t>(t.numel()));
      }
      const CkptDType dt = dtype_ == at::kHalf       ? CkptDType::kFp16
                           : dtype_ == at::kBFloat16 ? CkptDType::kBf16
                                                     : CkptDType::kFp32;
      published = WriteConsolidatedWeights(dir + "/" + tag + "/model.safetensors", meta.layers,
                                           spans, dt);
    }
  }
  if (rank == 0 && published.ok()) published = PublishCheckpoint(dir, tag, meta);
  SPILL_RETURN_IF_ERROR(AgreeAll(published, "checkpoint: publish"));
  return tag;
}

absl::Status Engine::OpenResume() {
  SPILL_ASSIGN_OR_RETURN(CheckpointReader reader,
                         CheckpointReader::Open(options_.resume_dir, options_.resume_tag));
  const CkptMeta& meta = reader.meta();
  const std::string where = absl::StrCat("checkpoint ", options_.resume_dir, "/", reader.tag());
  if (meta.layers.size() != layers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has ", meta.layers.size(),
                                                   " layers; the model has ", layers_.size()));
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = *model_.layers()[i];
    if (meta.layers[i].name != layer.name() || meta.layers[i].numel != layer.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": layer ", i, " is '", meta.layers[i].name, "' with ", meta.layers[i].numel,
          " parameters; the model's is '", layer.name(), "' with ", layer.numel(),
          " (a different model shape)"));
    }
  }
  for (const std::string& s : StateNames()) {
    if (std::find(meta.states.begin(), meta.states.end(), s) == meta.states.end()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " lacks the optimizer state '", s, "'"));
    }
  }
  nlohmann::json state = nlohmann::json::parse(meta.engine_state_json, nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("step") ||
      !state.contains("applied_steps") || !state.contains("scaler")) {
    return absl::DataLossError(absl::StrCat(where, ": the engine state is not valid JSON with "
                                                   "step, applied_steps and scaler"));
  }
  try {
    LossScaler::State sc;
    sc.scale = state["scaler"].at("scale").get<double>();
    sc.cur_hysteresis = state["scaler"].at("cur_hysteresis").get<int64_t>();
    sc.iter = state["scaler"].at("iter").get<int64_t>();
    sc.last_overflow_iter = state["scaler"].at("last_overflow_iter").get<int64_t>();
    step_ = state.at("step").get<int64_t>();
    applied_steps_ = state.at("applied_steps").get<int64_t>();
    if (options_.config.fp16.enabled) {
      SPILL_RETURN_IF_ERROR(PrefixStatus(scaler_.Restore(sc), where));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(where, ": engine state: ", e.what()));
  }
  if (step_ < 0 || applied_steps_ < 0 || applied_steps_ > step_) {
    return absl::DataLossError(absl::StrCat(where, ": engine state has step ", step_,
                                            " and applied_steps ", applied_steps_));
  }
  resume_ = std::make_unique<CheckpointReader>(std::move(reader));
  return absl::OkStatus();
}

std::string Engine::layer_name(size_t i) const { return model_.layers()[i]->name(); }

absl::StatusOr<at::Tensor> Engine::InitialMaster(size_t i) {
  const LayerState& ls = layers_[i];
  const int world = collectives_->world_size(), rank = collectives_->rank();
  if (resume_ != nullptr) {
    at::Tensor t = at::empty({ls.shard}, at::kFloat);
    SPILL_RETURN_IF_ERROR(resume_->ReadShardInto(
        layer_name(i), "master", rank, world,
        absl::Span<float>(t.data_ptr<float>(), static_cast<size_t>(ls.shard))));
    return t;
  }
  // This rank's shard of one layer, in fp32 on the CPU: neither the full
  // model nor the rest of the layer is drawn here.
  at::Tensor shard = at::empty({ls.shard}, at::kFloat);
  SPILL_RETURN_IF_ERROR(model_.layers()[i]->InitializeRange(shard, rank * ls.shard, options_.seed));
  return shard;
}

absl::StatusOr<at::Tensor> Engine::CheckpointState(size_t i, size_t k) {
  at::Tensor t = at::empty({layers_[i].shard}, at::kFloat);
  SPILL_RETURN_IF_ERROR(resume_->ReadShardInto(
      layer_name(i), StateNames()[k], collectives_->rank(), collectives_->world_size(),
      absl::Span<float>(t.data_ptr<float>(), static_cast<size_t>(t.numel()))));
  return t;
}

bool Engine::states_on_nvme() const {
  return !local_ && options_.config.zero.offload_optimizer.device == OffloadDevice::kNvme;
}

absl::Status Engine::RestoreNvmeStates(size_t i, const at::Tensor& master32) {
  std::vector<at::Tensor> values = {master32.to(at::kCPU, at::kFloat).contiguous()};
  for (size_t k = 1; k < StateNames().size(); ++k) {
    if (resume_ == nullptr) {
      values.push_back(at::zeros({layers_[i].shard}, at::kFloat));
      continue;
    }
    SPILL_ASSIGN_OR_RETURN(at::Tensor t, CheckpointState(i, k));
    values.push_back(std::move(t));
  }
  return CopyNvmeStates(i, /*to_spilld=*/true, &values);
}

absl::StatusOr<std::vector<at::Tensor>> Engine::ReadStates(size_t i) {
  LayerState& ls = layers_[i];
  std::vector<at::Tensor> values;
  if (local_) {
    for (const at::Tensor& t : {ls.master, ls.exp_avg, ls.exp_avg_sq}) {
      values.push_back(t.to(at::kCPU, at::kFloat).contiguous());
    }
    return values;
  }
  if (states_on_nvme()) {
    SPILL_RETURN_IF_ERROR(CopyNvmeStates(i, /*to_spilld=*/false, &values));
    return values;
  }
  std::vector<uint64_t> ids = {ls.member.master_object_id};
  ids.insert(ids.end(), ls.member.state_object_ids.begin(), ls.member.state_object_ids.end());
  for (uint64_t id : ids) {
    SPILL_ASSIGN_OR_RETURN(at::Tensor t, ReadObject(id, "read optimizer state"));
    values.push_back(std::move(t));
  }
  return values;
}

absl::Status Engine::CopyNvmeStates(size_t i, bool to_spilld, std::vector<at::Tensor>* values) {
  const LayerState& ls = layers_[i];
  client::Session& s = *session_;
  if (to_spilld && values->size() != StateNames().size()) {
    return absl::InternalError(absl::StrCat("optimizer state of ", layer_name(i), ": ",
                                            values->size(), " arrays, expected ",
                                            StateNames().size()));
  }
  std::vector<uint64_t> ids;
  absl::Status st;
  for (size_t k = 0; k < StateNames().size() && st.ok(); ++k) {
    absl::StatusOr<ObjectInfo> o = s.Register(
        absl::StrCat("rank", collectives_->rank(), "/", layer_name(i), "/staging/",
                     StateNames()[k]),
        ObjectKind::kOther, client::DType::kFloat32, ls.shard);
    if (o.ok()) {
      ids.push_back(o->object_id);
    } else {
      st = PrefixStatus(o.status(), "optimizer state staging object");
    }
  }
  for (size_t k = 0; to_spilld && k < ids.size() && st.ok(); ++k) {
    st = WriteObject(ids[k], (*values)[k], "stage optimizer state");
  }
  if (st.ok()) {
    st = PrefixStatus(
        s.CopyGroupState(ls.group_id, 0,
                         to_spilld ? client::GroupStateDirection::kImport
                                   : client::GroupStateDirection::kExport,
                         ids),
        absl::StrCat("optimizer state of ", layer_name(i)));
  }
  if (st.ok() && !to_spilld) {
    values->clear();
    for (size_t k = 0; k < ids.size() && st.ok(); ++k) {
      absl::StatusOr<at::Tensor> t = ReadObject(ids[k], "read exported optimizer state");
      if (t.ok()) {
        values->push_back(*std::move(t));
      } else {
        st = t.status();
      }
    }
  }
  for (uint64_t id : ids) {
    absl::Status freed = s.Free(id);
    if (st.ok()) st = PrefixStatus(freed, "free optimizer state staging object");
  }
  return st;
}

absl::Status Engine::RestoreStates(size_t i) {
  if (resume_ == nullptr) return absl::OkStatus();
  LayerState& ls = layers_[i];
  for (size_t k = 1; k < StateNames().size(); ++k) {
    SPILL_ASSIGN_OR_RETURN(at::Tensor t, CheckpointState(i, k));
    if (local_) {
      (k == 1 ? ls.exp_avg : ls.exp_avg_sq).copy_(t);
      continue;
    }
    if (k - 1 >= ls.member.state_object_ids.size()) {
      return absl::InternalError(absl::StrCat("optimizer group of ", layer_name(i), " has ",
                                              ls.member.state_object_ids.size(), " states"));
    }
    SPILL_RETURN_IF_ERROR(
        WriteObject(ls.member.state_object_ids[k - 1], t, "restore optimizer state"));
  }
  return absl::OkStatus();
}

}  // namespace spill::worker
