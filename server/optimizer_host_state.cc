// OptimizerHost::CopyState: checkpoint and restore of a member's master and
// optimizer states (see optimizer_host.h).
#include <cstring>
#include <future>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "server/optimizer_host.h"
#include "server/optimizer_host_internal.h"

namespace spill::server {
namespace {

std::string ArrayName(size_t a) {
  return a == 0 ? std::string("master") : absl::StrCat("state ", a - 1);
}

// Blocks until an NvmeStateStore read or write calls back.
template <typename Start>
absl::Status Wait(Start start) {
  std::promise<absl::Status> done;
  start([&done](absl::Status s) { done.set_value(std::move(s)); });
  return done.get_future().get();
}

}  // namespace

absl::Status OptimizerHost::CopyState(uint64_t session_id, const Token& token,
                                      uint64_t group_id, uint32_t member_index,
                                      StateCopy direction,
                                      const std::vector<uint64_t>& object_ids) {
  if (direction != StateCopy::kExport && direction != StateCopy::kImport) {
    return absl::InvalidArgumentError("the state copy direction must be EXPORT or IMPORT");
  }
  SPILL_ASSIGN_OR_RETURN(std::string job_id, registry_->SessionJob(session_id, token));
  SPILL_ASSIGN_OR_RETURN(std::shared_ptr<Group> group, FindGroup(job_id, group_id));
  std::lock_guard<std::mutex> lock(group->mu);
  if (group->dropped) {
    return absl::NotFoundError(
        absl::StrCat("job '", job_id, "' has no optimizer group with id ", group_id));
  }
  SPILL_RETURN_IF_ERROR(group->CheckNotPending("copying its state"));
  SPILL_RETURN_IF_ERROR(CheckStateTargets(job_id, *group, member_index, object_ids));
  SPILL_ASSIGN_OR_RETURN(std::vector<ComputeView> objects,
                         registry_->PinForCompute(job_id, object_ids));
  Member& member = group->members[member_index];
  const uint64_t version = group->info.last_step;
  absl::Status status = group->info.states_on_nvme
                            ? CopyNvmeState(*group, member, direction, objects)
                            : CopyPinnedState(job_id, member, version, direction, objects);
  // Exported objects hold the group's state as of its last step.
  const bool written = status.ok() && direction == StateCopy::kExport;
  registry_->UnpinCompute(job_id, object_ids, written ? version : 0);
  return status;
}

absl::Status OptimizerHost::CheckStateTargets(const std::string& job_id, const Group& group,
                                              uint32_t member_index,
                                              const std::vector<uint64_t>& ids) const {
  const GroupInfo& info = group.info;
  if (member_index >= group.members.size()) {
    return absl::NotFoundError(absl::StrCat("optimizer group '", info.name, "' has ",
                                            group.members.size(), " members; there is no member ",
                                            member_index));
  }
  const uint64_t n = group.members[member_index].info.num_elements;
  const size_t arrays = 1 + static_cast<size_t>(optim::StateCount(info.hyper));
  const std::string what =
      absl::StrCat("optimizer group '", info.name, "' member ", member_index);
  if (ids.size() != arrays) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " has a master and ", arrays - 1, " optimizer states: it needs ", arrays,
        " object ids (master first), got ", ids.size()));
  }
  std::set<uint64_t> seen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto job = jobs_.find(job_id);
    for (uint64_t id : ids) {
      if (!seen.insert(id).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": object ", id, " is named more than once"));
      }
      if (job != jobs_.end() && job->second.member_objects.count(id) != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": object ", id, " is a parameter or gradient shard of an optimizer group"));
      }
    }
  }
  SPILL_ASSIGN_OR_RETURN(std::vector<ObjectRecord> records, registry_->Records(job_id, ids));
  for (size_t a = 0; a < records.size(); ++a) {
    const ObjectRecord& r = records[a];
    const std::string object = absl::StrCat("object '", r.name, "' (id ", r.id, ", the ",
                                            ArrayName(a), " of ", what, ")");
    if (r.dtype != static_cast<int>(DType::kFloat32)) {
      return absl::InvalidArgumentError(
          absl::StrCat(object, " has dtype ", r.dtype, "; it must be FLOAT32 (",
                       static_cast<int>(DType::kFloat32), ") with ", n, " elements"));
    }
    if (r.num_elements != n) {
      return absl::InvalidArgumentError(absl::StrCat(object, " has ", r.num_elements,
                                                     " elements; it must have ", n));
    }
    if (r.home != storage::Home::kPinned) {
      return absl::FailedPreconditionError(absl::StrCat(
          object, " has home NVME; optimizer state copies need objects with home PINNED"));
    }
  }
  return absl::OkStatus();
}

absl::Status OptimizerHost::CopyPinnedState(const std::string& job_id, const Member& member,
                                            uint64_t version, StateCopy direction,
                                            const std::vector<ComputeView>& objects) {
  std::vector<uint64_t> own = {member.info.master_object_id};
  own.insert(own.end(), member.info.state_object_ids.begin(),
             member.info.state_object_ids.end());
  SPILL_ASSIGN_OR_RETURN(std::vector<ComputeView> views, registry_->PinForCompute(job_id, own));
  const uint64_t bytes = member.info.num_elements * sizeof(float);
  for (size_t a = 0; a < own.size(); ++a) {
    if (direction == StateCopy::kExport) {
      std::memcpy(objects[a].data, views[a].data, bytes);
    } else {
      std::memcpy(views[a].data, objects[a].data, bytes);
    }
  }
  // Imported states count as written at the group's last step.
  registry_->UnpinCompute(job_id, own, direction == StateCopy::kImport ? version : 0);
  return absl::OkStatus();
}

absl::Status OptimizerHost::CopyNvmeState(const Group& group, Member& member,
                                          StateCopy direction,
                                          const std::vector<ComputeView>& objects) {
  const uint64_t sg = group.Piece();
  const size_t arrays = objects.size();
  const uint64_t floats = arrays * sg;
  std::shared_ptr<float> buffer = TakeBuffer(floats);
  if (buffer == nullptr) return absl::ResourceExhaustedError("cannot allocate a staging buffer");
  float* master = buffer.get();
  float* state[2] = {nullptr, nullptr};
  for (size_t a = 1; a < arrays; ++a) state[a - 1] = buffer.get() + a * sg;
  auto object = [&](size_t a, uint64_t begin) {
    return reinterpret_cast<float*>(objects[a].data) + begin;
  };
  const uint64_t n = member.info.num_elements;
  // kExport: the objects' bytes it overwrote, restored if a read fails.
  std::vector<std::vector<float>> saved(arrays);
  absl::Status status;
  for (uint64_t begin = 0; begin < n && status.ok(); begin += sg) {
    const uint64_t count = std::min(sg, n - begin);
    if (direction == StateCopy::kExport) {
      status = Wait([&](auto done) { member.nvme->ReadAsync(begin, count, master, state, done); });
      if (!status.ok()) break;
      for (size_t a = 0; a < arrays; ++a) {
        saved[a].insert(saved[a].end(), object(a, begin), object(a, begin) + count);
        std::memcpy(object(a, begin), buffer.get() + a * sg, count * sizeof(float));
      }
    } else {
      for (size_t a = 0; a < arrays; ++a) {
        std::memcpy(buffer.get() + a * sg, object(a, begin), count * sizeof(float));
      }
      status = Wait([&](auto done) { member.nvme->WriteAsync(begin, count, master, state, done); });
    }
  }
  if (!status.ok()) {
    status = absl::Status(status.code(),
                          absl::StrCat("optimizer group '", group.info.name, "' member ",
                                       &member - group.members.data(),
                                       direction == StateCopy::kExport ? " export" : " import",
                                       " failed; the group keeps its state: ", status.message()));
  }
  if (direction == StateCopy::kImport) {
    if (status.ok()) {
      member.nvme->Commit();
      member.info.nvme_bytes = member.nvme->nvme_bytes();
    } else {
      member.nvme->Abort();
    }
  } else if (!status.ok()) {
    for (size_t a = 0; a < arrays; ++a) {
      if (!saved[a].empty()) {
        std::memcpy(object(a, 0), saved[a].data(), saved[a].size() * sizeof(float));
      }
    }
  }
  ReturnBuffer(std::move(buffer), floats);
  return status;
}

}  // namespace spill::server
