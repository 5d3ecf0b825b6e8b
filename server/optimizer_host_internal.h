// OptimizerHost's per-group state, shared by its translation units
// (optimizer_host.cc, optimizer_host_state.cc). Not part of any interface.
#ifndef SPILL_SERVER_OPTIMIZER_HOST_INTERNAL_H_
#define SPILL_SERVER_OPTIMIZER_HOST_INTERNAL_H_

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

#include "server/nvme_state_store.h"
#include "server/optimizer_host.h"

namespace spill::server {

// Step outcomes a group keeps for resent requests.
constexpr size_t kOutcomeHistory = 64;

// Pieces of a streamed step start 4 KiB aligned in the staging buffer.
inline uint64_t RoundSubGroup(uint64_t n) { return (n + 1023) / 1024 * 1024; }

struct OptimizerHost::Member {
  GroupMemberInfo info;
  int param_dtype = 0;
  int grad_dtype = 0;
  // Gradient progress: micro-steps received for ready_step.
  uint64_t ready_step = 0;
  uint32_t micro_done = 0;
  double sum_squares = 0;
  // Master and states on NVMe (states_on_nvme groups).
  std::unique_ptr<NvmeStateStore> nvme;
};

struct OptimizerHost::Group {
  std::mutex mu;  // Held for the whole of a GradReady, Step or CopyState.
  GroupInfo info;
  std::vector<Member> members;
  std::map<uint64_t, StepOutcome> history;  // The last kOutcomeHistory steps.
  bool dropped = false;
  // A speculative step waiting for its commit: how it ran.
  struct Pending {
    uint64_t step = 0;
    float lr = 0;
    optim::StepArgs args;  // args.grad_scale: the one it ran with.
  };
  std::optional<Pending> pending;

  // FailedPrecondition while a speculative step waits for its commit.
  absl::Status CheckNotPending(absl::string_view what) const {
    if (!pending) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("optimizer group '", info.name, "' step ", pending->step,
                     " is speculative: commit it before ", what));
  }

  // Elements per streamed piece: sub_group_size, or less when no member is
  // that large (DeepSpeed's default of 1e9 must not size a 36 GB staging
  // buffer for small layers); the pieces are the same either way.
  uint64_t Piece() const {
    uint64_t largest = 0;
    for (const Member& m : members) largest = std::max(largest, m.info.num_elements);
    return std::min(info.sub_group_size, RoundSubGroup(largest));
  }

  GroupInfo Snapshot() const {
    GroupInfo out = info;
    out.members.clear();
    for (const Member& m : members) out.members.push_back(m.info);
    return out;
  }
};

}  // namespace spill::server

#endif  // SPILL_SERVER_OPTIMIZER_HOST_INTERNAL_H_
